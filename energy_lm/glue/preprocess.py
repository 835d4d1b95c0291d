"""GLUE task folders -> binarized fairseq `sentence_prediction` data.

    python -m energy_lm.glue.preprocess GLUE_DIR --out glue-bin --pretrain-bin corpus/data-bin
    python -m energy_lm.glue.preprocess GLUE_DIR --out glue-bin --tasks RTE MRPC \\
        --bpe gpt2 --gpt2-dir gpt2_bpe --dict roberta.base/dict.txt

For each task, OUT/<TASK>-bin/ holds what `--task sentence_prediction` reads:
`input0/` (first text), `input1/` (second text, pair tasks), `label/` (class labels,
binarized with a label dictionary in the task's fixed label order; for STS-B plain-text
`{split}.label` files with score / 5, as fairseq's GLUE recipe does) and `glue.json`
(the task, the BPE and the dictionary used). The BPE ids of each text sit in
OUT/<TASK>/{split}.input0 etc.

Texts are encoded with the BPE of the checkpoint to fine-tune, and binarized with its
dictionary (`--srcdict`), so token ids match the pretrained embeddings:
- `--bpe byte`: our byte-level BPE, `vocab.json` + `merges.txt` of a pretraining
  data-bin (`energy-lm-prepare embedded` puts them there), dictionary = its `dict.txt`;
- `--bpe gpt2`: GPT-2's `encoder.json` + `vocab.bpe` (`--gpt2-dir`), dictionary = the
  checkpoint's `dict.txt` (`--dict`, or `--pretrain-bin` holding one).
Without `--bpe`, byte-level is used when the pretrain-bin holds vocab.json/merges.txt.
Binarization is fairseq-preprocess's own `main` (its Python API), one call per input.
"""

import argparse
import json
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Optional

from energy_lm.cli.errors import log_to_stdout, run_reporting_errors
from energy_lm.data import bpe as bpe_lib
from energy_lm.glue.reader import read_split, task_folder
from energy_lm.glue.tasks import STSB_MAX_SCORE, TASKS, GlueError, GlueTask, get_task

logger = logging.getLogger("energy_lm.glue.preprocess")


class Encoder:
    """Text -> BPE ids, and the dictionary those ids are looked up in."""

    def __init__(self, kind: str, encode: Callable[[str], List[int]], dictionary: Path,
                 files: Dict[str, str]):
        self.kind, self.encode, self.dictionary, self.files = kind, encode, dictionary, files

    @classmethod
    def byte_level(cls, vocab: Path, merges: Path, dictionary: Path) -> "Encoder":
        from tokenizers import ByteLevelBPETokenizer

        _require(vocab, merges, dictionary)
        # as energy_lm.data.bpe encodes the pretraining corpus: no prefix space
        tokenizer = ByteLevelBPETokenizer(str(vocab), str(merges), add_prefix_space=False)
        return cls("byte", lambda text: tokenizer.encode(text).ids, dictionary,
                   {"vocab": str(vocab), "merges": str(merges)})

    @classmethod
    def gpt2(cls, gpt2_dir: Path, dictionary: Path) -> "Encoder":
        _require(gpt2_dir / "encoder.json", gpt2_dir / "vocab.bpe", dictionary)
        return cls("gpt2", bpe_lib.gpt2_encoder(gpt2_dir), dictionary,
                   {"encoder": str(gpt2_dir / "encoder.json"), "vocab": str(gpt2_dir / "vocab.bpe")})


def _require(*paths: Path) -> None:
    for path in paths:
        if not Path(path).is_file():
            raise GlueError(f"{path}: no such file")


def fairseq_binarize(prefixes: Dict[str, Path], destdir: Path, srcdict: Path,
                     workers: int = 1) -> None:
    """fairseq-preprocess --only-source over {split: file}: train, valid[, valid1],
    [test[, test1]] -> destdir/{split}.bin/.idx and destdir/dict.txt (= srcdict)."""
    from fairseq import options
    from fairseq_cli import preprocess

    def joined(kind: str) -> str:
        return ",".join(str(prefixes[s]) for s in sorted(prefixes) if s.startswith(kind))

    argv = ["--only-source", "--trainpref", str(prefixes["train"]), "--destdir", str(destdir),
            "--srcdict", str(srcdict), "--workers", str(workers)]
    for kind in ("valid", "test"):
        if joined(kind):
            argv += [f"--{kind}pref", joined(kind)]
    args = options.get_preprocessing_parser().parse_args(argv)
    fairseq_logger = logging.getLogger("fairseq_cli.preprocess")
    handlers = list(fairseq_logger.handlers)
    try:
        preprocess.main(args)
    finally:  # fairseq adds a log file handler per call; do not leak them
        for handler in fairseq_logger.handlers:
            if handler not in handlers:
                fairseq_logger.removeHandler(handler)
                handler.close()


def write_label_dict(task: GlueTask, counts: Counter, path: Path) -> None:
    """fairseq's dict.txt format (`symbol count`), labels in the task's order, so class
    index i is task.labels[i] whatever the training data's label frequencies."""
    path.write_text("".join(f"{label} {counts.get(label, 0)}\n" for label in task.labels),
                    encoding="utf-8")


