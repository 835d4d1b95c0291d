"""Issue 37: every paired per-token figure that docs/measurements.md quotes from issue 20's
records (docs/studies/), restated with run_scoring.paired_clustered: the mean
over seeds and tokens, its standard error bootstrapped over evaluation blocks and seeds
(the figure to quote), and its two parts (block-clustered: the test set's error alone;
over seeds: the training randomness alone), with the number of blocks, tokens and seeds.

The records are eval-elm's `--per-token` files (tokens.jsonl: one row per scored token,
id = the evaluation block, position, token, lm, energy, log_z in bits). Nothing is
trained or scored: this reads the committed files and prints one markdown table per
section of docs/measurements.md.

    python examples/energy_lm/restate_figures.py [--data docs/studies]
"""

import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_scoring import Key, elm_bits, paired_clustered, read_records  # noqa: E402

Records = Dict[Key, dict]
Runs = List[Tuple[Records, Records]]
SEEDS = (1, 2, 3)
DATA = Path(__file__).resolve().parents[2] / "docs" / "studies"
# each study's folder under DATA (docs/studies/README.md)
NCE_RUNS = "decision-runs/final"          # the NCE decision runs and the CE runs
MONARC_RUNS = "decision-runs/final_monarc"
KNOWN_ANSWER = "known-answer-real-text"
ADAPTATION = "adaptation"
GRID = "energy-head-grid/second-pass"


def lm(record: dict) -> float:
    return record["lm"]


def load(path: Path) -> Records:
    return read_records(path / "tokens.jsonl")


def subset(records: Records, keys) -> Records:
    """The records of `keys` only (a run scored on more blocks, paired with one scored on
    the first of them)."""
    return {k: records[k] for k in keys}


def compare(runs: Runs, fa: Callable, fb: Callable, resamples: int = 4000) -> dict:
    """paired_clustered over the given (a, b) pairs, one pair per seed; where the tokens
    come from two blocks or fewer (whose standard error has one degree of freedom at most),
    also each block's mean ("per_block", in the records' order)."""
    out = paired_clustered(runs, fa, fb, resamples=resamples)
    if out["blocks"] <= 2:
        out["per_block"] = []
        for block in block_ids(runs[0][0]):
            one = [(subset(a, [k for k in a if k[0] == block]),
                    subset(b, [k for k in b if k[0] == block])) for a, b in runs]
            out["per_block"].append(paired_clustered(one, fa, fb, resamples=2)["mean"])
    return out


def block_ids(records: Records) -> List[int]:
    """The evaluation blocks in the order eval-elm scored them (the file's order)."""
    seen: List[int] = []
    for block, _ in records:
        if block not in seen:
            seen.append(block)
    return seen


Row = Tuple[str, dict]


