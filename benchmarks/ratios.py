"""Every speed ratio of the project, measured side by side in one process.

    python benchmarks/ratios.py                  # the full table (about 15 min on 2 CPU cores)
    python benchmarks/ratios.py --quick --check  # a reduced set; exit 1 if a ratio misses

Each measure is a pair of training steps (forward + backward, the criterion as fairseq
calls it, on the same random batches), built as fairseq-train builds them; the two
sides alternate step by step (A B, B A, ...) so that a change of machine speed hits both
alike. Each pair of adjacent steps gives one ratio A / B; the table prints their median
with a distribution-free 95% interval for it (order statistics of the pair ratios), beside
the ratio of their memory: peak allocated memory on a GPU, and on the CPU the bytes the
autograd graph saves for the backward pass (activations: what grows with the batch;
parameters are excluded). A measure whose interval holds its target takes more pairs (up
to --max-steps); if it still holds it, the row says the ratio could not be told from the
target on this machine, and --check exits 2 with one line saying so instead of passing or
failing it (1: a ratio missed its target beyond its interval; 0: every ratio met it).

| measure | A / B | target on 2 CPU cores (FLOP limit) |
|---|---|---|
| causal MonArc / CE | 12 x 768, N = 1024 | <= 1.9 (1.71) |
| causal NCE / CE | as MonArc | <= 1.9 |
| masked MonArc / masked LM | 12 x 768, N = 512, 15% masked | <= 1.4 (about 1.3) |
| CWT / CE | 6 x 512, V = 50k | <= 0.7 (0.61) |
| CLAP head / tied softmax | 12 x 768, N = 1024, CE | <= 1.03 |
| ALiBi / learned positions | 12 x 768, N = 1024, CE | <= 1.1 |
| Llama MonArc / CE | transformer_lm_llama at 12 x 768 (12 heads, 6 key/value heads) | <= 1.9 |
| Llama CE / transformers' CE | our Llama trunk's CE step / LlamaForCausalLM's on the same config and batch | <= 1.1 |
| grouped / full heads | the Llama trunk's CE step with 6 / 12 key/value heads (the memory ratio: what grouped heads save) | <= 1.05 |

--quick runs every measure with a 6 x 512 trunk, the full set's 1,024 tokens per step
(B = 2 blocks of 512) and fewer steps, against the same targets: per-step costs (the
CLAP head's normalisation of the V x d embedding) meet as many tokens as in the full
set, and the smaller trunk makes every criterion's head-side overhead weigh more, not
less. Vocabulary: 50,304 (GPT-2's, padded) everywhere.
Threads: torch's default (all cores); run on a quiet machine.
"""

import argparse
import logging
import math
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import torch

VOCAB = 50304


@dataclass
class Side:
    arch: str
    criterion: str
    extra: Tuple[str, ...] = ()


@dataclass
class Measure:
    name: str
    masked: bool
    a: Side
    b: Side
    target: float
    flop_limit: Optional[float]


