"""CE vs MonArc on a tiny causal LM: final valid losses over seeds, and the step-time and
peak-memory ratio MonArc/CE measured in one run.

    python benchmarks/monarc_vs_ce.py --out bench-out            # embedded corpus, 3 seeds
    python benchmarks/monarc_vs_ce.py --data corpus/data-bin --updates 600 --seeds 1 2 3

Training goes through the real `fairseq-train` (criterions `cross_entropy` and `monarc`);
evaluation through `energy_lm.cli.eval_elm` on the valid split. The timing part alternates
CE and MonArc steps on the same batches in one process (the ratio, not the seconds, is
the result on a noisy machine); each memory figure is the peak RSS growth of a fresh
process running a few steps of one criterion.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
TRAIN = ["--task", "language_modeling", "--tokens-per-sample", "128", "--sample-break-mode", "none",
         "--batch-size", "16", "--optimizer", "adam", "--adam-betas", "(0.9,0.98)",
         "--weight-decay", "0.01", "--lr", "1e-3", "--lr-scheduler", "polynomial_decay",
         "--warmup-updates", "50", "--dropout", "0.1", "--clip-norm", "1.0", "--cpu",
         "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "100",
         "--num-workers", "0"]


def prepare_data(out: Path) -> Path:
    from energy_lm.data.prepare import prepare_embedded

    if not (out / "data-bin" / "dict.txt").exists():
        prepare_embedded(out, workers=2)
    return out / "data-bin"


def train(data: Path, save_dir: Path, arch: str, criterion: str, seed: int, updates: int) -> None:
    if (save_dir / "checkpoint_last.pt").exists() and (save_dir / "done").exists():
        return
    cmd = [str(BIN / "fairseq-train"), str(data), *TRAIN, "--arch", arch, "--criterion", criterion,
           "--seed", str(seed), "--max-update", str(updates), "--total-num-update", str(updates),
           "--save-dir", str(save_dir)]
    with open(save_dir.with_suffix(".log"), "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    (save_dir / "done").touch()


def evaluate(data: Path, checkpoint: Path, num_samples: int, max_batches: int) -> dict:
    from energy_lm.cli.eval_elm import main as eval_main

    return eval_main([str(data), "--path", str(checkpoint), "--num-samples", str(num_samples),
                      "--batch-size", "4", "--max-batches", str(max_batches), "--cpu"])


def step_worker(data: str, arch: str, criterion: str, steps: int, mode: str) -> None:
    """Run in a subprocess: time or measure `steps` training steps of one or both criteria."""
    import torch

    import energy_lm  # noqa: F401
    from fairseq import options, tasks
    from fairseq.criterions import build_criterion
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    torch.set_num_threads(2)
    crits = ["cross_entropy", "monarc"] if mode == "time" else [criterion]
    built = {}
    for name in crits:
        argv = [data, *TRAIN, "--arch", arch, "--criterion", name, "--total-num-update", "1000"]
        cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
        task = tasks.setup_task(cfg.task)
        torch.manual_seed(1)
        built[name] = (task.build_model(cfg.model).train(), build_criterion(cfg.criterion, task), task)
    task = built[crits[0]][2]
    task.load_dataset("train")
    itr = task.get_batch_iterator(dataset=task.dataset("train"), max_tokens=None, max_sentences=16,
                                  seed=1).next_epoch_itr(shuffle=False)
    batches = [next(itr) for _ in range(steps + 2)]
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = {name: [] for name in crits}
    for i, sample in enumerate(batches):
        for name in crits:
            model, crit, _ = built[name]
            start = time.perf_counter()
            loss, size, _ = crit(model, sample)
            loss.backward()
            model.zero_grad(set_to_none=True)
            if i >= 2:  # warm-up steps are not timed
                seconds[name].append(time.perf_counter() - start)
    peak_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    print(json.dumps({"seconds": {k: statistics.median(v) for k, v in seconds.items()},
                      "peak_growth_mb": peak_growth_mb}))


def run_worker(data: Path, arch: str, criterion: str, steps: int, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--data", str(data), "--arch", arch,
           "--criterion", criterion, "--steps", str(steps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="2")).stdout
    return json.loads(out.strip().splitlines()[-1])


def mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="data-bin (default: the embedded corpus)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "monarc_vs_ce")
    parser.add_argument("--arch", default="transformer_lm_clap_tiny")
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--num-samples", type=int, default=8, help="K for the ELM log Z estimate")
    parser.add_argument("--eval-batches", type=int, default=50, help="valid batches of 4 blocks")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per criterion")
    parser.add_argument("--worker", choices=["time", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--criterion", default="monarc", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        step_worker(str(args.data), args.arch, args.criterion, args.steps, args.worker)
        return

    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data or prepare_data(args.out / "corpus")
    rows = {"ce_lm": [], "monarc_lm": [], "monarc_elm_z1": [], "monarc_elm_est": []}
    for seed in args.seeds:
        for criterion in ("cross_entropy", "monarc"):
            save = args.out / f"{criterion}_seed{seed}"
            save.mkdir(exist_ok=True)
            train(data, save, args.arch, criterion, seed, args.updates)
            result = evaluate(data, save / "checkpoint_last.pt", args.num_samples, args.eval_batches)
            if criterion == "cross_entropy":
                rows["ce_lm"].append(result["lm"])
            else:
                rows["monarc_lm"].append(result["lm"])
                rows["monarc_elm_z1"].append(result["elm_z1"])
                rows["monarc_elm_est"].append(result["elm_est"])
    timing = run_worker(data, args.arch, "monarc", args.steps, "time")
    memory = {c: run_worker(data, args.arch, c, args.steps, "memory")["peak_growth_mb"]
              for c in ("cross_entropy", "monarc")}

    print(f"\n{args.arch}, {args.updates} updates of 16 x 128 tokens, seeds {args.seeds}; "
          f"valid loss in bits (mean ± std), ELM log Z from K = {args.num_samples} samples")
    print("| model | valid loss (bits) |\n|---|---|")
    for key, label in (("ce_lm", "CE: LM"), ("monarc_lm", "MonArc: LM part"),
                       ("monarc_elm_z1", "MonArc: ELM, Z = 1"),
                       ("monarc_elm_est", f"MonArc: ELM, log Z estimate (top-16 + {args.num_samples} tail samples)")):
        mean, std = mean_std(rows[key])
        print(f"| {label} | {mean:.3f} ± {std:.3f} |")
    ce_s, mo_s = timing["seconds"]["cross_entropy"], timing["seconds"]["monarc"]
    print(f"\nstep time (median of {args.steps}, fwd+bwd): CE {ce_s * 1000:.0f} ms, "
          f"MonArc {mo_s * 1000:.0f} ms, ratio MonArc/CE {mo_s / ce_s:.2f}")
    print(f"peak RSS growth over {args.steps} steps: CE {memory['cross_entropy']:.0f} MB, MonArc "
          f"{memory['monarc']:.0f} MB, ratio {memory['monarc'] / max(memory['cross_entropy'], 1):.2f}")
    (args.out / "results.json").write_text(json.dumps({"losses": rows, "timing": timing,
                                                       "memory_mb": memory}, indent=1))


if __name__ == "__main__":
    main()
