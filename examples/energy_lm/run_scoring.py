"""Scoring a finished run with energy-lm-eval-elm, and pairing two runs token by token.

The study scripts (energy_final.py, energy_study.py, adapt.py, known_answer_real.py) score
each run's checkpoint_best.pt in its own one-thread process and cache what it wrote
beside the checkpoint, so an interrupted study resumes; `--per-token` records pair two
runs scored on the same tokens (mean and standard error of the per-token difference).
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

Key = Tuple[int, int]  # (example id, position): one scored token


def study_parser(doc: str) -> argparse.ArgumentParser:
    """A study script's parser: its docstring as the help, and the data-bin and output
    folder every study takes."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    return parser


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


def score_lm(data: Path, save: Path, blocks: int) -> Path:
    """Per-token LM records of a run on the first `blocks` valid blocks (no exact Z:
    a CE run's energy head is 0)."""
    records = save / "tokens.jsonl"
    if not records.exists():
        run_eval_elm(data, save, ["--batch-size", "1", "--max-batches", str(blocks),
                                  "--per-token", str(records)], "lm-eval.txt")
    return records


def score_whole_split(data: Path, save: Path) -> dict:
    """eval-elm's labelled estimate on the whole valid split (no exact Z)."""
    cached = save / "elm-whole.json"
    if not cached.exists():
        run_eval_elm(data, save, ["--batch-size", "8", "--json", str(cached.with_suffix(".tmp"))],
                     "elm-whole.txt")
        cached.with_suffix(".tmp").rename(cached)
    return json.loads(cached.read_text())


def read_records(path: Path) -> Dict[Key, dict]:
    return {(r["id"], r["position"]): r for r in map(json.loads, path.read_text().splitlines())}


def elm_bits(record: dict) -> float:
    """The ELM's NLL of the token in bits: -log2 q + (E + log Z) / ln 2."""
    return record["lm"] + record["energy"] + record["log_z"]


def paired(a: Dict[Key, dict], b: Dict[Key, dict], fa, fb) -> dict:
    """Mean and standard error of fa(a) - fb(b) over the tokens both score (which must
    be the same tokens)."""
    keys = sorted(a)
    if sorted(b) != keys or any(a[k]["token"] != b[k]["token"] for k in keys):
        raise ValueError("the two runs were not scored on the same tokens")
    diffs = [fa(a[k]) - fb(b[k]) for k in keys]
    return {"mean": statistics.mean(diffs),
            "stderr": statistics.stdev(diffs) / math.sqrt(len(diffs)), "tokens": len(diffs)}


def paired_clustered(runs: List[Tuple[Dict[Key, dict], Dict[Key, dict]]], fa, fb,
                     resamples: int = 4000, rng_seed: int = 0) -> dict:
    """The one paired comparison of the studies (issue 37): the mean over seeds and tokens of
    fa(a) - fb(b), where runs holds one (a, b) pair of per-token records per seed, all
    scored on the same tokens. Tokens of one evaluation block (one example id) are not
    independent, and every seed is scored on the same blocks, so the test set's sampling
    error is shared by the seeds: the standard error counts both.

      stderr         bootstrap: blocks and seeds resampled with replacement, independently
                     (rng_seed fixed), the token-weighted mean recomputed (the figure to quote)
      stderr_blocks  the seeds' mean difference per block, clustered by block (the test
                     set's error alone)
      stderr_seeds   the spread of the per-seed means (training randomness alone; 0 for one seed)
    """
    import random

    blocks: Dict[int, int] = {}
    sums = []  # per seed: {block: sum of differences}
    for a, b in runs:
        keys = sorted(a)
        if sorted(b) != keys or any(a[k]["token"] != b[k]["token"] for k in keys):
            raise ValueError("the two runs were not scored on the same tokens")
        per_block: Dict[int, float] = {}
        counts: Dict[int, int] = {}
        for k in keys:
            per_block[k[0]] = per_block.get(k[0], 0.0) + fa(a[k]) - fb(b[k])
            counts[k[0]] = counts.get(k[0], 0) + 1
        if blocks and counts != blocks:
            raise ValueError("the seeds were not scored on the same tokens")
        blocks = counts
        sums.append(per_block)
    ids, seeds = sorted(blocks), len(sums)
    tokens = sum(blocks.values())
    mean_block = {i: sum(s[i] for s in sums) / seeds for i in ids}
    mean = sum(mean_block.values()) / tokens
    n = len(ids)
    var_blocks = n / max(n - 1, 1) * sum((mean_block[i] - mean * blocks[i]) ** 2
                                         for i in ids) / tokens ** 2
    seed_means = [sum(s.values()) / tokens for s in sums]
    stderr_seeds = statistics.stdev(seed_means) / math.sqrt(seeds) if seeds > 1 else 0.0
    rng = random.Random(rng_seed)
    draws = []
    for _ in range(resamples):
        pick_b = [rng.choice(ids) for _ in ids]
        pick_s = [rng.randrange(seeds) for _ in range(seeds)]
        total = sum(sums[s][i] for s in pick_s for i in pick_b)
        draws.append(total / (seeds * sum(blocks[i] for i in pick_b)))
    return {"mean": mean, "stderr": statistics.stdev(draws), "stderr_blocks": math.sqrt(var_blocks),
            "stderr_seeds": stderr_seeds, "tokens": tokens, "blocks": n, "seeds": seeds}


