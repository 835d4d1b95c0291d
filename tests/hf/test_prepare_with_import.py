"""energy-lm-prepare with an imported model's tokenizer (`--tokenizer-from OUT`): the
documents are encoded by the source's own tokenizer into OUT's dictionary, and data-bin/
carries the tokenizer files (what energy-lm-to-hf reads back)."""

import json

import pytest

from hf_models import gpt2_import, llama_import  # noqa: F401

from energy_lm.data.errors import PrepareError
from energy_lm.data.hf_vocabulary import VocabularyMap
from energy_lm.data.prepare import main

DOCS = ["The parser reads the arguments and the encoder writes JSON.",
        "Text is wrapped at the given width; a logger records events.",
        "A literal <|endoftext|> inside a document is the end-of-text token."]


def test_text_and_jsonl_are_encoded_by_the_source_tokenizer(gpt2_import, tmp_path):
    from fairseq.data import Dictionary
    from transformers import AutoTokenizer

    _, src, out = gpt2_import
    (tmp_path / "train.txt").write_text("\n".join(DOCS) + "\n\n")
    (tmp_path / "valid.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    data_bin = main(["text", "--out", str(tmp_path / "c"), "--train", str(tmp_path / "train.txt"),
                     "--valid", str(tmp_path / "valid.jsonl"), "--tokenizer-from", str(out)])
    assert (data_bin / "dict.txt").read_text() == (out / "dict.txt").read_text()
    for name in ("tokenizer.json", "hf-vocab.json", "vocab.json", "merges.txt"):
        assert (data_bin / name).is_file()
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    vocab = VocabularyMap.load(out)
    lines = (tmp_path / "c" / "text" / "valid.bpe").read_text().splitlines()
    assert lines == [" ".join(vocab.symbols(tokenizer(d)["input_ids"])) for d in DOCS]
    assert "</s>" in lines[2].split()  # the source's end-of-text token is fairseq's </s>
    d = Dictionary.load(str(data_bin / "dict.txt"))
    assert all(d.index(sym) != d.unk() for line in lines for sym in line.split())


def test_pile_takes_the_tokenizer_too_and_refuses_a_second_bpe(gpt2_import, tmp_path):
    _, _, out = gpt2_import
    shard = tmp_path / "shard.jsonl"
    shard.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    data_bin = main(["pile", "--out", str(tmp_path / "p"), "--train", str(shard), "--valid",
                     str(shard), "--tokenizer-from", str(out)])
    assert (data_bin / "dict.txt").read_text() == (out / "dict.txt").read_text()
    with pytest.raises(PrepareError, match="--tokenizer-from brings its own BPE"):
        main(["pile", "--out", str(tmp_path / "q"), "--train", str(shard), "--tokenizer-from",
              str(out), "--gpt2-dir", str(tmp_path)])
    with pytest.raises(PrepareError, match="no tokenizer.json, dict.txt, hf-vocab.json"):
        main(["text", "--out", str(tmp_path / "r"), "--train", str(shard), "--valid", str(shard),
              "--tokenizer-from", str(tmp_path)])


def test_a_missing_input_is_one_line_and_stages_nothing(gpt2_import, tmp_path):
    _, _, out = gpt2_import
    with pytest.raises(PrepareError, match="--valid .*missing.jsonl: no such file"):
        main(["text", "--out", str(tmp_path / "c"), "--train", str(out / "dict.txt"),
              "--valid", str(tmp_path / "missing.jsonl"), "--tokenizer-from", str(out)])
    assert not (tmp_path / "c").exists() and not (tmp_path / "c.partial").exists()


def test_a_llama_tokenizer_prepares_documents_that_start_with_its_bos(llama_import, tmp_path):
    """Llama's SentencePiece-style BPE is not byte-level: it goes through its tokenizer.json;
    its post-processor puts <s> before a text, so each document is `<s> text </s>` (after
    the </s> that ends the one before: the stream Llama was trained on, EOS then BOS)."""
    from fairseq.data import Dictionary, data_utils
    from transformers import AutoTokenizer

    _, src, out = llama_import
    (tmp_path / "train.txt").write_text("\n".join(DOCS[:2]) + "\n")
    (tmp_path / "valid.txt").write_text("\n".join(DOCS[:2]) + "\n")
    data_bin = main(["text", "--out", str(tmp_path / "c"), "--train", str(tmp_path / "train.txt"),
                     "--valid", str(tmp_path / "valid.txt"), "--tokenizer-from", str(out)])
    assert not (data_bin / "vocab.json").exists()  # no byte-level BPE files to give
    vocab = VocabularyMap.load(out)
    assert vocab.document_prefix == (1,)  # <s>, read off the tokenizer's own output
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    d = Dictionary.load(str(data_bin / "dict.txt"))
    stream = data_utils.load_indexed_dataset(str(data_bin / "valid"), d)
    for i, doc in enumerate(DOCS[:2]):
        want = vocab.symbols(tokenizer(doc)["input_ids"]) + ["</s>"]
        assert want[0] == "1" and [d[j] for j in stream[i].tolist()] == want


def test_the_hub_encodes_and_decodes_through_a_non_byte_level_tokenizer(llama_import):
    from transformers import AutoTokenizer

    from energy_lm.models.transformer_lm_energy import TransformerLMEnergyModel

    text = "The parser reads the arguments, and the encoder writes JSON."
    _, src, out = llama_import
    lm = TransformerLMEnergyModel.from_pretrained(str(out))  # no other argument
    assert lm.cfg.bpe._name == "energy_hf_tokenizer"
    want = VocabularyMap.load(out).symbols(AutoTokenizer.from_pretrained(str(src))(text)["input_ids"])
    got = [lm.task.source_dictionary[i] for i in lm.encode(text).tolist()]
    assert got == want + ["</s>"] and got[0] == "1"  # <s> first, as the source encodes
    assert lm.decode(lm.encode(text)) == text
