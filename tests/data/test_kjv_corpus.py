"""The King James Bible corpus (`energy-lm-prepare kjv`): the unpacked `bible` program's
output split into chapters, tested with local .deb files built here (a stand-in `bible`
script prints a tiny text in the real program's layout: a chapter heading, numbered
verses, wrapped lines)."""

import shutil

import pytest

from energy_lm.data import kjv_corpus
from energy_lm.data.prepare import PrepareError, main
from test_debian_corpus import build_deb

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None,
                                reason="dpkg-deb (Debian's dpkg) is not installed")

# the layout `bible -p DIR gen1:1-rev22:21` prints (measured on bookworm's bible-kjv 4.38)
OUTPUT = """
Genesis 1

  1 In the beginning God created the heaven and the earth.
  2 And the earth was without form, and void; and darkness was upon the face of
the deep. And the Spirit of God moved upon the face of the waters.

1 Samuel 3

  1 And the child Samuel ministered unto the LORD before Eli.
  2 And it came to pass at that time, when Eli was laid down in his place,
"""


def test_chapters_are_documents_without_verse_numbers():
    docs = list(kjv_corpus.chapters(OUTPUT))
    assert [name for name, _ in docs] == ["Genesis 1", "1 Samuel 3"]
    assert docs[0][1] == ("In the beginning God created the heaven and the earth. And the earth "
                          "was without form, and void; and darkness was upon the face of the "
                          "deep. And the Spirit of God moved upon the face of the waters.")
    assert not any(ch.isdigit() for _, text in docs for ch in text)


@pytest.fixture
def debs(tmp_path):
    """bible-kjv: a `bible` that prints its data file (as the real one prints the decoded
    text) and fails without it; bible-kjv-text: that data file."""
    out = tmp_path / "debs"
    script = '#!/bin/sh\n[ "$1" = -p ] && [ -f "$2/bible.data" ] || exit 3\ncat "$2/bible.data"\n'
    build_deb(tmp_path / "trees", "bible-kjv", {"usr/bin/bible": script.encode()}, out,
              executable=("usr/bin/bible",))
    chapters = "".join(OUTPUT.replace("Genesis 1", f"Genesis {n}").replace(
        "1 Samuel 3", f"1 Samuel {n}") for n in range(1, 40))
    build_deb(tmp_path / "trees", "bible-kjv-text", {"usr/lib/bible.data": chapters.encode()}, out)
    return out


def test_prepare_from_local_debs(tmp_path, debs):
    data_bin = main(["kjv", "--out", str(tmp_path / "kjv"), "--debs-dir", str(debs),
                     "--vocab-size", "300"])
    raw = tmp_path / "kjv" / "raw"
    docs = {split: (raw / f"{split}.txt").read_text().splitlines() for split in ("train", "valid")}
    assert len(docs["train"]) + len(docs["valid"]) + len(
        (raw / "test.txt").read_text().splitlines()) == 78  # 39 x 2 chapters
    assert docs["train"] and docs["valid"] and (data_bin / "dict.txt").is_file()


def test_a_program_that_prints_nothing_is_one_line(tmp_path):
    out = tmp_path / "debs"
    build_deb(tmp_path / "trees", "bible-kjv", {"usr/bin/bible": b"#!/bin/sh\nexit 3\n"}, out,
              executable=("usr/bin/bible",))
    build_deb(tmp_path / "trees", "bible-kjv-text", {"usr/lib/bible.data": b"x"}, out)
    with pytest.raises(PrepareError, match="bible failed \\(3\\)"):
        main(["kjv", "--out", str(tmp_path / "kjv"), "--debs-dir", str(out)])
    assert not (tmp_path / "kjv").exists()
