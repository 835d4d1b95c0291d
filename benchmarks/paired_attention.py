"""Speed and memory of the paired-attention backends, ratios measured in one run.

    python benchmarks/paired_attention.py                       # GPU: bf16, N 512..8192
    python benchmarks/paired_attention.py --lengths 256 512     # CPU: reference only

For each N (B * N constant, one candidate per position, causal, ALiBi, H = 12, D = 64)
it times forward and forward + backward of every available backend (median of
--repeats after a warm-up) and, on a GPU, its peak memory; then prints the ratios
reference/triton and flex/triton. On the CPU only `reference` runs (Triton runs there
only under its interpreter, whose speed means nothing).
"""

import argparse
import statistics
import time

import torch

from energy_lm.kernels import paired_attention
from energy_lm.modules.alibi import alibi_slopes


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
        out, out_c = paired_attention(*six, cand_pos, causal=True, alibi_slopes=slopes,
                                      alibi_mode="causal", backend=backend)
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
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else float("nan")
    return statistics.median(times) * 1000, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--tokens", type=int, default=16384, help="B * N")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on a GPU, float32 on CPU")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backends", nargs="+", default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype) if args.dtype else (
        torch.bfloat16 if device.type == "cuda" else torch.float32)
    backends = args.backends or (["reference", "triton", "flex"] if device.type == "cuda" else ["reference"])
    slopes = alibi_slopes(args.heads).to(device)
    print(f"device {device}, {dtype}, H={args.heads}, D={args.dim}, B*N={args.tokens}, "
          f"M = N candidates, causal + ALiBi; times in ms (median of {args.repeats})")
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


if __name__ == "__main__":
    main()
