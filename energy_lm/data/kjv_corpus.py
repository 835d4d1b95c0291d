"""The King James Bible from Debian's archive: a held-out English corpus (~0.82M words,
narrative prose) that played no part in choosing energy_lm's defaults (issue 37).

Debian ships the text compressed in its own format (`bible-kjv-text`) with the program
that reads it (`bible-kjv`); both .deb files are fetched with `apt-get download` and
unpacked with `dpkg-deb -x` (energy_lm.data.debian_corpus: nothing installed, no root),
then the unpacked `bible` prints Genesis 1:1 to Revelation 22:21. One document per
chapter (1,189), verse numbers dropped; chapters go to train / valid / test by a hash of
their name, as the other corpora's documents do.
"""

import os
import re
import subprocess
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from energy_lm.data.debian_corpus import fetch_debs, unpack
from energy_lm.data.embedded_corpus import split_of, write_documents
from energy_lm.data.errors import PrepareError

PACKAGES = ("bible-kjv", "bible-kjv-text")
WHOLE_BIBLE = "gen1:1-rev22:21"
_CHAPTER = re.compile(r"^(\S.*\S) (\d+)$")   # "Genesis 1", "1 Samuel 3"
_VERSE = re.compile(r"^\s+(\d+) (.*)$")        # "  1 In the beginning ..."


def bible_text(program_root: Path, text_root: Path) -> str:
    """The whole text as the unpacked `bible` program prints it (one line per verse)."""
    program = program_root / "usr" / "bin" / "bible"
    if not program.is_file():
        raise PrepareError(f"{program} not found: bible-kjv did not unpack as expected")
    result = subprocess.run([str(program), "-p", str(text_root / "usr" / "lib"), WHOLE_BIBLE],
                            capture_output=True, env=dict(os.environ, COLUMNS="1000000"))
    if result.returncode != 0 or not result.stdout:
        raise PrepareError(f"{program} failed ({result.returncode}): "
                           f"{result.stderr.decode('utf-8', 'replace').strip()[:200]}")
    try:
        return result.stdout.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PrepareError(f"{program}'s output is not UTF-8 (byte {err.start})") from None


def chapters(text: str) -> Iterator[Tuple[str, str]]:
    """(chapter name, its verses joined) for each chapter; a verse may wrap over lines."""
    name: Optional[str] = None
    verses: List[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        heading = _CHAPTER.match(line)
        if heading and not line[0].isspace():
            if name is not None and verses:
                yield name, " ".join(verses)
            name, verses = line.strip(), []
            continue
        verse = _VERSE.match(line)
        if verse:
            verses.append(verse.group(2).strip())
        elif verses:  # a wrapped verse continues
            verses[-1] += " " + line.strip()
    if name is not None and verses:
        yield name, " ".join(verses)


def build_splits(text: str) -> Dict[str, List[str]]:
    splits: Dict[str, List[str]] = {"train": [], "valid": [], "test": []}
    for name, doc in chapters(text):
        splits[split_of(f"kjv:{name}")].append(doc)
    if not splits["train"]:
        raise PrepareError("no chapters found in the bible program's output")
    return splits


def write_splits(out_dir: Path, debs_dir: Optional[Path] = None) -> Dict[str, Path]:
    """Fetch, unpack, print and split; writes out_dir/raw/{split}.txt."""
    debs = fetch_debs(out_dir / "debs", PACKAGES, debs_dir)
    roots = {package: unpack(deb, out_dir / "unpacked" / package) for package, deb in debs.items()}
    text = bible_text(roots["bible-kjv"], roots["bible-kjv-text"])
    return write_documents(out_dir / "raw", build_splits(text))
