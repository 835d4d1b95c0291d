"""`--bpe energy_byte_bpe`: fairseq's `hf_byte_bpe` that also decodes fairseq's own symbols.

A model's top-k (e.g. in `fill_mask`) can include symbols of the fairseq dictionary
that are not BPE ids: `</s>` (masked like any token in MLM), `<pad>`, or the
`madeupword0000` fillers that fairseq-preprocess adds to round the vocabulary up to a
multiple of 8. fairseq's `hf_byte_bpe` and `gpt2` decoders call `int()` on every symbol
and crash on those; this one decodes runs of BPE ids and keeps other symbols as text.
"""

from dataclasses import dataclass

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
