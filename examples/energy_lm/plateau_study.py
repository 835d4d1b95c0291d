"""Does MonArc pay off on a plateaued LM? (issue 37: the adaptation claim, measured)

MonArc's headline is that adapting an LM whose cross-entropy training has flattened gains
more than continuing that training. Here the base is trained with CE (the learning rate
held after its warmup: inverse square root) in stages of --stage updates until one stage
lowers its valid loss by less than --threshold bits: the plateau, stated by that rule.
From the plateaued base, per seed:

  monarc     MonArc for --updates updates
  ce         CE continued for the same updates
  ce-wall    CE continued for MonArc's wall-clock (its updates scaled by the measured
             cost of a step: compute_study.measure, in one process)

each continuation starting its own learning rate at --lr and decaying it over its length.
Every continuation is scored on --blocks valid blocks drawn at random (exact Z for MonArc);
the table pairs MonArc's ELM with its own LM and with each CE continuation's LM, over seeds
and blocks (run_scoring.paired_clustered).

    OMP_NUM_THREADS=1 python examples/energy_lm/plateau_study.py --data kjv/data-bin \\
        --out plateau --seeds 1 2 3 --jobs 2

Finished stages, runs and evaluations are not redone; OUT/plateau.md is rewritten as they
finish.
"""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compute_study import measure  # noqa: E402  (same folder)
from heldout_study import CRITERIA, RESUMABLE, exact, fmt, train  # noqa: E402
from replicate import BIN, CAUSAL, CAUSAL_ARCH, log_records  # noqa: E402
from run_scoring import elm_bits, paired_clustered, read_records, study_parser  # noqa: E402


def valid_losses(log: Path) -> Dict[int, float]:
    """Update -> valid loss (bits) of every validation in a fairseq json log."""
    return {int(float(r["valid_num_updates"])): float(r["valid_loss"])
            for r in log_records(log) if "valid_loss" in r}


def plateaued(losses: Dict[int, float], stage: int, threshold: float) -> bool:
    """The last stage lowered the valid loss by less than threshold bits."""
    ends = sorted(u for u in losses if u % stage == 0)
    return len(ends) >= 2 and losses[ends[-2]] - losses[ends[-1]] < threshold


def base_run(data: Path, out: Path, stage: int, threshold: float, max_stages: int) -> Path:
    """CE in stages until plateaued (resumed stage by stage from checkpoint_last.pt)."""
    save = out / "base"
    save.mkdir(parents=True, exist_ok=True)

    def losses() -> Dict[int, float]:
        return valid_losses(save / "train.log") if (save / "train.log").exists() else {}

    for k in range(1, max_stages + 1):
        if plateaued(losses(), stage, threshold):
            break
        if k * stage in losses():
            continue
        flags = list(RESUMABLE)  # the lr held after warmup, so that a stage can follow
        flags[flags.index("--lr-scheduler") + 1] = "inverse_sqrt"
        cmd = [str(BIN / "fairseq-train"), str(data), *flags, *CAUSAL, *CAUSAL_ARCH,
               *CRITERIA["ce"], "--max-update", str(k * stage), "--validate-interval-updates",
               str(stage), "--save-interval-updates", str(stage), "--keep-interval-updates", "1",
               "--seed", "1", "--save-dir", str(save)]
        with open(save / "train.log", "a") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
    if not plateaued(losses(), stage, threshold):
        raise SystemExit(f"the base did not plateau within {max_stages} stages of {stage} "
                         f"updates (valid losses {losses()})")
    (save / "plateaued").write_text(json.dumps(losses()))
    return save / "checkpoint_last.pt"


def table(out: Path, runs: Dict[str, int], seeds: List[int], base: Dict[int, float]) -> str:
    curve = ", ".join(f"{u}: {v:.3f}" for u, v in sorted(base.items()))
    lines = [f"base (CE, valid loss in bits at each stage's end): {curve}", "",
             "| MonArc against | CE updates | seeds | tokens (blocks) | difference (bits) |",
             "|---|---|---|---|---|"]
    for against in ("own LM", "ce", "ce-wall"):
        pairs = []
        for seed in seeds:
            a = out / f"monarc_seed{seed}" / "last" / "tokens.jsonl"
            b = a if against == "own LM" else out / f"{against}_seed{seed}" / "last" / "tokens.jsonl"
            if a.exists() and b.exists():
                pairs.append((read_records(a), read_records(b)))
        if not pairs:
            continue
        r = paired_clustered(pairs, elm_bits, lambda rec: rec["lm"])
        updates = "" if against == "own LM" else runs[against]
        lines.append(f"| {against} (ELM - LM) | {updates} | {len(pairs)} | {r['tokens']} "
                     f"({r['blocks']}) | {fmt(r['mean'], r['stderr'])} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = study_parser(__doc__)  # --data, --out
    parser.add_argument("--stage", type=int, default=500, help="updates per base stage")
    parser.add_argument("--threshold", type=float, default=0.02,
                        help="plateau: a stage lowers the valid loss by less than this (bits)")
    parser.add_argument("--max-stages", type=int, default=12)
    parser.add_argument("--updates", type=int, default=600, help="each continuation")
    parser.add_argument("--lr", default="3e-4", help="continuations' peak lr (decays to 0)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    base = base_run(args.data, args.out, args.stage, args.threshold, args.max_stages)
    cost = measure(args.data, args.out, ["monarc"])
    runs = {"monarc": args.updates, "ce": args.updates,
            "ce-wall": round(args.updates * cost["monarc"]["seconds"] / cost["ce"]["seconds"])}
    # first launch: the base with fresh optimizer, schedule, meters and data order; a
    # relaunch after an interruption resumes the continuation itself (checkpoint_last.pt)
    continued = ["--finetune-from-model", str(base), "--lr", args.lr, "--warmup-updates", "0"]

    def one(job):
        name, seed = job
        criterion = "monarc" if name == "monarc" else "ce"
        save = train(args.data, args.out / f"{name}_seed{seed}",
                     [*CRITERIA[criterion], *continued], runs[name], seed)
        exact(args.data, save, "checkpoint_last.pt", "last", args.blocks, criterion)
        return job

    losses = valid_losses(args.out / "base" / "train.log")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for _ in pool.map(one, [(n, s) for s in args.seeds for n in runs]):
            (args.out / "plateau.md").write_text(table(args.out, runs, args.seeds, losses) + "\n")
    print((args.out / "plateau.md").read_text())


if __name__ == "__main__":
    main()
