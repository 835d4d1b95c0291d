"""Two small GLUE-format tasks made offline from the standard library's docstrings, to
run the GLUE pipeline end to end without the benchmark's data.

    python -m energy_lm.glue.fixtures --out glue-fixtures [--seed 1]

- **kind** (one text), in SST-2's format (or CoLA's, `--single-format CoLA`): is this
  the first paragraph of a class's docstring (label 1) or of a function's (label 0)?
  Balanced.
- **module** (a pair), in MRPC's format (or RTE's, `--pair-format RTE`): are these two
  docstrings from the same module (MRPC 1 / RTE `entailment`)? Balanced; negatives
  pair two modules of the same split.

The docstrings are read from the source files with `ast` (nothing is imported). Modules
are dealt to train / dev / test (70 / 15 / 15 %) by a seeded shuffle, so no module's
text is in two splits; sizes: 1,000 / 200 / 200 examples per task (fewer where a split
runs short). The output is a function of the seed and of the Python version (its
standard library). Each task folder is written as GLUE's download lays it out (header,
columns, label values; MRPC's byte-order mark), so `energy_lm.glue.preprocess` reads it
as it reads the real task. The pretraining corpus (`energy-lm-prepare embedded`) holds
the same docstrings, without these labels.
"""

import argparse
import ast
import os
import random
import re
import sysconfig
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

SPLIT_SHARES = (("train", 0.70), ("dev", 0.15), ("test", 0.15))
SIZES = {"train": 1000, "dev": 200, "test": 200}
MIN_WORDS, MAX_WORDS = 4, 48
SINGLE_FORMATS = ("SST-2", "CoLA")
PAIR_FORMATS = ("MRPC", "RTE")
_SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages",
              "dist-packages", "ensurepip", "encodings", "__pycache__", "pydoc_data"}
_WS = re.compile(r"\s+")

Doc = Tuple[int, str, str, bool]  # (id, module, text, is_class)


def first_paragraph(docstring: str) -> Optional[str]:
    """One line of prose, or None: the docstring's first paragraph, whitespace
    normalised, cut to MAX_WORDS words; None when short or a doctest."""
    paragraph = docstring.strip().split("\n\n")[0]
    words = _WS.sub(" ", paragraph).strip().split(" ")
    if len(words) < MIN_WORDS or words[0].startswith(">>>"):
        return None
    return " ".join(words[:MAX_WORDS])


