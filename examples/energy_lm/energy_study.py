"""Which energy head, loss, weight and candidate count learn on real text (issue 20).

A base causal LM (transformer_lm_alibi_tiny, replicate.py's settings: blocks of 128,
batch 16) is trained from scratch with MonArc and the default linear head; each setting
of the grid then continues it for --updates updates with its head (started afresh,
E = 0), loss, weight and candidate count. Every continued model is scored by
`energy-lm-eval-elm` on a fixed subset (the first --exact-batches blocks of the valid
split): the LM and the ELM with exact Z, token by token. The table gives, per setting,
the paired ELM - LM with its standard error over those tokens, the last energy_gap, and the
stability of the first 50 updates (the largest z and the largest rise of the LM loss
over its first logged value).

    energy-lm-prepare debian --out debian --workers 2
    python examples/energy_lm/energy_study.py --data debian/data-bin --out study --jobs 2

Finished runs and evaluations are not redone (an interrupted study resumes); --jobs 2
runs two settings side by side, one thread each. The table is rewritten after every
finished setting.
"""

import itertools
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_scoring import (  # noqa: E402  (same folder)
    elm_bits, evaluate, paired, read_records, study_parser)
from replicate import CAUSAL, CAUSAL_ARCH, RESET, log_records, train  # noqa: E402

Setting = Tuple[str, str, float, int, int]  # head, loss, weight, candidates, update-freq


def base_run(data: Path, out: Path, updates: int, head: str) -> Path:
    train(data, out / "base", [*CAUSAL, *CAUSAL_ARCH, "--criterion", "monarc",
                               "--energy-head", head,
                               "--max-update", str(updates), "--total-num-update", str(updates),
                               "--save-interval-updates", str(updates)], seed=1)
    return out / "base" / "checkpoint_best.pt"


def run_name(setting: Setting, updates: int = 100) -> str:
    """head-loss-wW-kK, then -ufN for a batch of N x 16 blocks and -uU for a length other
    than the first pass's 100 updates (so the first pass's records keep their names)."""
    head, loss, weight, k, update_freq = setting
    name = f"{head}-{loss}-w{weight:g}-k{k}"
    if update_freq != 1:
        name += f"-uf{update_freq}"
    if updates != 100:
        name += f"-u{updates}"
    return name


def continue_run(data: Path, out: Path, base: Path, setting: Setting, updates: int,
                 lr: str, seed: int) -> Path:
    head, loss, weight, k, update_freq = setting
    save = out / f"{run_name(setting, updates)}_seed{seed}"
    train(data, save, [*CAUSAL, *CAUSAL_ARCH, "--criterion", loss, "--energy-head", head,
                       "--energy-weight", str(weight), "--num-candidates", str(k),
                       "--update-freq", str(update_freq),
                       "--restore-file", str(base), *RESET, "--lr", lr,
                       "--warmup-updates", "0", "--max-update", str(updates),
                       "--total-num-update", str(updates), "--save-interval-updates",
                       str(updates), "--log-interval", "5"], seed)
    return save


def train_curve(log: Path) -> List[dict]:
    """The train_inner records of a json-format fairseq log (every 5 updates)."""
    keep = ("num_updates", "lm_loss", "z", "energy_gap", "energy_acc", "ebm_loss", "gnorm")
    return [{k: float(v) for k, v in rec.items() if k in keep} for rec in log_records(log)
            if "lm_loss" in rec and "num_updates" in rec]


def summarise(save: Path, result: dict) -> dict:
    curve = train_curve(save / "train.log")
    first = [r for r in curve if r["num_updates"] <= 50]
    start = first[0]["lm_loss"] if first else float("nan")
    return dict(
        lm_exact=result["lm_on_exact"], elm_exact=result["elm_exact"],
        gain_exact=result["elm_minus_lm_exact"],
        gain_stderr=result["elm_minus_lm_exact_stderr"], exact_tokens=result["exact_tokens"],
        elm_est_on_exact=result["elm_est_on_exact"],
        energy_gap=curve[-1].get("energy_gap") if curve else None,
        z_max_50=max((r.get("z", 1.0) for r in first), default=None),
        lm_rise_50=max((r["lm_loss"] - start for r in first), default=None),
        seconds=json.loads((save / "summary.json").read_text())["seconds"],
        gap_curve=[(r["num_updates"], r.get("energy_gap")) for r in curve])