def preprocess_task(task: GlueTask, glue_dir: Path, out: Path, encoder: Encoder,
                    workers: int = 1, skip_malformed: bool = False) -> Path:
    """One task: returns OUT/<TASK>-bin. Written to a `.part` folder and renamed when
    complete, so a failure leaves no half-written data-bin."""
    folder = task_folder(glue_dir, task)
    tests = [s for s in task.files if s.startswith("test")]
    found = [s for s in tests if (folder / task.files[s]).is_file()]
    if found != tests:  # optional, but all or none: fairseq names them by position
        logger.warning("%s: test files %s missing; no test split", task.name,
                       ", ".join(task.files[s] for s in tests if s not in found))
    splits = [s for s in task.files if s not in tests] + (tests if found == tests else [])
    examples = {split: read_split(glue_dir, task, split, skip_malformed) for split in splits}
    text_dir = out / task.name
    text_dir.mkdir(parents=True, exist_ok=True)
    files: Dict[str, Dict[str, Path]] = {}  # input0/input1/label -> split -> file
    for split, rows in examples.items():
        for i in range(len(task.labelled.texts)):
            path = text_dir / f"{split}.input{i}"
            path.write_text("".join(" ".join(map(str, encoder.encode(row.texts[i]))) + "\n"
                                    for row in rows), encoding="utf-8")
            files.setdefault(f"input{i}", {})[split] = path
        if not split.startswith("test"):
            path = text_dir / f"{split}.label"
            if task.regression:
                lines = (f"{float(row.label) / STSB_MAX_SCORE:.6g}\n" for row in rows)
            else:
                lines = (f"{row.label}\n" for row in rows)
            path.write_text("".join(lines), encoding="utf-8")
            files.setdefault("label", {})[split] = path

    final = out / f"{task.name}-bin"
    part = out / f"{task.name}-bin.part"
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    for name in ("input0", "input1"):
        if name in files:
            fairseq_binarize(files[name], part / name, encoder.dictionary, workers)
    if task.regression:  # sentence_prediction reads regression targets as text
        (part / "label").mkdir()
        for split, path in files["label"].items():
            shutil.copy(path, part / "label" / f"{split}.label")
    else:
        label_dict = text_dir / "label.dict.txt"
        write_label_dict(task, Counter(row.label for row in examples["train"]), label_dict)
        fairseq_binarize(files["label"], part / "label", label_dict, workers)
    meta = {"task": task.name, "bpe": encoder.kind, "bpe_files": encoder.files,
            "dictionary": str(encoder.dictionary), "num_classes": task.num_classes,
            "examples": {split: len(rows) for split, rows in examples.items()}}
    (part / "glue.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    part.rename(final)
    logger.info("%s: %s -> %s", task.name,
                ", ".join(f"{s} {n}" for s, n in meta["examples"].items()), final)
    return final


def make_encoder(args) -> Encoder:
    pre = args.pretrain_bin
    dictionary = args.dict or (pre / "dict.txt" if pre else None)
    if dictionary is None:
        raise GlueError("give --pretrain-bin (a data-bin with dict.txt) or --dict: fine-tuning "
                        "data must use the checkpoint's dictionary")
    kind = args.bpe
    if kind is None:
        has_byte = pre and (pre / bpe_lib.VOCAB_FILE).is_file() and (pre / bpe_lib.MERGES_FILE).is_file()
        kind = "byte" if has_byte or args.bpe_vocab else "gpt2"
    if kind == "byte":
        vocab = args.bpe_vocab or (pre / bpe_lib.VOCAB_FILE if pre else None)
        merges = args.bpe_merges or (pre / bpe_lib.MERGES_FILE if pre else None)
        if vocab is None or merges is None:
            raise GlueError("--bpe byte needs --pretrain-bin (with vocab.json, merges.txt) or "
                            "--bpe-vocab and --bpe-merges")
        return Encoder.byte_level(vocab, merges, dictionary)
    if args.gpt2_dir is None:
        raise GlueError("--bpe gpt2 needs --gpt2-dir (a folder with encoder.json, vocab.bpe)")
    return Encoder.gpt2(args.gpt2_dir, dictionary)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m energy_lm.glue.preprocess",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("glue_dir", type=Path, help="folder with one sub-folder per task (RTE/, ...)")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT/<TASK>-bin")
    parser.add_argument("--tasks", nargs="+", default=None,
                        help=f"default: every task folder found ({', '.join(TASKS)})")
    parser.add_argument("--pretrain-bin", type=Path, help="the pretraining data-bin: dict.txt "
                        "(and vocab.json, merges.txt for the byte-level BPE)")
    parser.add_argument("--bpe", choices=["byte", "gpt2"], default=None)
    parser.add_argument("--dict", type=Path, help="the checkpoint's dict.txt (overrides --pretrain-bin's)")
    parser.add_argument("--bpe-vocab", type=Path, help="byte-level BPE vocab.json")
    parser.add_argument("--bpe-merges", type=Path, help="byte-level BPE merges.txt")
    parser.add_argument("--gpt2-dir", type=Path, help="folder with GPT-2's encoder.json, vocab.bpe")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--skip-malformed", action="store_true",
                        help="drop rows with the wrong number of fields (default: stop there)")
    return parser


def main(argv: Optional[List[str]] = None) -> List[Path]:
    args = build_parser().parse_args(argv)
    if args.tasks:
        tasks = [get_task(name) for name in args.tasks]
    else:
        tasks = [task for task in TASKS.values() if (args.glue_dir / task.name).is_dir()]
        if not tasks:
            raise GlueError(f"{args.glue_dir}: no GLUE task folders ({', '.join(TASKS)})")
    encoder = make_encoder(args)
    return [preprocess_task(task, args.glue_dir, args.out, encoder, args.workers,
                            args.skip_malformed) for task in tasks]


def cli_main() -> None:
    log_to_stdout()
    logging.getLogger("fairseq_cli.preprocess").setLevel(logging.WARNING)
    for path in run_reporting_errors("energy_lm.glue.preprocess", main, GlueError):
        print(path)


if __name__ == "__main__":
    cli_main()