def size_flags(masked: bool, layers: int, dim: int) -> Tuple[str, ...]:
    side = "encoder" if masked else "decoder"
    return (f"--{side}-layers", str(layers), f"--{side}-embed-dim", str(dim),
            f"--{side}-ffn-embed-dim", str(4 * dim), f"--{side}-attention-heads", str(dim // 64))


def gpt_style(dim: int) -> Tuple[str, ...]:
    """The LM presets' trunk under the bare family name, so that one flag can differ."""
    return ("--decoder-normalize-before", "--activation-fn", "gelu",
            "--share-decoder-input-output-embed", "--decoder-input-dim", str(dim),
            "--decoder-output-dim", str(dim))


def llama_size(layers: int, dim: int, kv_heads: Optional[int] = None) -> Tuple[str, ...]:
    """transformer_lm_llama_* at this size: heads of 64 dims, half as many key/value heads,
    the SwiGLU width of the presets (8 d / 3 rounded up to 64)."""
    heads = dim // 64
    return ("--decoder-layers", str(layers), "--decoder-embed-dim", str(dim),
            "--decoder-ffn-embed-dim", str(-(-8 * dim // 3 // 64) * 64),
            "--decoder-attention-heads", str(heads), "--kv-heads", str(kv_heads or heads // 2))


HF_LLAMA = "transformers:LlamaForCausalLM"  # a side that is transformers' own model


def measures(quick: bool) -> List[Tuple[Measure, int, int]]:
    """(measure, block length, batch) of every row."""
    layers, dim = (6, 512) if quick else (12, 768)
    big, big_mlm = size_flags(False, layers, dim), size_flags(True, layers, dim)
    small = size_flags(False, 6, 512)
    # the quick set keeps the full set's tokens per step (what per-step costs, such as
    # the CLAP head's V x d normalisation, are measured against) with a smaller trunk
    n_lm, n_mlm = (512, 512) if quick else (1024, 512)
    batch_lm, batch_mlm = (2, 2) if quick else (1, 2)
    lm, mlm = "transformer_lm_zero_clap_tiny", "roberta_zero_clap_tiny"  # sized by the flags
    bare = "transformer_lm_energy"
    learned = gpt_style(dim) + ("--decoder-learned-pos",)
    llama, llama_big = "transformer_lm_llama_tiny", llama_size(layers, dim)  # sized by the flags
    return [
        (Measure("causal MonArc / CE", False, Side(lm, "monarc", big),
                 Side(lm, "cross_entropy", big), 1.9, 1.71), n_lm, batch_lm),
        (Measure("causal NCE / CE", False, Side(lm, "nce", big),
                 Side(lm, "cross_entropy", big), 1.9, 1.71), n_lm, batch_lm),
        (Measure("masked MonArc / masked LM", True, Side(mlm, "monarc", big_mlm),
                 Side(mlm, "masked_lm", big_mlm), 1.4, 1.3), n_mlm, batch_mlm),
        (Measure("CWT / CE", False, Side(lm, "cwt", small), Side(lm, "cross_entropy", small),
                 0.7, 0.61), n_lm, batch_lm),
        (Measure("CLAP head / tied softmax", False,
                 Side(bare, "cross_entropy", big + learned + ("--clap-head",)),
                 Side(bare, "cross_entropy", big + learned), 1.03, None), n_lm, batch_lm),
        (Measure("ALiBi / learned positions", False,
                 Side(bare, "cross_entropy", big + gpt_style(dim) + ("--alibi", "causal")),
                 Side(bare, "cross_entropy", big + learned), 1.1, None), n_lm, batch_lm),
        (Measure("Llama MonArc / CE", False, Side(llama, "monarc", llama_big),
                 Side(llama, "cross_entropy", llama_big), 1.9, None), n_lm, batch_lm),
        # transformers' Llama has no dropout but on attention: ours runs without it here
        (Measure("Llama CE / transformers' CE", False,
                 Side(llama, "cross_entropy", llama_big + ("--dropout", "0")),
                 Side(HF_LLAMA, "cross_entropy", llama_big), 1.1, None), n_lm, batch_lm),
        (Measure("grouped / full heads", False, Side(llama, "cross_entropy", llama_big),
                 Side(llama, "cross_entropy", llama_size(layers, dim, dim // 64)), 1.05, None),
         n_lm, batch_lm),
    ]


def build(data: str, side: Side, masked: bool, length: int, device):
    """(model, criterion, task) as fairseq-train builds them (dropout 0.1, attention
    dropout 0: the fused kernel's condition on a GPU)."""
    import energy_lm  # noqa: F401  (registers the archs and criterions)
    from fairseq import options, tasks
    from fairseq.criterions import build_criterion
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    if side.arch == HF_LLAMA:
        return hf_llama(data, side, length, device)
    task = ["--task", "masked_lm"] if masked else ["--task", "language_modeling"]
    argv = [data, *task, "--arch", side.arch, "--criterion", side.criterion,
            "--tokens-per-sample", str(length), "--dropout", "0.1", "--attention-dropout", "0",
            *side.extra]
    cfg = convert_namespace_to_omegaconf(
        options.parse_args_and_arch(options.get_training_parser(), argv))
    task_obj = tasks.setup_task(cfg.task)
    torch.manual_seed(1)
    model = task_obj.build_model(cfg.model).to(device).train()
    return model, build_criterion(cfg.criterion, task_obj), task_obj


class HFCrossEntropy:
    """fairseq's cross_entropy criterion on a transformers causal LM: the summed token
    NLL of the same batch (log-softmax in float32, as fairseq's)."""

    def __call__(self, model, sample):
        logits = model(input_ids=sample["net_input"]["src_tokens"]).logits
        lprobs = torch.log_softmax(logits.float(), dim=-1)
        loss = torch.nn.functional.nll_loss(lprobs.view(-1, lprobs.size(-1)),
                                            sample["target"].view(-1), reduction="sum")
        return loss, 1, {}


def hf_llama(data: str, side: Side, length: int, device):
    """transformers' LlamaForCausalLM with the configuration our Llama trunk has under
    these flags (no biases, tied embeddings, SDPA attention, dropout 0: transformers'
    Llama has none but attention dropout), and the same vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    ours, _, task = build(data, Side("transformer_lm_llama_tiny", "cross_entropy", side.extra),
                          False, length, torch.device("cpu"))
    dec = ours.decoder
    attn = dec.layers[0].self_attn
    config = LlamaConfig(vocab_size=len(task.source_dictionary), hidden_size=dec.embed_dim,
                         intermediate_size=dec.layers[0].fc2.in_features,
                         num_hidden_layers=len(dec.layers), num_attention_heads=attn.num_heads,
                         num_key_value_heads=attn.kv_heads, max_position_embeddings=length + 1,
                         tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
                         attn_implementation="sdpa")
    torch.manual_seed(1)
    return LlamaForCausalLM(config).to(device).train(), HFCrossEntropy(), task


def batches(masked: bool, count: int, batch: int, length: int, mask_idx: int, pad: int, device):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(count):
        tokens = torch.randint(4, VOCAB - 1, (batch, length + 1), generator=g)
        if masked:
            src = tokens[:, :length].clone()
            chosen = torch.rand(batch, length, generator=g) < 0.15
            target = torch.where(chosen, src, torch.full_like(src, pad))
            src[chosen] = mask_idx
        else:
            src, target = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        out.append({"id": torch.arange(i * batch, (i + 1) * batch).to(device),
                    "net_input": {"src_tokens": src.to(device),
                                  "src_lengths": torch.full((batch,), length).to(device)},
                    "target": target.to(device), "ntokens": int(target.ne(pad).sum()),
                    "nsentences": batch})
    return out


class SavedBytes:
    """Bytes of the tensors the autograd graph saves for backward (each storage once)."""

    def __init__(self, exclude: set):
        self.exclude, self.seen, self.total = exclude, set(), 0

    def pack(self, tensor):
        key = (tensor.untyped_storage().data_ptr(), tensor.device)
        if key not in self.seen and tensor.untyped_storage().data_ptr() not in self.exclude:
            self.seen.add(key)
            self.total += tensor.untyped_storage().nbytes()
        return tensor


def median_interval(values: List[float], coverage: float = 0.95):
    """(median, lo, hi): lo, hi the order statistics x_(k), x_(n+1-k) with the largest k
    whose interval holds the true median with probability >= coverage (1 - 2 P(Bin(n, 1/2)
    < k)), whatever the distribution; lo, hi are None when n is too small (n < 6)."""
    ordered = sorted(values)
    n = len(ordered)
    mid = statistics.median(ordered)
    below, k = 0.0, 0  # P(Bin(n, 1/2) < k + 1)
    while True:
        below += math.comb(n, k) / 2 ** n
        if 1 - 2 * below < coverage:
            break
        k += 1
    if k == 0:
        return mid, None, None
    return mid, ordered[k - 1], ordered[n - k]


def judge(lo: Optional[float], hi: Optional[float], target: float) -> str:
    """'ok' when the interval lies at or below the target, 'missed' above it, else
    'unclear': this machine cannot tell the ratio from the target."""
    if lo is None or hi is None:
        return "unclear"
    if hi <= target:
        return "ok"
    return "missed" if lo > target else "unclear"


def run_measure(measure: Measure, length: int, batch: int, steps: int, device,
                max_steps: Optional[int] = None) -> dict:
    warnings.filterwarnings("ignore")
    logging.getLogger("hydra").setLevel(logging.WARNING)
    logging.getLogger("fairseq").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as data:
        symbols = "".join(f"w{i} 1\n" for i in range(VOCAB - 5))  # + 4 specials (+ <mask>)
        Path(data, "dict.txt").write_text(symbols)
        sides = {"a": build(data, measure.a, measure.masked, length, device),
                 "b": build(data, measure.b, measure.masked, length, device)}
    task = sides["a"][2]
    mask_idx = task.source_dictionary.index("<mask>") if measure.masked else -1
    max_steps = max(max_steps or 3 * steps, steps)
    data = batches(measure.masked, max_steps + 2, batch, length, mask_idx,
                   task.source_dictionary.pad(), device)
    cuda = device.type == "cuda"
    params = {key: {p.untyped_storage().data_ptr() for p in model.parameters()}
              for key, (model, _, _) in sides.items()}
    times = {key: [] for key in sides}
    memory = {key: 0.0 for key in sides}
    for i, sample in enumerate(data):
        # A B, B A, A B, ...: whichever runs second in a pair meets the first's freed
        # memory and warm caches; alternating the order shares that between the sides
        for key in (("a", "b") if i % 2 == 0 else ("b", "a")):
            model, crit, _ = sides[key]
            saved = SavedBytes(params[key])
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            start = time.perf_counter()
            if hasattr(crit, "set_num_updates"):
                crit.set_num_updates(i)
            with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t), \
                    torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss, _, _ = crit(model, sample)
            loss.backward()
            if cuda:
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            model.zero_grad(set_to_none=True)
            if i >= 2:  # warm-up (and kernel compilation) not timed
                times[key].append(elapsed * 1000)
                memory[key] = ((torch.cuda.max_memory_allocated() - base) if cuda
                               else saved.total) / 2 ** 20
        pairs = [a / b for a, b in zip(times["a"], times["b"])]
        if len(pairs) >= steps:  # enough pairs: stop once the target is told apart
            ratio, lo, hi = median_interval(pairs)
            if judge(lo, hi, measure.target) != "unclear":
                break
    ratio, lo, hi = median_interval(pairs)
    a_ms, b_ms = (statistics.median(times[k]) for k in ("a", "b"))
    return {"a_ms": a_ms, "b_ms": b_ms, "ratio": ratio, "lo": lo, "hi": hi,
            "pairs": len(pairs), "verdict": judge(lo, hi, measure.target),
            "a_mib": memory["a"], "b_mib": memory["b"], "mem_ratio": memory["a"] / memory["b"]}


def interval(res: dict) -> str:
    return "too few pairs" if res["lo"] is None else f"{res['lo']:.2f}-{res['hi']:.2f}"


def row(measure: Measure, sizes: str, res: dict) -> str:
    """One table row: the median pair ratio with its interval and the verdict."""
    limit = f" ({measure.flop_limit})" if measure.flop_limit else ""
    verdict = {"ok": "ok", "missed": "MISSED", "unclear": "cannot tell on this machine"}
    return (f"| {measure.name} | {sizes} | {res['a_ms']:.0f} | {res['b_ms']:.0f} | "
            f"**{res['ratio']:.2f}** ({interval(res)}, {res['pairs']} pairs) | "
            f"{res['mem_ratio']:.2f} ({res['a_mib']:.0f} / {res['b_mib']:.0f}) | "
            f"<= {measure.target}{limit} {verdict[res['verdict']]} |")


def verdict_line(results: List[Tuple[Measure, dict]]) -> Tuple[int, str]:
    """--check's exit code and its one line: 1 if a ratio missed its target beyond its
    interval, else 2 if a ratio could not be told from its target, else 0."""
    missed = [m.name for m, r in results if r["verdict"] == "missed"]
    unclear = [f"{m.name} {r['ratio']:.2f} ({interval(r)}) vs <= {m.target}"
               for m, r in results if r["verdict"] == "unclear"]
    if missed:
        return 1, f"missed: {', '.join(missed)}"
    if unclear:
        return 2, (f"cannot judge: the machine is too noisy to tell these ratios from their "
                   f"targets (95% interval of the pair ratios): {'; '.join(unclear)}; rerun "
                   f"on a quiet machine")
    return 0, "every ratio met its target"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a reduced set in a few minutes")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a ratio misses its target")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per side at least (default 8, --quick 6: a 95%% "
                             "interval needs 6 pairs)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="timed steps per side at most, while the interval holds the "
                             "target (default 3 x --steps)")
    parser.add_argument("--only", nargs="+", default=None, help="measures whose name has one "
                        "of these words (e.g. MonArc CWT)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps = args.steps or (6 if args.quick else 8)
    memory_kind = "peak allocated" if device.type == "cuda" else "saved for backward"
    print(f"device {device}, threads {torch.get_num_threads()}, {'quick' if args.quick else 'full'}"
          f" set, alternating steps ({steps} per side at least); ratio = median of the pair "
          f"ratios (95% interval, pairs); memory = {memory_kind}")
    print("| measure | sizes | A ms | B ms | ratio | memory ratio (A / B MiB) | target |")
    print("|---|---|---|---|---|---|---|")
    results = []
    for measure, length, batch in measures(args.quick):
        if args.only and not any(word in measure.name for word in args.only):
            continue
        res = run_measure(measure, length, batch, steps, device, args.max_steps)
        flags = " ".join(measure.a.extra[1::2][:2])
        sizes = f"{flags.replace(' ', ' x ')}, N={length}, B={batch}"
        print(row(measure, sizes, res), flush=True)
        results.append((measure, res))
    code, line = verdict_line(results)
    print(line)
    return code if args.check else 0


if __name__ == "__main__":
    sys.exit(main())
