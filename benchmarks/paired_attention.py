"""Speed and memory of the paired-attention backends, ratios measured in one run.

    python benchmarks/paired_attention.py      # GPU: bf16, N 512..8192; CPU: fp32, N 256..1024

The defaults fit the device they run on: on a GPU B x N = 16384 and the step ratio at
batch 8; on the CPU B x N = 4096, N up to 1024, and the step ratio at batch 1 (batch 8
of the 12 x 768 model at N = 1024 needs more than 24 GB there).

For each N (B * N constant, one candidate per position, causal, ALiBi, H = 12, D = 64)
it times forward and forward + backward of every available backend (median of
--repeats after a warm-up) and, on a GPU, its peak memory; then prints the ratios
reference/triton and flex/triton. On the CPU only `reference` runs (Triton runs there
only under its interpreter, whose speed means nothing).

Then the end-to-end ratio: one training step (forward + backward, bf16 autocast on a
GPU) of a causal model with the `monarc` criterion against the same model with
`cross_entropy`, on the same random batches, alternating the two (default: the 12 x 768
`transformer_lm_zero_clap_base` at N = 1024, attention dropout 0 so that `auto` may pick
the fused kernel): median step time and, on a GPU, peak memory, and their ratios.
"""

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from energy_lm.kernels import Alibi, PairedLayout, paired_attention
from energy_lm.kernels.alibi import alibi_slopes


def inputs(batch, heads, n, dim, dtype, device):
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(length):
        return torch.randn(batch, heads, length, dim, generator=g).to(device, dtype).requires_grad_()

    six = [rand(n) for _ in range(3)] + [rand(n) for _ in range(3)]
    cand_pos = torch.arange(n, device=device).expand(batch, n).contiguous()
    return six, cand_pos


