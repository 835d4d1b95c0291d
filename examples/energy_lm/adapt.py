"""The seeds' adaptation experiment on real text: does MonArc pay off when it adapts an
existing LM? One causal LM is trained with CE until its valid loss flattens; then it is
continued for the same number of updates with CE and with MonArc (3 seeds each), and
`energy-lm-eval-elm` scores every continued model on the valid split: the LM alone, the
ELM with the labelled log Z estimate on the whole split, and the ELM with exact Z on a
subset of positions.

    energy-lm-prepare debian --out debian --workers 2
    python examples/energy_lm/adapt.py --data debian/data-bin --out adaptation --jobs 2

Every run goes through the real fairseq-train (settings of replicate.py's causal
comparison: transformer_lm_alibi_tiny, blocks of 128, batch 16); finished runs and
evaluations are not redone, so an interrupted experiment resumes. `--jobs 2` runs two
continuations side by side, one thread each.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replicate import CAUSAL, CAUSAL_ARCH, RESET, train  # noqa: E402  (same folder)


def base_run(data: Path, out: Path, updates: int) -> dict:
    """CE from scratch, validated every updates/8 updates (the curve shows the plateau)."""
    return train(data, out / "base", [*CAUSAL, *CAUSAL_ARCH, "--criterion", "cross_entropy",
                                      "--max-update", str(updates), "--total-num-update",
                                      str(updates), "--validate-interval-updates",
                                      str(max(updates // 8, 1)), "--save-interval-updates",
                                      str(updates)], seed=1)


def valid_curve(log: Path) -> List[float]:
    curve = []
    for line in log.read_text().splitlines():
        brace = line.find("{")
        if brace >= 0 and '"valid_loss"' in line:
            curve.append(float(json.loads(line[brace:])["valid_loss"]))
    return curve


def continue_run(data: Path, out: Path, criterion: str, seed: int, updates: int, lr: str) -> Path:
    save = out / f"{criterion}_seed{seed}"
    train(data, save, [*CAUSAL, *CAUSAL_ARCH, "--criterion", criterion, "--restore-file",
                       str(out / "base" / "checkpoint_best.pt"), *RESET, "--lr", lr,
                       "--warmup-updates", "0", "--max-update", str(updates),
                       "--total-num-update", str(updates), "--save-interval-updates",
                       str(updates)], seed)
    return save


def run_eval_elm(data: Path, save: Path, flags: List[str], log_name: str) -> None:
    """energy-lm-eval-elm on save/checkpoint_best.pt in its own one-thread process (two
    may run side by side), top-8 + 8 tail samples; its output goes to save/log_name."""
    cmd = [sys.executable, "-m", "energy_lm.cli.eval_elm", str(data), "--path",
           str(save / "checkpoint_best.pt"), "--cpu", "--topk", "8", "--num-samples", "8",
           *flags]
    with open(save / log_name, "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))


def evaluate(data: Path, save: Path, exact_batches: int, whole_split: bool = True) -> dict:
    """The exact-Z figures of a run (cached in save/elm-eval.json); the exact-Z tokens'
    records go to tokens.jsonl beside the checkpoint (to pair runs). `whole_split=False`
    scores only the exact-Z blocks (the estimate's whole-split pass costs as much as
    exact Z on a few blocks)."""
    cached = save / "elm-eval.json"
    if not cached.exists():
        flags = ["--batch-size", "1", "--exact-z", "--exact-z-batches", str(exact_batches),
                 "--per-token", str(save / "tokens.jsonl"),
                 "--json", str(cached.with_suffix(".tmp"))]
        if not whole_split:
            flags += ["--max-batches", str(exact_batches)]
        run_eval_elm(data, save, flags, "elm-eval.txt")
        cached.with_suffix(".tmp").rename(cached)
    return json.loads(cached.read_text())


def mean_std(values: List[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def table(results: Dict[str, List[dict]], base: dict, curve: List[float]) -> str:
    lines = [f"base: CE, {base['updates']} updates, valid loss per validation (bits): "
             + ", ".join(f"{v:.3f}" for v in curve), "",
             "| continued with | LM bits | ELM bits, estimate (whole split) | "
             "LM bits on the exact-Z subset | ELM bits, exact Z (subset) | train s |",
             "|---|---|---|---|---|---|"]
    for criterion, rows in results.items():
        lines.append(
            f"| {criterion} | {mean_std([r['lm'] for r in rows])} | "
            f"{mean_std([r['elm_est'] for r in rows])} | "
            f"{mean_std([r['lm_on_exact'] for r in rows])} | "
            f"{mean_std([r['elm_exact'] for r in rows])} | "
            f"{statistics.mean(r['seconds'] for r in rows):.0f} |")
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--base-updates", type=int, default=2000)
    parser.add_argument("--updates", type=int, default=600, help="each continuation")
    parser.add_argument("--lr", default="3e-4", help="continuations' peak lr (decays to 0)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--exact-batches", type=int, default=1,
                        help="blocks of 128 tokens that get exact Z")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    base = base_run(args.data, args.out, args.base_updates)
    curve = valid_curve(args.out / "base" / "train.log")
    jobs = [(c, s) for s in args.seeds for c in ("cross_entropy", "monarc")]

    def run(job):
        criterion, seed = job
        save = continue_run(args.data, args.out, criterion, seed, args.updates, args.lr)
        summary = json.loads((save / "summary.json").read_text())
        return criterion, dict(evaluate(args.data, save, args.exact_batches),
                               seconds=summary["seconds"])

    results: Dict[str, List[dict]] = {"cross_entropy": [], "monarc": []}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for criterion, result in pool.map(run, jobs):
            results[criterion].append(result)
    text = table(results, base, curve)
    (args.out / "table.md").write_text(text + "\n")
    print(text)
    return text


if __name__ == "__main__":
    main()
