"""The dev scores of GLUE runs as one table, in the RoBERTa paper's column order.

    python -m energy_lm.glue.collect runs                       # one row: every run in runs/
    python -m energy_lm.glue.collect runs/pretrained runs/random --names pretrained random

Each ROW argument is a folder of runs (one sub-folder per run, as
`energy_lm.glue.finetune --out` makes them) or a single run. A run's task comes from its
run.json (or the folder's name). Its dev score is read from train.log, fairseq's
validation records (json or simple log format): the validation with the best value of
the task's checkpoint metric (the YAML's `best_checkpoint_metric`, first one on ties),
i.e. the checkpoint_best.pt evaluation. Without validation records in the log the
score is the `best` value that fairseq stores in checkpoint_last.pt (tasks scored by
one metric only). Several runs of one task in a row (seeds): the median, as the
RoBERTa paper reports.

Cells: MNLI matched/mismatched accuracy, QNLI, QQP F1/accuracy, RTE, SST-2 accuracy,
MRPC F1/accuracy, CoLA Matthews correlation, STS-B Pearson/Spearman (all x 100); '-' for
a task not run. A task's score is the mean of its cell's numbers and Avg the mean of
the tasks run (the GLUE convention; a footnote says when fewer than eight).
"""

import argparse
import json
import logging
import math
import re
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from energy_lm.cli.errors import run_reporting_errors
from energy_lm.glue.tasks import TABLE_ORDER, GlueError, GlueTask, get_task

logger = logging.getLogger("energy_lm.glue.collect")

Scores = Dict[str, Dict[str, float]]  # valid split -> metric -> value
_SIMPLE_VALID = re.compile(r"valid on '([^']+)' subset \| (.*)$")
_JSON_VALID = re.compile(r"(valid\d*)_loss")  # fairseq's json log prefixes keys with the split


def _number(value) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def validation_records(log: Path) -> List[Tuple[str, Dict[str, float]]]:
    """(split, {metric: value}) of every validation in a fairseq log, in order."""
    records = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        simple = _SIMPLE_VALID.search(line)
        if simple:
            fields = (part.strip().rsplit(" ", 1) for part in simple.group(2).split(" | "))
            values = {f[0]: _number(f[1]) for f in fields if len(f) == 2}
            records.append((simple.group(1), {k: v for k, v in values.items() if v is not None}))
            continue
        brace = line.find("{")
        if brace < 0 or "_loss" not in line:
            continue
        try:
            stats = json.loads(line[brace:])
        except json.JSONDecodeError:
            continue
        splits = [m.group(1) for m in map(_JSON_VALID.fullmatch, stats) if m] \
            if isinstance(stats, dict) else []
        if not splits:
            continue
        split = splits[0]
        values = {k[len(split) + 1:]: _number(v) for k, v in stats.items() if k.startswith(split + "_")}
        records.append((split, {k: v for k, v in values.items() if v is not None}))
    return records


def best_scores(task: GlueTask, records: Sequence[Tuple[str, Dict[str, float]]]) -> Optional[Scores]:
    """The task's metrics at its best validation (by task.best_metric on `valid`)."""
    points: List[Scores] = []  # one per validation round: split -> values
    for split, values in records:
        if split == "valid" or not points or split in points[-1]:
            points.append({})
        points[-1][split] = values
    best = None
    for point in points:
        value = point.get("valid", {}).get(task.best_metric)
        if value is not None and not math.isnan(value) and (best is None or value > best[0]):
            best = (value, point)
    if best is None:
        return None
    return {split: {m: best[1][split][m] for m in task.metrics if m in best[1].get(split, {})}
            for split in task.valid_splits if split in best[1]}


def _checkpoint_scores(task: GlueTask, run_dir: Path) -> Optional[Scores]:
    if task.metrics != (task.best_metric,) or len(task.valid_splits) != 1:
        return None
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        if (run_dir / name).is_file():
            from fairseq.checkpoint_utils import load_checkpoint_to_cpu

            best = load_checkpoint_to_cpu(str(run_dir / name)).get("extra_state", {}).get("best")
            if best is not None:
                return {"valid": {task.best_metric: float(best)}}
    return None