def measure(backend, six, cand_pos, slopes, repeats, backward):
    device = six[0].device

    def step():
        # a new layout per call, as a model builds one per batch: masks are not reused
        layout = PairedLayout.build(cand_pos, six[0].size(2), causal=True,
                                    alibi=Alibi(slopes, "causal"))
        out, out_c = paired_attention(*six, layout, backend=backend)
        if backward:
            (out.float().sum() + out_c.float().sum()).backward()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up (and Triton's compilation)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        for t in six:
            t.grad = None
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
    else:  # the CPU has no allocator statistics: the bytes saved for backward
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(
                lambda t: saved.append(t.untyped_storage().nbytes()) or t, lambda t: t):
            step()
        peak = sum(saved) / 2 ** 20
    return statistics.median(times) * 1000, peak


def build_for_step(data: str, arch: str, criterion: str, length: int, backend: str, device):
    """(model, criterion) as fairseq-train builds them (dropout 0.1, attention dropout 0)."""
    import energy_lm  # noqa: F401  (registers the archs and criterions)
    from fairseq import options, tasks
    from fairseq.criterions import build_criterion
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = [data, "--task", "language_modeling", "--arch", arch, "--criterion", criterion,
            "--tokens-per-sample", str(length), "--dropout", "0.1", "--attention-dropout", "0"]
    if criterion == "monarc":
        argv += ["--attention-backend", backend]
    cfg = convert_namespace_to_omegaconf(
        options.parse_args_and_arch(options.get_training_parser(), argv))
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(1)
    return task.build_model(cfg.model).to(device).train(), build_criterion(cfg.criterion, task)


def step_ratio(arch: str, length: int, batch: int, vocab: int, steps: int, backend: str,
               device) -> dict:
    """Median fwd+bwd step time (ms) and peak memory (MiB, GPU) of CE and MonArc."""
    warnings.filterwarnings("ignore", module="hydra")  # fairseq's config composition
    logging.getLogger("hydra").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as data:
        # the task reads only dict.txt at set-up; batches are random tokens
        Path(data, "dict.txt").write_text("".join(f"w{i} 1\n" for i in range(vocab)))
        built = {name: build_for_step(data, arch, name, length, backend, device)
                 for name in ("cross_entropy", "monarc")}
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(steps + 2):
        tokens = torch.randint(4, vocab, (batch, length + 1), generator=g).to(device)
        batches.append({"net_input": {"src_tokens": tokens[:, :-1].contiguous(),
                                      "src_lengths": torch.full((batch,), length, device=device)},
                        "target": tokens[:, 1:].contiguous(), "ntokens": batch * length, "nsentences": batch})
    cuda = device.type == "cuda"
    times = {name: [] for name in built}
    peak = {name: float("nan") for name in built}
    for i, sample in enumerate(batches):
        for name, (model, crit) in built.items():
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss, _, _ = crit(model, sample)
            loss.backward()
            if cuda:
                torch.cuda.synchronize()
                peak[name] = torch.cuda.max_memory_allocated() / 2 ** 20
            model.zero_grad(set_to_none=True)
            if i >= 2:  # warm-up (and kernel compilation) not timed
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: (statistics.median(times[name]), peak[name]) for name in built}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help="default: 512 ... 8192 on a GPU, 256 512 1024 on the CPU")
    parser.add_argument("--tokens", type=int, default=None,
                        help="B * N (default: 16384 on a GPU, 4096 on the CPU)")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on a GPU, float32 on CPU")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backends", nargs="+", default=None)
    parser.add_argument("--step-arch", default="transformer_lm_zero_clap_base",
                        help="model of the MonArc/LM step ratio ('none' skips it)")
    parser.add_argument("--step-length", type=int, default=1024)
    parser.add_argument("--step-batch", type=int, default=None,
                        help="default: 8 on a GPU, 1 on the CPU")
    parser.add_argument("--step-vocab", type=int, default=50304)
    parser.add_argument("--step-repeats", type=int, default=10)
    parser.add_argument("--step-backend", default="auto", help="MonArc's --attention-backend")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    args.lengths = args.lengths or ([512, 1024, 2048, 4096, 8192] if gpu else [256, 512, 1024])
    args.tokens = args.tokens or (16384 if gpu else 4096)
    args.step_batch = args.step_batch or (8 if gpu else 1)
    dtype = getattr(torch, args.dtype) if args.dtype else (
        torch.bfloat16 if device.type == "cuda" else torch.float32)
    backends = args.backends or (["reference", "triton", "flex"] if device.type == "cuda" else ["reference"])
    slopes = alibi_slopes(args.heads).to(device)
    print(f"device {device}, {dtype}, H={args.heads}, D={args.dim}, B*N={args.tokens}, "
          f"M = N candidates, causal + ALiBi; times in ms (median of {args.repeats}); MiB: "
          f"{'peak allocated' if gpu else 'saved for backward (fwd+bwd rows)'}")
    print("| N | B | pass | " + " | ".join(f"{b} ms | {b} MiB" for b in backends) + " | ratios |")
    print("|---" * (3 + 2 * len(backends) + 1) + "|")
    for n in args.lengths:
        batch = max(1, args.tokens // n)
        for backward in (False, True):
            row = {}
            for backend in backends:
                six, cand_pos = inputs(batch, args.heads, n, args.dim, dtype, device)
                try:
                    row[backend] = measure(backend, six, cand_pos, slopes, args.repeats, backward)
                except torch.OutOfMemoryError:
                    row[backend] = (float("nan"), float("nan"))
                    torch.cuda.empty_cache()
            ratios = []
            if "triton" in row:
                for other in ("reference", "flex"):
                    if other in row:
                        ratios.append(f"{other}/triton {row[other][0] / row['triton'][0]:.2f}")
            cells = " | ".join(f"{row[b][0]:.2f} | {row[b][1]:.0f}" for b in backends)
            print(f"| {n} | {batch} | {'fwd+bwd' if backward else 'fwd'} | {cells} | "
                  f"{', '.join(ratios) or '-'} |")
    if args.step_arch != "none":
        res = step_ratio(args.step_arch, args.step_length, args.step_batch, args.step_vocab,
                         args.step_repeats, args.step_backend, device)
        (ce_ms, ce_mib), (mo_ms, mo_mib) = res["cross_entropy"], res["monarc"]
        print(f"\n{args.step_arch}, N={args.step_length}, batch {args.step_batch}, vocab "
              f"{args.step_vocab}, MonArc backend {args.step_backend!r}; fwd+bwd step, median "
              f"of {args.step_repeats}")
        print("| criterion | step ms | peak MiB |\n|---|---|---|")
        print(f"| cross_entropy | {ce_ms:.1f} | {ce_mib:.0f} |\n| monarc | {mo_ms:.1f} | {mo_mib:.0f} |")
        print(f"| ratio MonArc/LM | {mo_ms / ce_ms:.2f} | {mo_mib / ce_mib:.2f} |")


if __name__ == "__main__":
    main()
