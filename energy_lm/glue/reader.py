"""Read one GLUE file into examples, checking it against the task's layout
(`energy_lm.glue.tasks`).

Rows are split on tabs only (GLUE's files are not quoted: MNLI's and QQP's texts hold
bare `"`), lines on `\\n` only (a stray `\\r` inside a text stays there). Every problem
is a `GlueError` whose message is one line naming the file and, for a row, its line
number: a missing folder or file, a header that is not the task's, a row with the wrong
number of fields, a label outside the task's label set.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from energy_lm.glue.tasks import STSB_MAX_SCORE, GlueError, GlueTask, Layout

logger = logging.getLogger("energy_lm.glue")


@dataclass(frozen=True)
class Example:
    texts: Tuple[str, ...]  # one text, or a pair
    label: Optional[str]    # as written in the file; None in test files


def task_folder(glue_dir: Path, task: GlueTask) -> Path:
    folder = Path(glue_dir) / task.name
    if not folder.is_dir():
        raise GlueError(f"{folder}: no such folder (GLUE's layout is GLUE_DIR/{task.name}/"
                        f"{task.files['train']})")
    return folder


def split_file(glue_dir: Path, task: GlueTask, split: str) -> Path:
    path = task_folder(glue_dir, task) / task.files[split]
    if not path.is_file():
        raise GlueError(f"{path}: no such file ({task.name} needs "
                        f"{', '.join(task.files[s] for s in task.files if not s.startswith('test'))})")
    return path


def _lines(path: Path) -> Iterator[Tuple[int, str]]:
    # utf-8-sig: MRPC's files start with a byte-order mark
    with open(path, encoding="utf-8-sig", newline="\n") as stream:
        try:
            for lineno, line in enumerate(stream, 1):
                yield lineno, line.rstrip("\n").removesuffix("\r")
        except UnicodeDecodeError as err:
            raise GlueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start} "
                            f"of a block)") from None


def _check_header(path: Path, header: List[str], layout: Layout) -> None:
    columns = layout.texts + ((layout.label,) if layout.label else ())
    for column in columns:
        try:
            found = header[column.index]
        except IndexError:
            found = None
        if found != column.name:
            raise GlueError(f"{path}: header column {column.index} is {found!r}, expected "
                            f"{column.name!r} (header: {chr(9).join(header)!r})")


def _label(task: GlueTask, value: str, where: str) -> str:
    if task.regression:
        try:
            score = float(value)
        except ValueError:
            raise GlueError(f"{where}: score {value!r} is not a number") from None
        if not 0.0 <= score <= STSB_MAX_SCORE:
            raise GlueError(f"{where}: score {score} is outside 0..{STSB_MAX_SCORE:g}")
        return value
    if value not in task.labels:
        raise GlueError(f"{where}: label {value!r} is not one of {', '.join(task.labels)}")
    return value


def read_split(glue_dir: Path, task: GlueTask, split: str,
               skip_malformed: bool = False) -> List[Example]:
    """The examples of one split (`train`, `valid`, `valid1`, `test`, ...) of a task."""
    path = split_file(glue_dir, task, split)
    layout = task.layout(split)
    lines = _lines(path)
    width = layout.width
    if layout.header:
        first = next(lines, None)
        if first is None:
            raise GlueError(f"{path}: empty file (expected a header)")
        header = first[1].split("\t")
        _check_header(path, header, layout)
        width = len(header)
    examples, skipped = [], 0
    for lineno, line in lines:
        if not line.strip():
            continue
        fields = line.split("\t")
        where = f"{path}:{lineno}"
        if len(fields) != width:
            if skip_malformed:
                skipped += 1
                continue
            raise GlueError(f"{where}: malformed row, {len(fields)} tab-separated fields where "
                            f"the file has {width} (--skip-malformed drops such rows)")
        label = None
        if layout.label is not None:
            label = _label(task, fields[layout.label.index].strip(), where)
        examples.append(Example(tuple(fields[c.index].strip() for c in layout.texts), label))
    if skipped:
        logger.warning("%s: skipped %d malformed rows", path, skipped)
    if not examples:
        raise GlueError(f"{path}: no examples")
    return examples
