"""The seeds' adaptation experiment on real text: does MonArc pay off when it adapts an
existing LM? One causal LM is trained with CE until its valid loss flattens; then it is
continued for the same number of updates with CE and with MonArc (3 seeds each), and
`energy-lm-eval-elm` scores every continued model on the valid split: the LM alone and
the ELM with the labelled log Z estimate on the whole split, and token by token on the
first --exact-batches blocks, the ELM with exact Z there. Per seed, paired over those
tokens: the MonArc continuation's ELM against its own LM and against the CE
continuation's LM (same seed, so the same batches).

    energy-lm-prepare debian --out debian --workers 2
    python examples/energy_lm/adapt.py --data debian/data-bin --out adaptation --jobs 2

Every run goes through the real fairseq-train (settings of replicate.py's causal
comparison: transformer_lm_alibi_tiny, blocks of 128, batch 16); finished runs and
evaluations are not redone, so an interrupted experiment resumes. `--jobs 2` runs two
continuations side by side, one thread each.
"""

import json
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replicate import CAUSAL, CAUSAL_ARCH, RESET, train  # noqa: E402  (same folder)
from run_scoring import (  # noqa: E402
    evaluate, read_records, score_lm, score_whole_split, seed_row, study_parser)
from run_scoring import table as paired_table  # noqa: E402


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


def mean_std(values: List[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def score(data: Path, save: Path, criterion: str, exact_batches: int) -> None:
    """Per-token records of the first exact_batches valid blocks (with exact Z for an
    energy run; a CE run's energy head is untrained, so its LM alone) and the whole
    split's figures (the ELM by the labelled estimate)."""
    if criterion == "cross_entropy":
        score_lm(data, save, exact_batches)
    else:
        evaluate(data, save, exact_batches, whole_split=False)
    score_whole_split(data, save)


def table(whole: Dict[str, List[dict]], rows: Dict[str, dict], base: dict,
          curve: List[float]) -> str:
    lines = [f"base: CE, {base['updates']} updates, valid loss per validation (bits): "
             + ", ".join(f"{v:.3f}" for v in curve), "",
             "Whole valid split, mean ± std over seeds:", "",
             "| continued with | LM bits | ELM bits, estimate | train s |", "|---|---|---|---|"]
    for criterion, runs in whole.items():
        elm = "-" if criterion == "cross_entropy" else mean_std([r["elm_est"] for r in runs])
        lines.append(f"| {criterion} | {mean_std([r['lm'] for r in runs])} | {elm} | "
                     f"{statistics.mean(r['seconds'] for r in runs):.0f} |")
    lines += ["", "Paired per seed (the MonArc continuation against its own LM and against "
              "the CE continuation of the same seed; exact Z on the first blocks):", "",
              paired_table(rows)]
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = study_parser(__doc__)
    parser.add_argument("--base-updates", type=int, default=2000)
    parser.add_argument("--updates", type=int, default=600, help="each continuation")
    parser.add_argument("--lr", default="3e-4", help="continuations' peak lr (decays to 0)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--exact-batches", type=int, default=2,
                        help="valid blocks of 128 tokens that get exact Z (2: 245 tokens)")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    base = base_run(args.data, args.out, args.base_updates)
    curve = valid_curve(args.out / "base" / "train.log")
    jobs = [(c, s) for s in args.seeds for c in ("cross_entropy", "monarc")]

    def run(job):
        criterion, seed = job
        save = continue_run(args.data, args.out, criterion, seed, args.updates, args.lr)
        score(args.data, save, criterion, args.exact_batches)
        return criterion, seed, save

    saves: Dict[int, Dict[str, Path]] = {}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for criterion, seed, save in pool.map(run, jobs):
            saves.setdefault(seed, {})[criterion] = save
    whole: Dict[str, List[dict]] = {"cross_entropy": [], "monarc": []}
    rows: Dict[str, dict] = {}
    for seed, runs in sorted(saves.items()):
        for criterion, save in runs.items():
            seconds = json.loads((save / "summary.json").read_text())["seconds"]
            whole[criterion].append(dict(json.loads((save / "elm-whole.json").read_text()),
                                         seconds=seconds))
        rows[str(seed)] = seed_row(read_records(runs["monarc"] / "tokens.jsonl"),
                                   read_records(runs["cross_entropy"] / "tokens.jsonl"),
                                   runs["monarc"], runs["cross_entropy"])
    (args.out / "results.json").write_text(json.dumps({"whole": whole, "paired": rows}, indent=1))
    text = table(whole, rows, base, curve)
    (args.out / "table.md").write_text(text + "\n")
    print(text)
    return text


if __name__ == "__main__":
    main()