def seed_row(elm: Dict[Key, dict], ce: Dict[Key, dict], elm_save: Path, ce_save: Path) -> dict:
    """One seed's paired figures: the energy run's exact-Z ELM against its own LM and
    against the CE run's LM, and the price its LM paid; with the whole-split estimates
    where they were scored (elm-whole.json beside each checkpoint)."""
    row = {"elm_minus_lm": paired(elm, elm, elm_bits, lambda r: r["lm"]),
           "elm_minus_ce": paired(elm, ce, elm_bits, lambda r: r["lm"]),
           "lm_minus_ce": paired(elm, ce, lambda r: r["lm"], lambda r: r["lm"])}
    for save, key in ((elm_save, "whole"), (ce_save, "whole_ce")):
        if (save / "elm-whole.json").exists():
            row[key] = json.loads((save / "elm-whole.json").read_text())
    return row


def over_seeds(values: List[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:+.4f} (one seed)"
    return f"{statistics.mean(values):+.4f} ± {statistics.stdev(values) / math.sqrt(len(values)):.4f}"


def table(rows: Dict[str, dict]) -> str:
    cols = ("elm_minus_lm", "elm_minus_ce", "lm_minus_ce")
    lines = ["| seed | tokens | ELM - LM (own), paired ± s.e. | ELM - CE | LM - CE | "
             "whole split: ELM estimate - LM | whole split: ELM estimate - CE |",
             "|---|---|---|---|---|---|---|"]

    def whole(r: dict, against: str):
        """The whole split's ELM estimate minus the run's own LM ('lm') or the CE run's
        ('ce'): (value, its standard error) or None where not scored."""
        w, ce = r.get("whole"), r.get("whole_ce")
        if w is None or (against == "ce" and ce is None):
            return None
        return w["elm_est"] - (w["lm"] if against == "lm" else ce["lm"]), w["elm_est_stderr"]

    def cell(value) -> str:
        return "" if value is None else f"{value[0]:+.4f} ± {value[1]:.4f} (estimate)"

    for seed, r in sorted(rows.items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {seed} | {r['elm_minus_lm']['tokens']} | " + " | ".join(
            f"{r[c]['mean']:+.4f} ± {r[c]['stderr']:.4f}" for c in cols) +
            f" | {cell(whole(r, 'lm'))} | {cell(whole(r, 'ce'))} |")
    spread = [over_seeds([r[c]["mean"] for r in rows.values()]) for c in cols]
    for against in ("lm", "ce"):
        values = [whole(r, against) for r in rows.values()]
        spread.append(over_seeds([v[0] for v in values]) if all(values) else "")
    lines.append("| mean ± s.e. over seeds | | " + " | ".join(spread) + " |")
    if any(r.get("whole") for r in rows.values()):
        tokens = next(r["whole"]["tokens"] for r in rows.values() if r.get("whole"))
        lines.append(f"\nWhole split: {tokens} tokens, log Z by eval-elm's top-8 + tail estimate "
                     f"(K = 8) with its standard error.")
    return "\n".join(lines)