def run_task(run_dir: Path) -> GlueTask:
    meta = run_dir / "run.json"
    if meta.is_file():
        return get_task(json.loads(meta.read_text(encoding="utf-8"))["task"])
    return get_task(run_dir.name)


def read_run(run_dir: Path) -> Tuple[GlueTask, Optional[Scores]]:
    """A run's task and dev scores (None when the run has none)."""
    task = run_task(run_dir)
    log = run_dir / "train.log"
    scores = best_scores(task, validation_records(log)) if log.is_file() else None
    if not scores:
        scores = _checkpoint_scores(task, run_dir)
    if not scores:
        logger.warning("%s: no dev scores (no validation in train.log, no checkpoint)", run_dir)
    return task, scores


def cell_numbers(task: GlueTask, scores: Scores) -> List[float]:
    """The numbers a cell shows: MNLI m/mm; F1/acc; Pearson/Spearman; else the one metric."""
    if len(task.valid_splits) > 1:
        return [scores[s][task.metrics[0]] for s in task.valid_splits if s in scores]
    return [scores["valid"][m] for m in task.metrics if m in scores.get("valid", {})]


def row_cells(runs: Sequence[Tuple[GlueTask, Optional[Scores]]]) -> Dict[str, List[float]]:
    """task name -> the cell's numbers (median over the task's runs, per number)."""
    per_task: Dict[str, List[List[float]]] = {}
    for task, scores in runs:
        if scores:
            numbers = cell_numbers(task, scores)
            if numbers:
                per_task.setdefault(task.name, []).append(numbers)
    return {name: [statistics.median(col) for col in zip(*lists)] for name, lists in per_task.items()}


def format_table(rows: Sequence[Tuple[str, Sequence[Tuple[GlueTask, Optional[Scores]]]]]) -> str:
    """Markdown: one line per (name, runs)."""
    lines = ["| model | " + " | ".join(TABLE_ORDER) + " | Avg |",
             "|---" * (len(TABLE_ORDER) + 2) + "|"]
    partial = set()
    for name, runs in rows:
        cells = row_cells(runs)
        shown = ["/".join(f"{x:.1f}" for x in cells[t]) if t in cells else "-" for t in TABLE_ORDER]
        task_scores = [statistics.fmean(cells[t]) for t in TABLE_ORDER if t in cells]
        avg = f"{statistics.fmean(task_scores):.1f}" if task_scores else "-"
        if 0 < len(task_scores) < len(TABLE_ORDER):
            partial.add(len(task_scores))
        lines.append(f"| {name} | " + " | ".join(shown) + f" | {avg} |")
    if partial:
        lines.append("")
        lines.append("Avg: over the tasks run (" + ", ".join(map(str, sorted(partial))) + f" of "
                     f"{len(TABLE_ORDER)}). MNLI m/mm, MRPC and QQP F1/acc, STS-B Pearson/Spearman.")
    return "\n".join(lines)


def find_runs(folder: Path) -> List[Path]:
    """folder itself if it is a run, else its sub-folders that are runs."""
    def is_run(path: Path) -> bool:
        return (path / "run.json").is_file() or (path / "train.log").is_file()

    if is_run(folder):
        return [folder]
    runs = sorted(p for p in folder.iterdir() if p.is_dir() and is_run(p)) if folder.is_dir() else []
    if not runs:
        raise GlueError(f"{folder}: no GLUE runs (folders with run.json or train.log)")
    return runs


def main(argv: Optional[List[str]] = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m energy_lm.glue.collect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", type=Path, nargs="+", help="a folder of runs (or one run) per row")
    parser.add_argument("--names", nargs="+", help="row names (default: the folders' names)")
    args = parser.parse_args(argv)
    names = args.names or [path.name for path in args.rows]
    if len(names) != len(args.rows):
        raise GlueError(f"{len(args.rows)} rows but {len(names)} names")
    rows = [(name, [read_run(run) for run in find_runs(path)]) for name, path in zip(names, args.rows)]
    return format_table(rows)


def cli_main() -> None:
    logging.basicConfig(format="%(levelname)s | %(name)s | %(message)s", level=logging.INFO)
    print(run_reporting_errors("energy_lm.glue.collect", main, GlueError))


if __name__ == "__main__":
    cli_main()
