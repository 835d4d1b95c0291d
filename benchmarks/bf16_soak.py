"""Numerics soak: bf16 autocast, tiny causal model, many updates of monarc, nce and cwt.

    python benchmarks/bf16_soak.py --out /tmp/soak                  # 2,000 updates each
    python benchmarks/bf16_soak.py --updates 200 --criteria monarc  # a quick look

Each criterion trains `transformer_lm_zero_clap_tiny` (2 layers x 256 and 4 blocks
of 64 tokens per update by default: all three criteria in ~5 minutes on one core) on the embedded corpus in-process,
under `torch.autocast(bfloat16)` with fp32 master weights (what fairseq's --amp does; on
a GPU pass --device cuda), Adam, clipping at 1.0. Every `--every` updates it records the
loss terms, the largest |E| of data and samples (for cwt, which has no energies: the
largest contrastive logit |h . e|), the mean of exp(-E(y)) (Z, should stay
near 1) and the share of exp(-E) values that needed the overflow guard. It stops at the
first non-finite loss (the criterions name the term). Prints a table and writes
OUT/soak.json. The unit tests keep a short version
(tests/criterions/test_criterions_unit.py, 300 monarc updates).
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch


def build(data_bin: Path, criterion: str, seed: int, device: str, layers: int, tokens: int):
    import energy_lm  # noqa: F401  (registers archs and criterions)
    from fairseq import options, tasks
    from fairseq.criterions import build_criterion
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = [str(data_bin), "--task", "language_modeling", "--arch", "transformer_lm_zero_clap_tiny",
            "--criterion", criterion, "--tokens-per-sample", str(tokens), "--seed", str(seed),
            "--decoder-layers", str(layers),
            "--dropout", "0.1", "--attention-dropout", "0"]
    cfg = convert_namespace_to_omegaconf(
        options.parse_args_and_arch(options.get_training_parser(), argv))
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(seed)
    model = task.build_model(cfg.model).to(device).train()
    return model, build_criterion(cfg.criterion, task), task


def soak(data_bin: Path, criterion: str, updates: int, every: int, batch: int, lr: float,
         device: str, layers: int, tokens: int) -> dict:
    model, crit, task = build(data_bin, criterion, seed=1, device=device, layers=layers,
                              tokens=tokens)
    task.load_dataset("train")
    itr = task.get_batch_iterator(dataset=task.dataset("train"), max_sentences=batch, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    energies = {}

    def record_energy(module, inputs, output):  # the largest |E| the head produced
        energies["max"] = max(energies.get("max", 0.0), float(output.detach().abs().max()))

    if criterion == "cwt":  # no energies: record the largest contrastive logit |h . e|
        import energy_lm.criterions.cwt as cwt_criterion

        plain_loss = cwt_criterion.cwt_loss_from_rows

        def loss_recording_scores(hidden, rows, *args, **kwargs):
            scores = hidden.detach() @ rows.detach().t()
            energies["max"] = max(energies.get("max", 0.0), float(scores.abs().max()))
            return plain_loss(hidden, rows, *args, **kwargs)

        cwt_criterion.cwt_loss_from_rows = loss_recording_scores
        hook = None
    else:
        hook = model.energy_head.register_forward_hook(record_energy)
    rows, window, done, start = [], [], 0, time.time()
    epoch_itr = itr.next_epoch_itr(shuffle=True)
    while done < updates:
        try:
            sample = next(epoch_itr)
        except StopIteration:
            epoch_itr = itr.next_epoch_itr(shuffle=True)
            continue
        sample = {k: (v.to(device) if torch.is_tensor(v) else
                      {a: b.to(device) for a, b in v.items()} if isinstance(v, dict) else v)
                  for k, v in sample.items()}
        crit.set_num_updates(done)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss, size, log = crit(model, sample)  # raises on a non-finite term
        opt.zero_grad()
        (loss / size).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        done += 1
        window.append({key: float(value) for key, value in log.items()
                       if torch.is_tensor(value) or isinstance(value, (int, float))})
        window[-1]["grad_norm"] = float(grad_norm)
        if done % every == 0 or done == updates:
            total = {key: sum(w.get(key, 0.0) for w in window) for key in window[0]}
            size = total["sample_size"]
            row = {"update": done, "loss_bits": total["loss"] / size / math.log(2),
                   "grad_norm_max": max(w["grad_norm"] for w in window),
                   ("max_abs_score" if criterion == "cwt" else "max_abs_energy"):
                       energies.pop("max", float("nan"))}
            if "z" in total:
                n = max(total["n_scored"], 1.0)
                row.update(lm_bits=total["lm_loss"] / size / math.log(2), z=total["z"] / n,
                           guarded=total["guarded"] / n, energy_acc=total["energy_acc"] / n)
            else:
                row.update(cwt_acc=total["correct"] / size)
            rows.append(row)
            window = []
    if hook is None:
        cwt_criterion.cwt_loss_from_rows = plain_loss
    else:
        hook.remove()
    finite = all(torch.isfinite(p).all() for p in model.parameters())
    return {"criterion": criterion, "updates": done, "seconds": time.time() - start,
            "params_finite": bool(finite), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="data-bin (default: the embedded corpus)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bf16_soak"))
    parser.add_argument("--criteria", nargs="+", default=["monarc", "nce", "cwt"])
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--batch", type=int, default=4, help="blocks per update")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per block")
    parser.add_argument("--layers", type=int, default=2,
                        help="decoder layers (width 256; the tiny arch has 4: --layers 4 "
                             "--batch 8 --tokens 128 is ~5x slower)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2,
                        help="CPU threads (1 when another job shares a 2-core machine)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data
    if data is None:
        from energy_lm.data.prepare import prepare_embedded

        data = args.out / "corpus" / "data-bin"
        if not (data / "dict.txt").exists():
            prepare_embedded(args.out / "corpus", workers=2)
    torch.set_num_threads(args.threads)
    results = []
    for criterion in args.criteria:
        result = soak(data, criterion, args.updates, args.every, args.batch, args.lr, args.device,
                      args.layers, args.tokens)
        results.append(result)
        (args.out / "soak.json").write_text(json.dumps(results, indent=1))
        print(f"\n{criterion}: {result['updates']} bf16-autocast updates of {args.batch} x "
              f"{args.tokens} tokens, {args.layers} layers, in "
              f"{result['seconds'] / 60:.1f} min, parameters finite: {result['params_finite']}")
        keys = [k for k in result["rows"][0] if k != "update"]
        print("| update | " + " | ".join(keys) + " |\n|---" * 1 + "|---" * len(keys) + "|")
        for row in result["rows"]:
            print(f"| {row['update']} | " + " | ".join(f"{row[k]:.4g}" for k in keys) + " |")


if __name__ == "__main__":
    main()
