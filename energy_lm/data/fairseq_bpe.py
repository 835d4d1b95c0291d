"""Our fairseq BPEs: `energy_byte_bpe` (below) and `energy_hf_tokenizer` (any tokenizer.json).

`--bpe energy_byte_bpe`: fairseq's `hf_byte_bpe` that also decodes fairseq's own symbols.

A model's top-k (e.g. in `fill_mask`) can include symbols of the fairseq dictionary
that are not BPE ids: `</s>` (masked like any token in MLM), `<pad>`, or the
`madeupword0000` fillers that fairseq-preprocess adds to round the vocabulary up to a
multiple of 8. fairseq's `hf_byte_bpe` and `gpt2` decoders call `int()` on every symbol
and crash on those; this one decodes runs of BPE ids and keeps other symbols as text.
"""

from dataclasses import dataclass, field

from fairseq.dataclass import FairseqDataclass
from fairseq.data.encoders import register_bpe
from fairseq.data.encoders.hf_byte_bpe import HuggingFaceByteLevelBPE, HuggingFaceByteLevelBPEConfig


@dataclass
class ByteBPEConfig(HuggingFaceByteLevelBPEConfig):
    pass


@register_bpe("energy_byte_bpe", dataclass=ByteBPEConfig)
class ByteBPE(HuggingFaceByteLevelBPE):
    def decode(self, x: str) -> str:
        pieces, ids = [], []
        for symbol in x.split():
            if symbol.isdigit():
                ids.append(int(symbol))
                continue
            if ids:
                pieces.append(self.bpe.decode(ids))
                ids = []
            pieces.append(symbol if not pieces else " " + symbol)
        if ids:
            pieces.append(self.bpe.decode(ids))
        return "".join(pieces)


@dataclass
class TokenizerJsonConfig(FairseqDataclass):
    hf_tokenizer_json: str = field(
        default="", metadata={"help": "a tokenizer.json (the tokenizers library's format) "
                                      "with the hf-vocab.json of energy-lm-from-hf beside it"})


@register_bpe("energy_hf_tokenizer", dataclass=TokenizerJsonConfig)
class TokenizerJsonBPE:
    """`--bpe energy_hf_tokenizer`: any Hugging Face tokenizer (SentencePiece-style BPE with
    byte fallback, Unigram, byte-level BPE with its own split rule, ...) through its own
    tokenizer.json, the dictionary's symbols being the source's ids as decimal strings
    (energy_lm.data.hf_vocabulary). encode leaves out the source's special tokens (the
    document prefix is energy-lm-prepare's and the hub's to add); decode maps symbols back
    to the source's ids and reads their text (special tokens and symbols that stand for
    no source token are not text)."""

    def __init__(self, cfg):
        from pathlib import Path

        from tokenizers import Tokenizer

        from energy_lm.data.hf_vocabulary import VocabularyMap

        path = Path(cfg.hf_tokenizer_json or "")
        if not path.is_file():
            raise ValueError(f"--hf-tokenizer-json {str(path)!r}: no such file (give the "
                             f"tokenizer.json of the model or its data-bin)")
        self.tokenizer = Tokenizer.from_file(str(path))
        self.vocab = VocabularyMap.load(path.parent)

    def encode(self, x: str) -> str:
        ids = self.tokenizer.encode(x, add_special_tokens=False).ids
        return " ".join(self.vocab.symbols(ids))

    def decode(self, x: str) -> str:
        # the source's special tokens (BOS, EOS) are not text
        return self.tokenizer.decode(self.vocab.source_ids(x.split()), skip_special_tokens=True)

    def is_beginning_of_word(self, x: str) -> bool:
        return self.decode(x).startswith(" ")
