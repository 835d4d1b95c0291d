"""The eight GLUE tasks, as data: where each file is, how its rows are laid out, its
labels and the dev metrics the RoBERTa paper reports.

The layout is that of the GLUE benchmark's own download (`download_glue_data.py`): one
folder per task, train.tsv / dev.tsv / test.tsv (MNLI: dev_matched, dev_mismatched,
test_matched, test_mismatched), tab-separated, no quoting. Columns read (0-based), by
their header names in train/dev and in test:

    CoLA   no header: 3 sentence, label 1 (0/1)       test: 1 sentence
    SST-2  0 sentence, 1 label (0/1)                  test: 1 sentence
    MRPC   3 #1 String, 4 #2 String, 0 Quality (0/1)  test: 3, 4
    STS-B  7 sentence1, 8 sentence2, 9 score (0..5)   test: 7, 8
    QQP    3 question1, 4 question2, 5 is_duplicate   test: 1, 2
    MNLI   8 sentence1, 9 sentence2, last gold_label  test: 8, 9
    QNLI   1 question, 2 sentence, 3 label            test: 1, 2
    RTE    1 sentence1, 2 sentence2, 3 label          test: 1, 2

CoLA's train and dev files have no header (source, label, original judgement, sentence);
every test file has one and no label. MRPC's headers start with a byte-order mark
(read as UTF-8 with BOM). MNLI's train rows have 12 columns and its dev rows 16 (five
annotator labels before `gold_label`), so its label is addressed from the end.

fairseq's split names: dev -> `valid`; MNLI's dev_mismatched -> `valid1` and
test_mismatched -> `test1` (fairseq-preprocess's second `--validpref` / `--testpref`).
"""

from dataclasses import dataclass
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class Column:
    index: int  # position in the row; negative counts from the end
    name: str   # its name in the file's header (documentation where there is none)


@dataclass(frozen=True)
class Layout:
    """The rows of one kind of file (labelled train/dev, or unlabelled test)."""
    header: bool
    texts: Tuple[Column, ...]
    label: Optional[Column] = None
    width: Optional[int] = None  # columns per row where there is no header to say


@dataclass(frozen=True)
class GlueTask:
    name: str
    config: str                   # energy_lm/configs/glue/<config>.yaml
    files: Dict[str, str]         # fairseq split name -> file name in the task folder
    labelled: Layout              # train and dev files
    unlabelled: Layout            # test files
    labels: Tuple[str, ...] = ()  # class labels in class-index order; () = regression
    # what the dev-score table shows, as fairseq's sentence_prediction criterion logs it
    metrics: Tuple[str, ...] = ("accuracy",)
    best_metric: str = "accuracy"  # checkpoint.best_checkpoint_metric of the YAML

    @property
    def regression(self) -> bool:
        return not self.labels

    @property
    def num_classes(self) -> int:
        return len(self.labels) or 1

    @property
    def pair(self) -> bool:
        return len(self.labelled.texts) == 2

    @property
    def valid_splits(self) -> Tuple[str, ...]:
        return tuple(split for split in self.files if split.startswith("valid"))

    def layout(self, split: str) -> Layout:
        return self.unlabelled if split.startswith("test") else self.labelled


def _col(index: int, name: str) -> Column:
    return Column(index, name)


_STANDARD_FILES = {"train": "train.tsv", "valid": "dev.tsv", "test": "test.tsv"}
_BINARY = ("0", "1")
_ENTAILMENT = ("entailment", "not_entailment")

TASKS: Dict[str, GlueTask] = {task.name: task for task in [
    GlueTask(
        "CoLA", "cola", _STANDARD_FILES,
        labelled=Layout(False, (_col(3, "sentence"),), _col(1, "label"), width=4),
        unlabelled=Layout(True, (_col(1, "sentence"),)),
        labels=_BINARY, metrics=("mcc",), best_metric="mcc"),
    GlueTask(
        "SST-2", "sst_2", _STANDARD_FILES,
        labelled=Layout(True, (_col(0, "sentence"),), _col(1, "label")),
        unlabelled=Layout(True, (_col(1, "sentence"),)),
        labels=_BINARY),
    GlueTask(
        "MRPC", "mrpc", _STANDARD_FILES,
        labelled=Layout(True, (_col(3, "#1 String"), _col(4, "#2 String")), _col(0, "Quality")),
        unlabelled=Layout(True, (_col(3, "#1 String"), _col(4, "#2 String"))),
        labels=_BINARY, metrics=("f1", "accuracy"), best_metric="acc_and_f1"),
    GlueTask(
        "STS-B", "sts_b", _STANDARD_FILES,
        labelled=Layout(True, (_col(7, "sentence1"), _col(8, "sentence2")), _col(9, "score")),
        unlabelled=Layout(True, (_col(7, "sentence1"), _col(8, "sentence2"))),
        metrics=("pearson", "spearman"), best_metric="pearson_and_spearman"),
    GlueTask(
        "QQP", "qqp", _STANDARD_FILES,
        labelled=Layout(True, (_col(3, "question1"), _col(4, "question2")), _col(5, "is_duplicate")),
        unlabelled=Layout(True, (_col(1, "question1"), _col(2, "question2"))),
        labels=_BINARY, metrics=("f1", "accuracy"), best_metric="acc_and_f1"),
    GlueTask(
        "MNLI", "mnli",
        {"train": "train.tsv", "valid": "dev_matched.tsv", "valid1": "dev_mismatched.tsv",
         "test": "test_matched.tsv", "test1": "test_mismatched.tsv"},
        labelled=Layout(True, (_col(8, "sentence1"), _col(9, "sentence2")), _col(-1, "gold_label")),
        unlabelled=Layout(True, (_col(8, "sentence1"), _col(9, "sentence2"))),
        labels=("contradiction", "entailment", "neutral")),
    GlueTask(
        "QNLI", "qnli", _STANDARD_FILES,
        labelled=Layout(True, (_col(1, "question"), _col(2, "sentence")), _col(3, "label")),
        unlabelled=Layout(True, (_col(1, "question"), _col(2, "sentence"))),
        labels=_ENTAILMENT),
    GlueTask(
        "RTE", "rte", _STANDARD_FILES,
        labelled=Layout(True, (_col(1, "sentence1"), _col(2, "sentence2")), _col(3, "label")),
        unlabelled=Layout(True, (_col(1, "sentence1"), _col(2, "sentence2"))),
        labels=_ENTAILMENT),
]}

# the column order of the RoBERTa paper's GLUE tables
TABLE_ORDER = ("MNLI", "QNLI", "QQP", "RTE", "SST-2", "MRPC", "CoLA", "STS-B")
STSB_MAX_SCORE = 5.0  # STS-B scores are 0..5; fine-tuning regresses score / 5


class GlueError(ValueError):
    """Bad GLUE input; the message is one line that names the file (and row)."""


def get_task(name: str) -> GlueTask:
    """A task by name, forgiving case and `-`/`_` (`sst_2`, `sts-b`, `mnli`)."""
    def key(text: str) -> str:
        return text.lower().replace("-", "").replace("_", "")

    for task in TASKS.values():
        if key(name) in (key(task.name), key(task.config)):
            return task
    raise GlueError(f"unknown GLUE task {name!r} (one of {', '.join(TASKS)})")
