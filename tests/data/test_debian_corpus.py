"""The Debian corpus (`energy-lm-prepare debian`): fetched with `apt-get download`,
unpacked with `dpkg-deb -x`, tested on local .deb files built here with `dpkg-deb
--build` (no network). A stand-in `apt-get` on PATH serves the download path from
those local copies."""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from energy_lm.data import debian_corpus
from energy_lm.data.prepare import PrepareError, main

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None,
                                reason="dpkg-deb (Debian's dpkg) is not installed")

RST = """\
.. _tut-intro:

*****************
An Informal Intro
*****************

In the following examples, input and output are told apart by :term:`prompts <prompt>`
and the ``print`` function, see :func:`print` and *emphasis*::

   >>> print("this code is dropped")

.. note::
   Notes are directives and are dropped.

Numbers
=======

The interpreter acts as a simple calculator with `links <https://example.org>`_.
"""
WORDNET = """\
  1 This software and database is being provided to you, the LICENSEE, by
  2 Princeton University under the following license.
00001740 03 n 01 entity 0 000 | that which is perceived or known or inferred to have its own distinct existence  
00002137 03 n 01 abstraction 0 000 | a general concept formed by extracting common features; "a mental abstraction"  
00015388 05 n 01 animal 0 000 | a living organism characterized by voluntary movement  
"""
FORTUNES = "A bug in the code is worth two in the documentation.\n%\nNever trust a computer you can't lift.\n%\n"
# enough documents for the hash split to fill valid and test as well
MORE = "".join(f"Cookie number {k} says\n  that tomorrow is {k % 7} days away.\n%\n" for k in range(400))


def build_deb(root: Path, package: str, files: dict, out: Path, executable=()) -> Path:
    """A minimal binary package holding `files` {relative path: bytes}; the paths in
    `executable` get mode 755."""
    tree = root / package
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.org>\n"
        f"Description: test\n")
    for rel, data in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
        if rel in executable:
            (tree / rel).chmod(0o755)
    out.mkdir(exist_ok=True)
    deb = out / f"{package}_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(tree), str(deb)], check=True,
                   capture_output=True)
    return deb


@pytest.fixture
def debs(tmp_path):
    out = tmp_path / "debs"
    build_deb(tmp_path / "trees", "python3.11-doc",
              {"usr/share/doc/python3.11/html/_sources/tutorial/intro.rst.txt": RST.encode()}, out)
    build_deb(tmp_path / "trees", "wordnet-base", {"usr/share/wordnet/data.noun": WORDNET.encode()}, out)
    build_deb(tmp_path / "trees", "fortunes", {
        "usr/share/games/fortunes/computers": FORTUNES.encode(),
        "usr/share/games/fortunes/numbers": MORE.encode(),
        "usr/share/games/fortunes/computers.dat": b"\xfe\x00 binary index",
        "usr/share/games/fortunes/art": b"  /\\_/\\  ( o.o )  > ^ <  a cat picture\n%\n",
    }, out)
    return out


def all_documents(out: Path) -> list:
    return [line for split in ("train", "valid", "test")
            for line in (out / "raw" / f"{split}.txt").read_text().splitlines()]


@pytest.mark.slow
def test_prepare_from_local_debs(debs, tmp_path):
    data_bin = main(["debian", "--out", str(tmp_path / "corpus"), "--debs-dir", str(debs),
                     "--vocab-size", "300"])
    assert (data_bin / "train.bin").stat().st_size > 0 and (data_bin / "vocab.json").exists()
    docs = all_documents(tmp_path / "corpus")
    text = " ".join(docs)
    # reST: one document per section, markup reduced to words, code and directives gone
    assert ("An Informal Intro In the following examples, input and output are told apart by "
            "prompts and the print function, see print and emphasis") in text
    assert "Numbers The interpreter acts as a simple calculator with links." in text
    for gone in ("this code is dropped", "Notes are directives", ":func:", "``", "****", "https"):
        assert gone not in text
    # WordNet: glosses of one lexicographer file form a document; licence lines dropped
    assert ('that which is perceived or known or inferred to have its own distinct existence. '
            'a general concept formed by extracting common features; "a mental abstraction".') in text
    assert "a living organism characterized by voluntary movement." in text
    assert "Princeton" not in text
    # fortunes: one document per cookie; pictures and .dat indexes skipped
    assert "A bug in the code is worth two in the documentation." in docs
    assert "Never trust a computer you can't lift." in docs
    assert "Cookie number 17 says that tomorrow is 3 days away." in docs  # lines joined
    assert "cat picture" not in text
    assert len(docs) == 6 + 400
    assert all((tmp_path / "corpus" / "raw" / f"{split}.txt").stat().st_size > 0
               for split in ("valid", "test"))


def test_download_path_runs_apt_get_download(debs, tmp_path, monkeypatch):
    """Without --debs-dir the packages come from `apt-get download PACKAGE` run in the
    cache folder; here a stand-in apt-get copies the local .deb, as apt would fetch it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "apt-get"
    fake.write_text(f"#!/bin/sh\n[ \"$1\" = download ] || exit 2\necho \"$2\" >> {tmp_path}/asked\n"
                    f"cp {debs}/\"$2\"_*.deb .\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    got = debian_corpus.fetch_debs(tmp_path / "cache")
    assert sorted(got) == sorted(debian_corpus.PACKAGES)
    assert all(path.parent == tmp_path / "cache" and path.exists() for path in got.values())
    assert sorted((tmp_path / "asked").read_text().split()) == sorted(debian_corpus.PACKAGES)
    debian_corpus.fetch_debs(tmp_path / "cache")  # cached: apt-get is not asked again
    assert len((tmp_path / "asked").read_text().split()) == len(debian_corpus.PACKAGES)


def test_invalid_utf8_is_one_clear_error(tmp_path):
    out = tmp_path / "debs"
    build_deb(tmp_path / "trees", "fortunes",
              {"usr/share/games/fortunes/latin1": "caf\xe9 au lait\n%\n".encode("latin-1")}, out)
    with pytest.raises(PrepareError) as info:
        main(["debian", "--out", str(tmp_path / "corpus"), "--debs-dir", str(out),
              "--packages", "fortunes"])
    message = str(info.value)
    assert "latin1: not UTF-8 text (byte 3" in message and "\n" not in message


def test_missing_deb_is_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrepareError, match=r"no wordnet-base_\*\.deb in .*empty"):
        main(["debian", "--out", str(tmp_path / "corpus"), "--debs-dir", str(tmp_path / "empty"),
              "--packages", "wordnet-base"])
