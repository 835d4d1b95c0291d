"""A real English corpus of a few million words from Debian's archive, obtained offline.

Three packages hold English prose (measured on bookworm: 2.48M words together, after
dropping repeated documents; 2.39M in train):
- `python3.11-doc`: the reStructuredText sources of the Python documentation (~0.6M
  words), one document per section, markup reduced to its words, code blocks dropped;
- `wordnet-base`: WordNet 3.0's glosses (~1.5M words), one document per 50 consecutive
  synsets of a lexicographer file (e.g. noun.animal);
- `fortunes`: the fortune cookie files (~0.4M words), one document per cookie (the ASCII
  art files are left out).

`apt-get download` fetches the .deb files (no installation, no root) and `dpkg-deb -x`
unpacks them; `--debs-dir` uses local copies instead. Text must be UTF-8: a file that is
not raises PrepareError naming the file and the byte offset. Documents go to the train,
valid and test splits by a hash of their name (as the embedded corpus does).
"""

import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from energy_lm.data.embedded_corpus import split_of, write_documents
from energy_lm.data.errors import PrepareError

PACKAGES = ("python3.11-doc", "wordnet-base", "fortunes")
GLOSSES_PER_DOCUMENT = 50
_SKIPPED_FORTUNES = {"art", "ascii-art"}  # pictures, not prose


def read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PrepareError(f"{path}: not UTF-8 text (byte {err.start}: "
                                f"{data[err.start:err.start + 1]!r})") from None


# ---------------------------------------------------------------- fetching
def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise PrepareError(f"{name} not found: the Debian corpus needs apt-get and dpkg-deb "
                                f"(or give --debs-dir with the .deb files and install dpkg)")
    return found


def fetch_debs(cache: Path, packages=PACKAGES, debs_dir: Optional[Path] = None) -> Dict[str, Path]:
    """{package: .deb path}: from debs_dir when given, else `apt-get download` into cache
    (a .deb already there is reused)."""
    cache.mkdir(parents=True, exist_ok=True)
    found = {}
    for package in packages:
        pattern = f"{package}_*.deb"
        hits = sorted((debs_dir or cache).glob(pattern))
        if not hits and debs_dir is None:
            result = subprocess.run([_tool("apt-get"), "download", package], cwd=cache,
                                    capture_output=True, text=True)
            if result.returncode != 0:
                raise PrepareError(f"apt-get download {package} failed: "
                                        f"{result.stderr.strip().splitlines()[-1:]}")
            hits = sorted(cache.glob(pattern))
        if not hits:
            raise PrepareError(f"no {pattern} in {debs_dir or cache}")
        found[package] = hits[-1]
    return found


