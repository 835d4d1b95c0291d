"""Does one energy setting beat its LM, and CE, on real text? (issue 20's decision run)

For each seed, two runs of transformer_lm_alibi_tiny with replicate.py's settings (blocks
of 128, batch 16, lr 1e-3, warmup 60): one with the energy criterion and head given, one
with plain cross-entropy, the same updates, the same seed (so the same batches). Each is
scored on the first --exact-batches blocks of the valid split token by token
(`energy-lm-eval-elm --per-token`); the energy run with exact Z there. Per seed, paired
over those tokens (mean ± standard error of the mean):

    ELM - LM    the energy run's exact-Z ELM against its own LM (what the energy adds)
    ELM - CE    the energy run's exact-Z ELM against the CE run's LM (what the run gives
                against not using an energy at all)
    LM - CE     the price the energy run's LM paid

and over seeds the mean with the standard error over seeds.

    energy-lm-prepare debian --out debian --workers 1
    OMP_NUM_THREADS=1 python examples/energy_lm/energy_final.py --data debian/data-bin \\
        --out final --head rich --loss nce --weight 2 --candidates 1 --jobs 2

Finished runs and evaluations are not redone; the table (OUT/final.md, OUT/final.json) is
rewritten after every finished seed.
"""

import json
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replicate import CAUSAL, CAUSAL_ARCH, train  # noqa: E402  (same folder)
from run_scoring import (  # noqa: E402
    elm_bits, evaluate, paired, read_records, score_lm, score_whole_split, seed_row,
    study_parser, table)



def run(data: Path, save: Path, criterion: List[str], updates: int, seed: int) -> Path:
    train(data, save, [*CAUSAL, *CAUSAL_ARCH, *criterion, "--max-update", str(updates),
                       "--total-num-update", str(updates), "--save-interval-updates",
                       str(updates), "--log-interval", "10"], seed)
    return save


def curve(data: Path, out: Path, name: str, flags: List[str], updates: int, seed: int,
          every: int, blocks: int) -> List[dict]:
    """ELM - LM with exact Z over updates: the energy run of `seed` trained again, saving a
    checkpoint every `every` updates, each scored on the same blocks as the final model.
    fairseq seeds every update with seed + update, so the retrained run is the same run
    (main checks that its last valid loss is the original's); its last point is the
    original run's records."""
    save = out / f"{name}_seed{seed}_curve"
    train(data, save, [*CAUSAL, *CAUSAL_ARCH, *flags, "--max-update", str(updates),
                       "--total-num-update", str(updates), "--save-interval-updates",
                       str(every), "--log-interval", "10"], seed)
    points = []
    for update in [*range(every, updates, every), updates]:
        if update == updates:
            records = read_records(out / f"{name}_seed{seed}" / "tokens.jsonl")
        else:
            point = save / f"update{update}"
            point.mkdir(exist_ok=True)
            link = point / "checkpoint_best.pt"
            if not link.is_symlink():
                link.symlink_to(f"../checkpoint_1_{update}.pt")
            evaluate(data, point, blocks, whole_split=False)
            records = read_records(point / "tokens.jsonl")
        lm = statistics.mean(r["lm"] for r in records.values())
        points.append(dict(update=update, lm=lm,
                           elm_minus_lm=paired(records, records, elm_bits, lambda r: r["lm"])))
    return points


def curve_table(points: List[dict], seed: int) -> str:
    lines = [f"ELM - LM with exact Z over updates (seed {seed}, the same tokens at every point)",
             "", "| update | LM bits | ELM - LM, paired ± s.e. |", "|---|---|---|"]
    for p in points:
        d = p["elm_minus_lm"]
        lines.append(f"| {p['update']} | {p['lm']:.4f} | {d['mean']:+.4f} ± {d['stderr']:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = study_parser(__doc__)
    parser.add_argument("--head", required=True)
    parser.add_argument("--loss", required=True, help="monarc or nce")
    parser.add_argument("--weight", type=float, required=True)
    parser.add_argument("--candidates", type=int, required=True)
    parser.add_argument("--updates", type=int, default=400, help="each run, from scratch")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--exact-batches", type=int, default=9,
                        help="valid blocks scored token by token (9 blocks: ~1,100 tokens)")
    parser.add_argument("--whole-split", action="store_true",
                        help="also score each energy run's ELM on the whole valid split with "
                             "the labelled top-k + tail estimate (~10 min of one thread each)")
    parser.add_argument("--curve-seed", type=int,
                        help="after the table, train this seed's energy run again saving "
                             "every --curve-every updates and score each checkpoint with "
                             "exact Z on the same blocks: ELM - LM over updates "
                             "(OUT/curve.md; ~15 min of one thread per point)")
    parser.add_argument("--curve-every", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    name = f"{args.head}-{args.loss}-w{args.weight:g}-k{args.candidates}"
    energy_flags = ["--criterion", args.loss, "--energy-head", args.head, "--energy-weight",
                    str(args.weight), "--num-candidates", str(args.candidates)]
    results = args.out / "final.json"
    rows = json.loads(results.read_text()) if results.exists() else {}

    def jobs(seed: int):
        return [(seed, "energy", energy_flags), (seed, "ce", ["--criterion", "cross_entropy"])]

    def one(job):
        seed, kind, flags = job
        save = run(args.data, args.out / f"{name if kind == 'energy' else 'ce'}_seed{seed}",
                   flags, args.updates, seed)
        if kind == "energy":
            evaluate(args.data, save, args.exact_batches, whole_split=False)
        else:
            score_lm(args.data, save, args.exact_batches)
        if args.whole_split:
            score_whole_split(args.data, save)
        return seed, kind, save

    saves: Dict[int, Dict[str, Path]] = {}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for seed, kind, save in pool.map(one, [j for s in args.seeds for j in jobs(s)]):
            saves.setdefault(seed, {})[kind] = save
            if len(saves[seed]) < 2:
                continue
            elm = read_records(saves[seed]["energy"] / "tokens.jsonl")
            ce = read_records(saves[seed]["ce"] / "tokens.jsonl")
            rows[str(seed)] = dict(seed_row(elm, ce, saves[seed]["energy"], saves[seed]["ce"]),
                                   setting=name, updates=args.updates)
            results.write_text(json.dumps(rows, indent=1))
            (args.out / "final.md").write_text(table(rows) + "\n")
    text = table(rows)
    if args.curve_seed is not None:
        points = curve(args.data, args.out, name, energy_flags, args.updates, args.curve_seed,
                       args.curve_every, args.exact_batches)
        again = json.loads((args.out / f"{name}_seed{args.curve_seed}_curve" / "summary.json")
                           .read_text())
        first = json.loads((args.out / f"{name}_seed{args.curve_seed}" / "summary.json")
                           .read_text())
        if again["valid_loss"] != first["valid_loss"]:
            raise SystemExit(f"the retrained run is not the same run: valid {again['valid_loss']} "
                             f"against {first['valid_loss']}")
        (args.out / "curve.json").write_text(json.dumps(points, indent=1))
        (args.out / "curve.md").write_text(curve_table(points, args.curve_seed) + "\n")
        text += "\n\n" + curve_table(points, args.curve_seed)
    print(text)
    return text


if __name__ == "__main__":
    main()
