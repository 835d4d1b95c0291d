"""Does the energy's gain grow with training? (issue 37: ELM - LM against training length)

The seeds' curves open a gap between the ELM and its LM after about 500 updates that
widens. Here one energy run per seed (transformer_lm_alibi_tiny, replicate.py's settings,
the criterion at its defaults, from scratch) is trained for the longest point's updates,
keeping a checkpoint every 100 updates, and each point's checkpoint is scored with exact
Z on the same --blocks valid blocks drawn at random; per point, ELM - LM paired over
seeds and tokens (run_scoring.paired_clustered). The learning rate decays over the whole
run, so a point is that run at that update, not a run of that length.

    energy-lm-prepare embedded --out embedded --workers 2
    OMP_NUM_THREADS=1 python examples/energy_lm/curve_study.py --data embedded/data-bin \\
        --out curve --points 100 200 500 1000 2000 --seeds 1 2 --jobs 2

The embedded corpus's 2,000-token vocabulary keeps exact Z at ~8 min of one thread per
point. Finished runs and points are not redone; OUT/curve.md is rewritten as they finish.
"""

import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heldout_study import CRITERIA, exact, fmt, train  # noqa: E402  (same folder)
from run_scoring import elm_bits, paired_clustered, read_records, study_parser  # noqa: E402


def checkpoint_at(save: Path, update: int) -> str:
    """The name of the checkpoint fairseq saved at `update` (checkpoint_EPOCH_UPDATE.pt)."""
    found = sorted(save.glob(f"checkpoint_*_{update}.pt"))
    if not found:
        raise FileNotFoundError(f"{save}: no checkpoint saved at update {update}")
    return found[0].name


def table(out: Path, criterion: str, points: List[int], seeds: List[int]) -> str:
    lines = [f"{criterion}: ELM - LM with exact Z on the same random valid blocks at each "
             f"update, paired over seeds and tokens (± s.e. bootstrapped over blocks and seeds)",
             "", "| update | seeds | tokens (blocks) | LM bits | ELM - LM |", "|---|---|---|---|---|"]
    for update in points:
        runs = [read_records(path) for seed in seeds
                if (path := out / f"{criterion}_seed{seed}" / f"update{update}" / "tokens.jsonl").exists()]
        if not runs:
            continue
        gain = paired_clustered([(r, r) for r in runs], elm_bits, lambda rec: rec["lm"])
        lm = statistics.mean(rec["lm"] for r in runs for rec in r.values())
        lines.append(f"| {update} | {len(runs)} | {gain['tokens']} ({gain['blocks']}) | {lm:.4f} | "
                     f"{fmt(gain['mean'], gain['stderr'])} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = study_parser(__doc__)  # --data, --out
    parser.add_argument("--criterion", default="monarc", choices=["monarc", "nce"])
    parser.add_argument("--points", type=int, nargs="+", default=[100, 200, 500, 1000, 2000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    if any(p % 100 for p in args.points):
        parser.error("--points must be multiples of 100 (a checkpoint is kept every 100 updates)")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    longest = max(args.points)
    saves: Dict[int, Path] = {}

    def run(seed: int) -> Path:
        return train(args.data, args.out / f"{args.criterion}_seed{seed}",
                     CRITERIA[args.criterion], longest, seed, keep_interval=-1)

    def score(job):
        seed, update = job
        save = saves[seed]
        exact(args.data, save, checkpoint_at(save, update), f"update{update}", args.blocks,
              args.criterion)
        return job

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for seed, save in zip(args.seeds, pool.map(run, args.seeds)):
            saves[seed] = save
        for _ in pool.map(score, [(s, p) for p in args.points for s in args.seeds]):
            (args.out / "curve.md").write_text(table(args.out, args.criterion, args.points,
                                                     args.seeds) + "\n")
    print((args.out / "curve.md").read_text())


if __name__ == "__main__":
    main()