def unpack(deb: Path, dest: Path) -> Path:
    """`dpkg-deb -x` (no maintainer scripts run, nothing installed)."""
    if not (dest / ".unpacked").exists():
        dest.mkdir(parents=True, exist_ok=True)
        result = subprocess.run([_tool("dpkg-deb"), "-x", str(deb), str(dest)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise PrepareError(f"dpkg-deb -x {deb} failed: {result.stderr.strip()}")
        (dest / ".unpacked").touch()
    return dest


# ---------------------------------------------------------------- documents
_ROLE = re.compile(r":[\w:.-]+:`!?~?([^`<]*?)(?:\s*<[^>]*>)?`")  # :func:`name <target>` -> name
_LITERAL = re.compile(r"``([^`]*)``")
_LINK = re.compile(r"`([^`<]+?)\s*(?:<[^>]*>)?`_{1,2}")
_EMPHASIS = re.compile(r"\*{1,2}([^*\s][^*]*?)\*{1,2}")
_UNDERLINE = re.compile(r"^([=\-~^*#+\"'`.:_])\1{2,}\s*$")


def _inline(text: str) -> str:
    for pattern in (_ROLE, _LITERAL, _LINK, _EMPHASIS):
        text = pattern.sub(r"\1", text)
    return text


def rst_sections(text: str) -> Iterator[str]:
    """The prose of each section of a reST file: headings start sections; directives
    (`.. x::` and their indented body), literal blocks (after `::`) and doctest lines
    are dropped; inline markup keeps its words."""
    words: List[str] = []
    skip_indent: Optional[int] = None  # inside a directive or literal block
    lines = text.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:
            if not stripped or indent > skip_indent:
                continue
            skip_indent = None
        if _UNDERLINE.match(line):  # a heading's over/underline (the title line split)
            continue
        if stripped.startswith(".."):
            skip_indent = indent
            continue
        if stripped.startswith((">>>", "...")) or not stripped:
            continue
        if stripped.endswith("::"):
            skip_indent = indent
            stripped = stripped[:-1] if not stripped.endswith(" ::") else stripped[:-3]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if _UNDERLINE.match(nxt) and len(nxt.strip()) >= len(stripped):
            if words:
                yield " ".join(words)
                words = []
        words.extend(_inline(stripped).split())
    if words:
        yield " ".join(words)


def python_doc_documents(root: Path) -> Iterator[Tuple[str, str]]:
    # python3.11/ may also be reachable through a symlinked doc folder: read each file once
    sources = sorted({p.resolve() for p in root.glob("usr/share/doc/python3*/html/_sources/**/*.rst.txt")})
    root = root.resolve()
    for path in sources:
        rel = path.relative_to(root).as_posix()
        for k, section in enumerate(rst_sections(read_utf8(path))):
            yield f"python-doc:{rel}:{k}", section


def wordnet_documents(root: Path) -> Iterator[Tuple[str, str]]:
    """Glosses ("definition; "example"") of every synset, 50 per document, grouped by
    lexicographer file in file order."""
    for path in sorted(root.glob("usr/share/wordnet/data.*")):
        groups: Dict[str, List[str]] = {}
        for line in read_utf8(path).splitlines():
            if line.startswith("  ") or "|" not in line:  # the licence header
                continue
            fields = line.split(" ", 2)
            groups.setdefault(fields[1], []).append(line.split("|", 1)[1].strip())
        for lexfile, glosses in groups.items():
            for start in range(0, len(glosses), GLOSSES_PER_DOCUMENT):
                chunk = glosses[start:start + GLOSSES_PER_DOCUMENT]
                yield f"wordnet:{path.name}:{lexfile}:{start}", " ".join(g + "." for g in chunk)


def fortune_documents(root: Path) -> Iterator[Tuple[str, str]]:
    for path in sorted(root.glob("usr/share/games/fortunes/*")):
        if path.suffix or path.is_symlink() or path.is_dir() or path.name in _SKIPPED_FORTUNES:
            continue  # .dat indexes, .u8 links
        for k, cookie in enumerate(re.split(r"(?m)^%\s*$", read_utf8(path))):
            text = " ".join(cookie.split())
            if text:
                yield f"fortunes:{path.name}:{k}", text


EXTRACTORS: Dict[str, Callable[[Path], Iterator[Tuple[str, str]]]] = {
    "python3.11-doc": python_doc_documents,
    "wordnet-base": wordnet_documents,
    "fortunes": fortune_documents,
}


def build_splits(unpacked: Dict[str, Path], min_words: int = 3) -> Dict[str, List[str]]:
    """{"train": [...], "valid": [...], "test": [...]}; a repeated text is kept once."""
    splits: Dict[str, List[str]] = {"train": [], "valid": [], "test": []}
    seen = set()
    for package, root in unpacked.items():
        for name, text in EXTRACTORS[package](root):
            if len(text.split()) < min_words or text in seen:
                continue
            seen.add(text)
            splits[split_of(name)].append(text)
    return splits


def write_splits(out_dir: Path, packages=PACKAGES, debs_dir: Optional[Path] = None
                 ) -> Dict[str, Path]:
    """Fetch, unpack and extract; write out_dir/raw/{split}.txt, one document per line."""
    debs = fetch_debs(out_dir / "debs", packages, debs_dir)
    unpacked = {package: unpack(deb, out_dir / "unpacked" / package) for package, deb in debs.items()}
    return write_documents(out_dir / "raw", build_splits(unpacked))
