"""A Hugging Face vocabulary as a fairseq dictionary, and back.

Every source token id `i` is the dictionary symbol `str(i)` (fairseq's own convention
for GPT-2's BPE, so `fairseq-preprocess` and the hub's BPE keep working), except the
source's special tokens that fairseq has a symbol of its own for:

- causal LMs: the end-of-text token is `</s>`, the symbol that starts every block
  fairseq builds and ends every document it binarizes; `<s>`, `<pad>`, `<unk>` and the
  `madeupword` fillers (the dictionary is padded to a multiple of 8, as
  fairseq-preprocess pads it) stand for no source token and get probability exactly 0
  (`--output-mask specials`);
- RoBERTa: `<s>`, `<pad>`, `</s>`, `<unk>` and `<mask>`, which fairseq's masked_lm task
  appends after dict.txt, where fairseq's RoBERTa has it.

The map is saved beside dict.txt as `hf-vocab.json` (the source's vocabulary size and
its special ids), so that `energy-lm-prepare ... --tokenizer-from` and `energy-lm-to-hf`
read it back. (In data/, below the bridge: preparing a corpus needs it too.)
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from torch import Tensor

from energy_lm.data.errors import PrepareError

MAP_FILE = "hf-vocab.json"
DICT_FILE = "dict.txt"
FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # indices 0-3 of every fairseq dictionary
MASK = "<mask>"
FILLER = "madeupword{:04d}"


@dataclass(frozen=True)
class VocabularyMap:
    """size: the source vocabulary (rows of its embedding); specials: fairseq symbol ->
    the source id it stands for; pad_to: the dictionary's size is rounded up to a
    multiple of it with fillers (1: no fillers)."""
    size: int
    specials: Dict[str, int] = field(default_factory=dict)
    pad_to: int = 1
    # the source ids its tokenizer puts before a document's text (Llama's BOS), which
    # energy-lm-prepare --tokenizer-from puts before each document: fairseq then reads
    # `</s> BOS text ... </s>` where the source was trained on `BOS text ... EOS`
    document_prefix: Tuple[int, ...] = ()

    def __post_init__(self):
        ids = list(self.specials.values())
        unknown = set(self.specials) - set(FAIRSEQ_SPECIALS) - {MASK}
        if unknown:
            raise PrepareError(f"no fairseq symbol for {sorted(unknown)}")
        if any(not 0 <= i < self.size for i in self.document_prefix):
            raise PrepareError(f"document prefix {list(self.document_prefix)} is not made of "
                               f"ids of a {self.size}-token vocabulary")
        if len(set(ids)) != len(ids) or any(not 0 <= i < self.size for i in ids):
            raise PrepareError(f"special token ids {self.specials} are not distinct ids of a "
                              f"{self.size}-token vocabulary")

    def symbol(self, source_id: int) -> str:
        for name, i in self.specials.items():
            if i == source_id:
                return name
        return str(source_id)

    def dict_lines(self) -> List[str]:
        """dict.txt: every source id without a fairseq symbol, in id order, then the
        fillers; `<mask>` is not in it (fairseq's masked_lm task appends it)."""
        named = set(self.specials.values())
        lines = [f"{i} 1" for i in range(self.size) if i not in named]
        total = len(FAIRSEQ_SPECIALS) + len(lines)
        fillers = -total % self.pad_to
        return lines + [f"{FILLER.format(k)} 0" for k in range(fillers)]

    def dictionary(self):
        """The fairseq Dictionary a model of this vocabulary is built with (RoBERTa's
        with `<mask>` appended, as its task does)."""
        from fairseq.data import Dictionary

        d = Dictionary()
        for line in self.dict_lines():
            symbol, count = line.rsplit(" ", 1)
            d.add_symbol(symbol, n=int(count))
        if MASK in self.specials:
            d.add_symbol(MASK)
        return d

    def fairseq_index(self, dictionary) -> Tensor:
        """(size,) long: the dictionary index of each source id (a one-to-one map)."""
        index = torch.tensor([dictionary.index(self.symbol(i)) for i in range(self.size)])
        if bool((index == dictionary.unk()).any()) and "<unk>" not in self.specials:
            missing = [i for i in range(self.size) if index[i] == dictionary.unk()]
            raise PrepareError(f"the dictionary has no symbol for source ids {missing[:5]}")
        return index

    def symbols(self, source_ids) -> List[str]:
        """The dictionary symbols of a sequence of source ids."""
        names = {i: name for name, i in self.specials.items()}
        return [names.get(i) or str(i) for i in source_ids]

    def save(self, folder: Path) -> None:
        (folder / DICT_FILE).write_text("\n".join(self.dict_lines()) + "\n")
        (folder / MAP_FILE).write_text(json.dumps(
            {"size": self.size, "specials": self.specials, "pad_to": self.pad_to,
             "document_prefix": list(self.document_prefix)}, indent=1) + "\n")

    @classmethod
    def load(cls, folder: Path) -> "VocabularyMap":
        path = Path(folder) / MAP_FILE
        if not path.is_file():
            raise PrepareError(f"{folder} has no {MAP_FILE} (made by energy-lm-from-hf)")
        saved = json.loads(path.read_text())
        return cls(int(saved["size"]), {k: int(v) for k, v in saved["specials"].items()},
                   int(saved.get("pad_to", 1)),
                   tuple(int(i) for i in saved.get("document_prefix", ())))

    def with_prefix(self, prefix) -> "VocabularyMap":
        return VocabularyMap(self.size, dict(self.specials), self.pad_to, tuple(prefix))

    def source_ids(self, symbols) -> List[int]:
        """The source ids of dictionary symbols (fairseq's specials by the map); symbols
        that stand for no source token (fillers, an unmapped <pad>) are left out."""
        ids = []
        for symbol in symbols:
            if symbol.isdigit():
                ids.append(int(symbol))
            elif symbol in self.specials:
                ids.append(self.specials[symbol])
        return ids

    @classmethod
    def of_dictionary(cls, dictionary, specials: Dict[str, int]) -> "VocabularyMap":
        """The map of a dictionary whose unmasked symbols are decimal ids and the given
        specials, if they cover 0..n-1 exactly once (an imported vocabulary); else None."""
        ids = [int(s) for s in dictionary.symbols if s.isdigit()]
        ids += list(specials.values())
        n = len(ids)
        if n == 0 or sorted(ids) != list(range(n)):
            return None
        return cls(n, dict(specials))