def render(title: str, rows: List[Row], note: str = "") -> str:
    lines = [f"## {title}", ""]
    if note:
        lines += [note, ""]
    lines += ["| comparison (bits) | mean | ± s.e. (blocks and seeds) | mean / s.e. | "
              "s.e. blocks | s.e. seeds | blocks | tokens | seeds | mean per block (<= 2 blocks) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in rows:
        ratio = r["mean"] / r["stderr"] if r["stderr"] > 0 else float("inf")
        lines.append(f"| {label} | {r['mean']:+.4f} | {r['stderr']:.4f} | {ratio:+.1f} | "
                     f"{r['stderr_blocks']:.4f} | {r['stderr_seeds']:.4f} | {r['blocks']} | "
                     f"{r['tokens']} | {r['seeds']} | "
                     + " / ".join(f"{m:+.4f}" for m in r.get("per_block", [])) + " |")
    return "\n".join(lines)


def seed_rows(label: str, runs: Runs, fa, fb, resamples: int) -> List[Row]:
    """One row per seed, then the pooled row over the seeds."""
    rows = [(f"{label}, seed {s}", compare([run], fa, fb, resamples))
            for s, run in zip(SEEDS, runs)]
    rows.append((f"{label}, {len(runs)} seeds", compare(runs, fa, fb, resamples)))
    return rows


def known_answer_real(data: Path, resamples: int) -> str:
    """The handicap (LM with q mixed half with uniform - the decision run's CE LM, seed 1,
    on the same tokens) and the gain (that LM - its exact-Z ELM), per head, one seed."""
    ce = load(data / NCE_RUNS / "ce_seed1")
    rows, recovered, blocks = [], [], []
    for head in ("linear", "rich", "seed"):
        mixed = load(data / KNOWN_ANSWER / f"{head}-mix0.5_seed1")
        handicap = compare([(mixed, subset(ce, mixed))], lm, lm, resamples)
        gain = compare([(mixed, mixed)], lm, elm_bits, resamples)
        rows += [(f"{head}: handicap, LM (mixed q) - LM (CE)", handicap),
                 (f"{head}: gain, LM (mixed q) - ELM (exact Z)", gain)]
        recovered.append(f"{head} {gain['mean'] / handicap['mean']:.0%}")
        blocks = block_ids(mixed)
    return render("Known answer on real text (known_answer_real/, CE: final/ce_seed1)", rows,
                  f"blocks {blocks} (eval-elm's first, in fairseq's batch order); "
                  f"handicap recovered: {', '.join(recovered)}")


def energy_vs_ce(energy: List[Records], ce: List[Records], resamples: int) -> List[Row]:
    """ELM - its own LM, ELM - the CE run's LM, and the energy run's LM - CE's, per seed
    and over the seeds (the CE runs restricted to the energy runs' tokens)."""
    runs_ce = [(e, subset(c, e)) for e, c in zip(energy, ce)]
    return (seed_rows("ELM - LM (own)", [(e, e) for e in energy], elm_bits, lm, resamples)
            + seed_rows("ELM - CE", runs_ce, elm_bits, lm, resamples)
            + seed_rows("LM - CE", runs_ce, lm, lm, resamples))


def adaptation(data: Path, resamples: int) -> Optional[str]:
    folder = data / ADAPTATION
    if not (folder / "monarc_seed1" / "tokens.jsonl").exists():
        return None
    energy = [load(folder / f"monarc_seed{s}") for s in SEEDS]
    ce = [load(folder / f"cross_entropy_seed{s}") for s in SEEDS]
    return render("Adaptation, exact Z (adaptation/: MonArc vs CE continuations)",
                  energy_vs_ce(energy, ce, resamples),
                  f"blocks {block_ids(energy[0])}")


def decision(data: Path, resamples: int) -> str:
    ce = [load(data / NCE_RUNS / f"ce_seed{s}") for s in SEEDS]
    out = []
    for name, folder, run in (("NCE", NCE_RUNS, "seed-nce-w2-k1"),
                              ("MonArc", MONARC_RUNS, "seed-monarc-w2-k1")):
        energy = [load(data / folder / f"{run}_seed{s}") for s in SEEDS]
        out.append(render(f"Decision runs, {name} ({folder}/{run}_seed1-3 vs final/ce_seed1-3)",
                          energy_vs_ce(energy, ce, resamples),
                          f"blocks {block_ids(energy[0])}"))
    return "\n\n".join(out)


def curve(data: Path, resamples: int) -> Optional[str]:
    """MonArc seed 1 rescored every 100 updates: ELM - LM (one seed), with its LM bits."""
    folder = data / MONARC_RUNS / "seed-monarc-w2-k1_seed1_curve"
    if not folder.exists():
        return None
    rows = []
    for update in (100, 200, 300, 400):
        path = folder / f"update{update}"
        if update == 400:  # the run itself: the curve's rerun ends on the same checkpoint
            path = data / MONARC_RUNS / "seed-monarc-w2-k1_seed1"
        if not (path / "tokens.jsonl").exists():
            continue
        r = load(path)
        mean_lm = sum(v["lm"] for v in r.values()) / len(r)
        rows.append((f"update {update} (LM {mean_lm:.4f}): ELM - LM",
                     compare([(r, r)], elm_bits, lm, resamples)))
    return render("Decision run MonArc seed 1 over updates (final_monarc/..._curve)", rows)


def grid(data: Path, resamples: int) -> Optional[str]:
    """The seed head's weights and candidates (one seed, 100 updates from one base):
    ELM - LM, and each setting's ELM - the ELM of the same loss at weight 2, one candidate."""
    folder = data / GRID
    if not folder.exists():
        return None
    rows = []
    for loss in ("nce", "monarc"):
        default = load(folder / f"seed-{loss}-w2-k1_seed1")
        for w in (1, 2, 4):
            for k in (1, 4):
                name = f"seed-{loss}-w{w}-k{k}"
                r = load(folder / f"{name}_seed1")
                rows.append((f"{name}: ELM - LM", compare([(r, r)], elm_bits, lm, resamples)))
                if (w, k) != (2, 1):
                    rows.append((f"{name}: ELM - ELM at w2-k1",
                                 compare([(r, default)], elm_bits, elm_bits, resamples)))
    return render("The seed head's weight and candidates (grid-seed/, one seed)", rows,
                  f"blocks {block_ids(default)}")


def batch(data: Path, resamples: int) -> Optional[str]:
    folder = data / GRID
    names = {"16 x 128, 100 updates": "seed-nce-w2-k1", "64 x 128, 100 updates": "seed-nce-w2-k1-uf4",
             "16 x 128, 400 updates": "seed-nce-w2-k1-u400"}
    if not all((folder / f"{n}_seed1" / "tokens.jsonl").exists() for n in names.values()):
        return None
    runs = {label: load(folder / f"{n}_seed1") for label, n in names.items()}
    rows = [(f"{label}: ELM - LM", compare([(r, r)], elm_bits, lm, resamples))
            for label, r in runs.items()]
    long, wide = runs["16 x 128, 400 updates"], runs["64 x 128, 100 updates"]
    rows += [("400 updates - batch x4: LM - LM", compare([(long, wide)], lm, lm, resamples)),
             ("400 updates - batch x4: ELM - ELM", compare([(long, wide)], elm_bits, elm_bits,
                                                           resamples))]
    return render("Batch size (grid-seed/, NCE, one seed)", rows)


def elm_estimate(record: dict) -> float:
    """The ELM's NLL with eval-elm's top-8 + 8-sample estimate of log Z instead of the exact."""
    return record["lm"] + record["energy"] + record["log_z_est"]


def estimate(data: Path, resamples: int) -> str:
    """eval-elm's log Z estimate against exact Z on the same tokens, for the seed head
    (the default): ELM estimate - ELM exact (negative: the estimate reads optimistic)."""
    rows = []
    for label, folder, run in (("decision NCE", NCE_RUNS, "seed-nce-w2-k1_seed"),
                               ("decision MonArc", MONARC_RUNS, "seed-monarc-w2-k1_seed"),
                               ("adaptation MonArc", ADAPTATION, "monarc_seed")):
        runs = [load(data / folder / f"{run}{s}") for s in SEEDS]
        rows.append((f"{label}: ELM estimate - ELM exact, 3 seeds",
                     compare([(r, r) for r in runs], elm_estimate, elm_bits, resamples)))
    return render("The log Z estimate against exact Z, seed head (top-8 + 8 samples)", rows)


SECTIONS = (known_answer_real, adaptation, decision, curve, grid, batch, estimate)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--resamples", type=int, default=4000)
    args = parser.parse_args(argv)
    print(f"Paired per-token figures restated with run_scoring.paired_clustered "
          f"({args.resamples} bootstrap resamples of blocks and seeds, rng seed 0); bits.")
    for section in SECTIONS:
        text = section(args.data, args.resamples)
        if text is None:
            print(f"\n## {section.__name__}: no records under {args.data}")
        else:
            print("\n" + text)


if __name__ == "__main__":
    main()
