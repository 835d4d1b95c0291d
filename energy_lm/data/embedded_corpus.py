"""The embedded default corpus: English prose that every Python installation carries.

Documents are the pydoc topics of the language reference (`pydoc_data.topics`), the
docstrings of the standard library's modules, classes and functions, read from source
with `ast`, and its blocks of consecutive comment lines, read with `tokenize` (nothing
is imported or executed). Code examples (doctest lines, indented
blocks) are dropped; each document becomes one line of whitespace-normalised text.

The split is a deterministic function of each document's name (a hash), so the same
Python version always gives the same train/valid/test files.
"""

import ast
import hashlib
import io
import os
import re
import sysconfig
import tokenize
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

MIN_WORDS = 12
SPLIT_PERCENT = {"valid": 2, "test": 2}  # the rest is train
_SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages",
              "dist-packages", "ensurepip", "encodings", "__pycache__", "pydoc_data"}
_WS = re.compile(r"\s+")
_RULE = re.compile(r"^[*=~^#+-]{3,}$")  # reST section underlines


def _prose(text: str) -> str:
    """Keep prose lines; drop doctests and indented code blocks; one line out."""
    kept = []
    for line in text.expandtabs().splitlines():
        stripped = line.strip()
        if _RULE.match(stripped):
            continue
        if stripped.startswith((">>>", "...")) or (line.startswith("    ") and not kept_is_prose(kept)):
            continue
        kept.append(stripped)
    return _WS.sub(" ", " ".join(kept)).strip()


def kept_is_prose(kept: List[str]) -> bool:
    # an indented line right after prose continues that paragraph (docstring body
    # indentation); after a blank line it starts a code block
    return bool(kept) and kept[-1] != ""


def _source_docstrings(path: Path, name: str) -> Iterator[Tuple[str, str]]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    nodes = [(name, tree)]
    for node in ast.walk(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            nodes.append((f"{name}:{node.name}:{node.lineno}", node))
    for doc_name, node in nodes:
        doc = ast.get_docstring(node, clean=True)
        if doc:
            yield doc_name, doc


def _source_comments(path: Path, name: str) -> Iterator[Tuple[str, str]]:
    """Blocks of comments on consecutive lines, one document each."""
    block: List[str] = []
    start = last = -2
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline))
    except (tokenize.TokenError, SyntaxError, UnicodeDecodeError, ValueError):
        return
    for tok in tokens + [None]:
        line = tok.start[0] if tok is not None else -10
        if tok is not None and tok.type == tokenize.COMMENT and line == last + 1 and block:
            block.append(tok.string.lstrip("#").strip())
            last = line
            continue
        if tok is None or tok.type == tokenize.COMMENT:
            if block:
                yield f"{name}:#{start}", "\n".join(block)
            block, start, last = [], line, line
            if tok is not None:
                block.append(tok.string.lstrip("#").strip())


def _stdlib_files() -> Iterator[Tuple[str, Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for filename in sorted(filenames):
            if filename.endswith(".py"):
                path = Path(dirpath) / filename
                yield path.relative_to(root).with_suffix("").as_posix(), path


def iter_documents() -> Iterator[Tuple[str, str]]:
    """(name, text) of every document, in a fixed order."""
    from pydoc_data.topics import topics

    for topic in sorted(topics):
        yield f"topic:{topic}", topics[topic]
    for module_name, path in _stdlib_files():
        yield from _source_docstrings(path, f"stdlib:{module_name}")
        yield from _source_comments(path, f"stdlib:{module_name}")


def split_of(name: str) -> str:
    bucket = int(hashlib.sha1(name.encode("utf-8")).hexdigest(), 16) % 100
    if bucket < SPLIT_PERCENT["valid"]:
        return "valid"
    if bucket < SPLIT_PERCENT["valid"] + SPLIT_PERCENT["test"]:
        return "test"
    return "train"


def build_splits(max_documents: int = 0) -> Dict[str, List[str]]:
    """{"train": [...], "valid": [...], "test": [...]}, one document per string.

    max_documents > 0 keeps only the first documents (in the fixed order), for tests.
    Duplicate texts (inherited docstrings) are kept once.
    """
    splits: Dict[str, List[str]] = {"train": [], "valid": [], "test": []}
    seen = set()
    count = 0
    for name, raw in iter_documents():
        text = _prose(raw)
        if len(text.split()) < MIN_WORDS or text in seen:
            continue
        seen.add(text)
        splits[split_of(name)].append(text)
        count += 1
        if max_documents and count >= max_documents:
            break
    return splits


def write_documents(out_dir: Path, splits: Dict[str, List[str]]) -> Dict[str, Path]:
    """out_dir/{split}.txt, one document per line (the raw-text layout prepare reads)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, docs in splits.items():
        paths[split] = out_dir / f"{split}.txt"
        paths[split].write_text("".join(doc + "\n" for doc in docs), encoding="utf-8")
    return paths


def write_splits(out_dir: Path, max_documents: int = 0) -> Dict[str, Path]:
    return write_documents(out_dir, build_splits(max_documents))
