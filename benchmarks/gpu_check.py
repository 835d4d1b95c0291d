"""One GPU check, ready to run where a GPU is lent: `make gpu-check`.

    python benchmarks/gpu_check.py --out gpu-check.md      # on a CUDA machine

Parts, each with its planned time on one H100-class GPU (the whole under 8 minutes):
  1. the kernel tests without the interpreter (tests/kernels: Triton compiled,
     FlexAttention gradients on CUDA, the self-check)                    ~2 min
     (compilation dominates: ~40 Triton specialisations at ~2 s each)
  2. the paired-attention benchmark: reference / flex / triton, causal + ALiBi, bf16,
     N = 512 ... 8192 at B x N = 16384, forward and forward + backward, time and peak
     memory (5 timed repeats after a warm-up)                            ~1.5 min
  3. the MonArc / LM step ratio of the 12 x 768 causal model at N = 1024, batch 8,
     MonArc on `triton` (10 timed steps per side)                       ~1 min
  4. a short bf16 MonArc training run (tiny causal model, 200 updates) on `triton` and
     on `reference` from the same seed: their loss curves must agree (mean absolute
     difference of the logged loss below 0.02 bits, last loss within 0.05) ~1.5 min
and writes one markdown file with every table. On a machine without CUDA it says so in
one line and exits 0. Tile sizes are tuned only from such a run (docs/kernels.md).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def part(title: str, argv, timeout: int, env=None) -> str:
    """Run one part; its stdout (a markdown table) under a heading, and how long it took."""
    start = time.time()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                            env={**os.environ, **(env or {})})
    took = time.time() - start
    status = "ok" if result.returncode == 0 else f"FAILED (exit {result.returncode})"
    body = result.stdout.strip() if result.returncode == 0 else (
        result.stdout[-3000:] + "\n" + result.stderr[-3000:])
    print(f"{title}: {status} in {took:.0f} s", flush=True)
    return f"## {title} ({status}, {took:.0f} s)\n\n{body}\n"


def training_curves(workdir: Path, updates: int) -> str:
    """A bf16 MonArc run per backend from one seed; the table of their logged losses."""
    corpus = workdir / "corpus"
    subprocess.run([BIN / "energy-lm-prepare", "embedded", "--out", corpus], check=True,
                   capture_output=True, timeout=600)
    losses = {}
    for backend in ("triton", "reference"):
        log = workdir / f"{backend}.json"
        subprocess.run([BIN / "fairseq-train", corpus / "data-bin", "--task", "language_modeling",
                        "--arch", "transformer_lm_zero_clap_tiny", "--criterion", "monarc",
                        "--attention-backend", backend, "--bf16", "--memory-efficient-bf16",
                        "--tokens-per-sample", "256", "--batch-size", "16",
                        "--optimizer", "adam", "--lr", "5e-4", "--max-update", str(updates),
                        "--seed", "1", "--dropout", "0", "--attention-dropout", "0",
                        "--log-format", "json", "--log-interval", "10", "--log-file", log,
                        "--save-dir", workdir / backend, "--no-save", "--num-workers", "0"],
                       check=True, capture_output=True, timeout=900)
        losses[backend] = {int(r["num_updates"]): float(r["loss"])
                           for r in map(json.loads, log.read_text().splitlines())
                           if r.get("num_updates") and "loss" in r and "train_loss" not in r}
    steps = sorted(set(losses["triton"]) & set(losses["reference"]))
    diffs = [abs(losses["triton"][s] - losses["reference"][s]) for s in steps]
    mean = sum(diffs) / len(diffs)
    last = diffs[-1]
    verdict = "agree" if mean < 0.02 and last < 0.05 else "DISAGREE"
    rows = "\n".join(f"| {s} | {losses['triton'][s]:.3f} | {losses['reference'][s]:.3f} |"
                     for s in steps)
    return (f"| update | triton loss | reference loss |\n|---|---|---|\n{rows}\n\n"
            f"mean |difference| {mean:.4f} bits, last {last:.4f}: **{verdict}**")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu-check.md"))
    parser.add_argument("--updates", type=int, default=200, help="updates of part 4")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; nothing to check (exit 0)")
        return 0
    name = torch.cuda.get_device_name()
    sections = [f"# GPU check on {name} (torch {torch.__version__})\n"]
    python = sys.executable
    env = {"TRITON_INTERPRET": "0"}
    # every kernel test, and a line per failure (no -x: one failure must not hide the rest)
    sections.append(part("1. kernel tests, compiled", [python, "-m", "pytest", "-q", "-rfE",
                                                          "--tb=line", "tests/kernels"],
                         900, env))
    sections.append(part("2. paired attention, bf16", [python, "benchmarks/paired_attention.py",
                                                       "--step-arch", "none"], 900))
    sections.append(part("3. MonArc / LM step, 12 x 768, N = 1024, triton",
                         [python, "benchmarks/paired_attention.py", "--lengths", "1024",
                          "--repeats", "1", "--step-backend", "triton"], 900))
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            table = training_curves(Path(tmp), args.updates)
            status = "ok"
        except subprocess.CalledProcessError as err:
            table, status = f"{err}\n{(err.stderr or '')[-3000:]}", "FAILED"
    print(f"4. training curves: {status} in {time.time() - start:.0f} s", flush=True)
    sections.append(f"## 4. bf16 MonArc training, triton vs reference ({status}, "
                    f"{time.time() - start:.0f} s)\n\n{table}\n")
    args.out.write_text("\n".join(sections))
    print(f"gpu-check: wrote {args.out}")
    failed = [s for s in sections if "FAILED" in s.splitlines()[0] or "DISAGREE" in s]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
