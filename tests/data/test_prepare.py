"""Data paths: the embedded corpus, WikiText-103 (raw) and Pile shards to fairseq data."""

import json
import shutil
import zipfile

import pytest
from fairseq.data import Dictionary, data_utils

from conftest import SHARED_DATA, needs_gpt2_bpe
from energy_lm.data import embedded_corpus
from energy_lm.data.prepare import (PrepareError, fetch_gpt2_bpe, main, pile_documents,
                                    wikitext_articles)

GPT2 = SHARED_DATA / "gpt2"
WIKI = (" = Valkyria Chronicles III = \n \n Senjō no Valkyria 3 is a tactical role @-@ playing game . \n"
        " \n = = Gameplay = = \n \n The game is played in turns . \n \n"
        " = Tower Building of the Little Rock Arsenal = \n \n The building is a museum . \n")


def read_split(data_bin, split):
    dictionary = Dictionary.load(str(data_bin / "dict.txt"))
    return dictionary, data_utils.load_indexed_dataset(str(data_bin / split), dictionary)


def decode_gpt2(dictionary, ids):
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    bpe_ids = [int(dictionary[i]) for i in ids if i != dictionary.eos()]
    return get_encoder(str(GPT2 / "encoder.json"), str(GPT2 / "vocab.bpe")).decode(bpe_ids)


def test_embedded_corpus_is_deterministic_and_split():
    a = embedded_corpus.build_splits(max_documents=300)
    b = embedded_corpus.build_splits(max_documents=300)
    assert a == b
    assert sum(map(len, a.values())) == 300 and len(a["train"]) > 250
    docs = [d for split in a.values() for d in split]
    assert all("\n" not in d and len(d.split()) >= embedded_corpus.MIN_WORDS for d in docs)
    assert not any(d.lstrip().startswith(">>>") for d in docs)


def test_embedded_data_bin_has_bpe_that_decodes(data_bin, corpus_dir):
    from tokenizers import ByteLevelBPETokenizer

    dictionary, train = read_split(data_bin, "train")
    tok = ByteLevelBPETokenizer(str(data_bin / "vocab.json"), str(data_bin / "merges.txt"))
    first = [int(dictionary[i]) for i in train[0][:-1]]
    original = (corpus_dir / "raw" / "train.txt").read_text().splitlines()[0]
    assert tok.decode(first) == original


def test_wikitext_articles_split_on_titles_only():
    articles = list(wikitext_articles(WIKI.splitlines(keepends=True)))
    assert len(articles) == 2
    assert articles[0].startswith(" = Valkyria") and "= = Gameplay = =" in articles[0]
    assert articles[1].startswith(" = Tower Building")


@pytest.fixture
def wikitext_zip(tmp_path):
    root = tmp_path / "src" / "wikitext-103-raw"
    root.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        (root / f"wiki.{split}.raw").write_text(WIKI, encoding="utf-8")
    archive = tmp_path / "wikitext-103-raw-v1.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in root.iterdir():
            zf.write(path, f"wikitext-103-raw/{path.name}")
    return archive


@needs_gpt2_bpe
def test_wikitext103_download_path_on_a_local_copy(tmp_path, wikitext_zip):
    out = tmp_path / "wt"
    gpt2 = fetch_gpt2_bpe(tmp_path / "gpt2", {n: (GPT2 / n).as_uri() for n in ("encoder.json", "vocab.bpe")})
    data_bin = main(["wikitext103", "--out", str(out), "--download", "--url", wikitext_zip.as_uri(),
                     "--gpt2-dir", str(gpt2)])
    dictionary, valid = read_split(data_bin, "valid")
    assert len(valid) == 2  # two articles, one line each
    text = WIKI.splitlines(keepends=True)
    assert decode_gpt2(dictionary, valid[1].tolist()) == "".join(text[8:]).strip("\n")


@needs_gpt2_bpe
def test_wikitext103_missing_files_is_a_clear_error(tmp_path):
    with pytest.raises(PrepareError, match="wiki.train.raw"):
        main(["wikitext103", "--out", str(tmp_path), "--raw-dir", str(tmp_path), "--gpt2-dir", str(GPT2)])


@needs_gpt2_bpe
def test_pile_shards_jsonl_zst(tmp_path):
    import zstandard

    docs = [{"text": "Hello world.\nSecond line of the first document.", "meta": {"pile_set_name": "A"}},
            {"text": "   ", "meta": {}},
            {"text": "Another document, with unicode: naïve café.", "meta": {}}]
    shard = tmp_path / "00.jsonl.zst"
    shard.write_bytes(zstandard.ZstdCompressor().compress(
        "".join(json.dumps(d) + "\n" for d in docs).encode()))
    assert list(pile_documents(shard)) == [docs[0]["text"], docs[2]["text"]]
    plain = tmp_path / "val.jsonl"
    shutil.copy(shard, tmp_path / "copy.zst")
    plain.write_text(json.dumps(docs[0]) + "\n")
    data_bin = main(["pile", "--out", str(tmp_path / "pile"), "--train", str(shard), "--valid", str(plain),
                     "--gpt2-dir", str(GPT2)])
    dictionary, train = read_split(data_bin, "train")
    assert len(train) == 2
    assert decode_gpt2(dictionary, train[0].tolist()) == docs[0]["text"]  # newlines kept
    assert decode_gpt2(dictionary, train[1].tolist()) == docs[2]["text"]