REFERENCE = "w2-k1"  # the defaults' weight and candidate count: the settings' yardstick


def versus_reference(out: Path, name: str, seed: int) -> Optional[dict]:
    """The setting's exact-Z ELM minus that of the same head and loss at the defaults'
    weight and candidates, paired token by token (None for the reference itself, or
    before it is scored): the grid's settings compared with each other, not only each
    with its own LM."""
    head, loss = name.split("-")[:2]
    reference = f"{head}-{loss}-{REFERENCE}"
    tokens = [out / f"{run}_seed{seed}" / "tokens.jsonl" for run in (name, reference)]
    if name == reference or not all(path.exists() for path in tokens):
        return None
    return paired(*map(read_records, tokens), elm_bits, elm_bits)


def table(rows: Dict[str, dict], out: Path, seed: int) -> str:
    lines = ["| setting | LM bits (exact subset) | ELM bits, exact Z | ELM - LM, paired ± s.e. | "
             f"ELM - ELM at {REFERENCE}, paired ± s.e. | "
             "last energy_gap | max z, updates 1-50 | max LM rise, 1-50 (bits) | train s | "
             "ELM - LM per CPU-hour |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in sorted(rows.items(), key=lambda kv: kv[1]["gain_exact"]):
        per_hour = r["gain_exact"] / (r["seconds"] / 3600)
        versus = versus_reference(out, name, seed)
        versus_cell = "" if versus is None else f"{versus['mean']:+.4f} ± {versus['stderr']:.4f}"
        lines.append(f"| {name} | {r['lm_exact']:.4f} | {r['elm_exact']:.4f} | "
                     f"{r['gain_exact']:+.4f} ± {r['gain_stderr']:.4f} | {versus_cell} | "
                     f"{r['energy_gap']:+.4f} | {r['z_max_50']:.3f} | "
                     f"{r['lm_rise_50']:+.3f} | {r['seconds']:.0f} | {per_hour:+.3f} |")
    return "\n".join(lines)


def record_row(results: Path, name: str, row: dict) -> Dict[str, dict]:
    """Add one setting's row to results.json and return every row there. The file is read
    again first: two studies may share one --out (the batch-size arm's two lengths run
    side by side), and neither may drop the other's rows."""
    rows = json.loads(results.read_text()) if results.exists() else {}
    rows[name] = row
    results.write_text(json.dumps(rows, indent=1))
    return rows


def main(argv=None) -> str:
    parser = study_parser(__doc__)
    parser.add_argument("--base-updates", type=int, default=300)
    parser.add_argument("--base-head", default="linear",
                        help="the base run's energy head (linear, as in the first pass: it learns "
                             "nothing against a plain proposal, so every setting's head "
                             "starts afresh, or near zero for linear)")
    parser.add_argument("--updates", type=int, default=100, help="each continuation")
    parser.add_argument("--lr", default="1e-3", help="continuations' peak lr (decays to 0)")
    parser.add_argument("--heads", nargs="+", default=["linear", "rich", "seed"])
    parser.add_argument("--losses", nargs="+", default=["monarc", "nce"])
    parser.add_argument("--weights", type=float, nargs="+", default=[2.0])
    parser.add_argument("--candidates", type=int, nargs="+", default=[1])
    parser.add_argument("--update-freqs", type=int, nargs="+", default=[1],
                        help="batches of N x 16 blocks (fairseq's --update-freq): the batch-size arm")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--exact-batches", type=int, default=2,
                        help="blocks of the valid split that get exact Z")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    base = base_run(args.data, args.out, args.base_updates, args.base_head)
    grid = list(itertools.product(args.heads, args.losses, args.weights, args.candidates,
                                  args.update_freqs))
    results = args.out / "results.json"

    def run(setting: Setting):
        save = continue_run(args.data, args.out, base, setting, args.updates, args.lr, args.seed)
        scores = evaluate(args.data, save, args.exact_batches, whole_split=False)
        return run_name(setting, args.updates), summarise(save, scores)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for name, row in pool.map(run, grid):
            rows = record_row(results, name, row)
            (args.out / "table.md").write_text(table(rows, args.out, args.seed) + "\n")
    text = table(json.loads(results.read_text()), args.out, args.seed)
    print(text)
    return text


if __name__ == "__main__":
    main()