def stdlib_docstrings(root: Optional[Path] = None) -> List[Doc]:
    """Class and function docstrings of the standard library, in a fixed order, each
    text once (its first occurrence)."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    docs: List[Doc] = []
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for filename in sorted(f for f in filenames if f.endswith(".py")):
            path = Path(dirpath) / filename
            module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if not isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                text = first_paragraph(ast.get_docstring(node, clean=True) or "")
                if text and text not in seen:
                    seen.add(text)
                    docs.append((len(docs), module, text, isinstance(node, ast.ClassDef)))
    return docs


def split_by_module(docs: Sequence[Doc], seed: int) -> Dict[str, List[Doc]]:
    modules = sorted({doc[1] for doc in docs})
    random.Random(seed).shuffle(modules)
    bounds, start = {}, 0
    for i, (split, share) in enumerate(SPLIT_SHARES):
        end = len(modules) if i == len(SPLIT_SHARES) - 1 else start + round(share * len(modules))
        bounds.update({module: split for module in modules[start:end]})
        start = end
    out: Dict[str, List[Doc]] = {split: [] for split, _ in SPLIT_SHARES}
    for doc in docs:
        out[bounds[doc[1]]].append(doc)
    return out


def kind_examples(docs: Sequence[Doc], size: int, rng: random.Random) -> List[Tuple[Doc, int]]:
    """Balanced (doc, 1 if class else 0), shuffled."""
    classes = [d for d in docs if d[3]]
    functions = [d for d in docs if not d[3]]
    half = min(size // 2, len(classes), len(functions))
    chosen = [(d, 1) for d in rng.sample(classes, half)] + [(d, 0) for d in rng.sample(functions, half)]
    rng.shuffle(chosen)
    return chosen


def module_examples(docs: Sequence[Doc], size: int, rng: random.Random) -> List[Tuple[Doc, Doc, int]]:
    """Balanced (doc, doc, 1 if same module else 0), no pair twice, shuffled."""
    by_module: Dict[str, List[Doc]] = defaultdict(list)
    for doc in docs:
        by_module[doc[1]].append(doc)
    modules = sorted(by_module)
    rich = [m for m in modules if len(by_module[m]) >= 2]
    pairs, seen = [], set()
    for label in (1, 0):
        wanted, attempts = size // 2, 0
        while wanted and attempts < 50 * size and len(modules) >= 2 and rich:
            attempts += 1
            if label:
                a, b = rng.sample(by_module[rng.choice(rich)], 2)
            else:
                m1, m2 = rng.sample(modules, 2)
                a, b = rng.choice(by_module[m1]), rng.choice(by_module[m2])
            if (a[0], b[0]) in seen or (b[0], a[0]) in seen:
                continue
            seen.add((a[0], b[0]))
            pairs.append((a, b, label))
            wanted -= 1
    rng.shuffle(pairs)
    return pairs


def _write(path: Path, header: Optional[str], rows: List[Sequence[str]]) -> None:
    lines = ([header] if header is not None else []) + ["\t".join(map(str, row)) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_single(folder: Path, fmt: str, split: str, examples) -> None:
    path = folder / f"{split}.tsv"
    if split == "test":
        _write(path, "index\tsentence", [(i, d[2]) for i, (d, _) in enumerate(examples)])
    elif fmt == "SST-2":
        _write(path, "sentence\tlabel", [(d[2], label) for d, label in examples])
    else:  # CoLA: no header; source, label, original judgement ('*' = unacceptable), sentence
        _write(path, None, [(d[1], label, "" if label else "*", d[2]) for d, label in examples])


def write_pair(folder: Path, fmt: str, split: str, examples) -> None:
    path = folder / f"{split}.tsv"
    if fmt == "MRPC":
        names = "#1 ID\t#2 ID\t#1 String\t#2 String"
        if split == "test":
            _write(path, f"index\t{names}", [(i, a[0], b[0], a[2], b[2])
                                             for i, (a, b, _) in enumerate(examples)])
        else:  # GLUE's download copies MRPC's header with its byte-order mark
            _write(path, f"\ufeffQuality\t{names}", [(label, a[0], b[0], a[2], b[2])
                                                     for a, b, label in examples])
    elif split == "test":
        _write(path, "index\tsentence1\tsentence2",
               [(i, a[2], b[2]) for i, (a, b, _) in enumerate(examples)])
    else:
        _write(path, "index\tsentence1\tsentence2\tlabel",
               [(i, a[2], b[2], "entailment" if label else "not_entailment")
                for i, (a, b, label) in enumerate(examples)])


def build_fixtures(out: Path, seed: int = 1, single_format: str = "SST-2",
                   pair_format: str = "MRPC", sizes: Optional[Dict[str, int]] = None,
                   docs: Optional[Sequence[Doc]] = None) -> Dict[str, Path]:
    """Write OUT/<single_format>/ and OUT/<pair_format>/; returns {format: folder}."""
    if single_format not in SINGLE_FORMATS or pair_format not in PAIR_FORMATS:
        raise ValueError(f"formats: one text {SINGLE_FORMATS}, pairs {PAIR_FORMATS}")
    sizes = dict(SIZES, **(sizes or {}))
    by_split = split_by_module(docs if docs is not None else stdlib_docstrings(), seed)
    folders = {single_format: Path(out) / single_format, pair_format: Path(out) / pair_format}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for split, _ in SPLIT_SHARES:
        rng = random.Random(f"{seed}:{split}")
        write_single(folders[single_format], single_format, split,
                     kind_examples(by_split[split], sizes[split], rng))
        write_pair(folders[pair_format], pair_format, split,
                   module_examples(by_split[split], sizes[split], rng))
    (Path(out) / "README.txt").write_text(
        f"Docstring fixtures in GLUE's file formats (energy_lm.glue.fixtures, seed {seed}); not GLUE.\n"
        f"{single_format}/: is this a class's docstring (1) or a function's (0)?\n"
        f"{pair_format}/: are these two docstrings from the same module?\n", encoding="utf-8")
    return folders


def main(argv: Optional[List[str]] = None) -> Dict[str, Path]:
    parser = argparse.ArgumentParser(prog="python -m energy_lm.glue.fixtures", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--single-format", choices=SINGLE_FORMATS, default="SST-2")
    parser.add_argument("--pair-format", choices=PAIR_FORMATS, default="MRPC")
    args = parser.parse_args(argv)
    return build_fixtures(args.out, args.seed, args.single_format, args.pair_format)


def cli_main() -> None:
    for name, folder in main().items():
        print(f"{name}: {folder}")


if __name__ == "__main__":
    cli_main()
