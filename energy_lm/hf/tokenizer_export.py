"""The tokenizer of an exported model, as stock transformers loads it (`AutoTokenizer`).

- A model imported by energy-lm-from-hf keeps its source's vocabulary: its data folder
  holds the source's tokenizer files, copied as they are.
- A model trained here on a corpus of ours has HF ids = fairseq's dictionary indices
  (as fairseq's own RoBERTa conversion did): the BPE's vocab.json / merges.txt are
  re-indexed to the dictionary, fairseq's symbols (<s>, <pad>, </s>, <unk>, fillers,
  <mask>) become special tokens at their indices. A BPE token the training data never
  produced has no dictionary row (fairseq reads it as <unk>), but the tokenizer needs
  it, with every merge: dropping the merges that build such a token (an intermediate
  of tokens that do occur) changed the ids of 16 of the 23 valid documents of the
  embedded corpus (measured). So those tokens come after the dictionary's ids, and the
  exported model gives them the input row of <unk> and probability exactly 0
  (energy_lm.hf.to_hf), as fairseq does.
"""

import json
import logging
import shutil
from pathlib import Path
from typing import List

from energy_lm.hf.errors import BridgeError
from energy_lm.hf.tokenizer_files import MERGES_TXT, TOKENIZER_EXTRAS, TOKENIZER_JSON, VOCAB_JSON

logger = logging.getLogger("energy_lm.to_hf")


def copy_source_tokenizer(data: Path, dest: Path) -> None:
    for name in (TOKENIZER_JSON,) + TOKENIZER_EXTRAS:
        if (data / name).is_file():
            shutil.copy(data / name, dest / name)


def _read_merges(path: Path) -> List[List[str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.split(" ") for line in lines if line and not line.startswith("#version")]


def build_tokenizer(data: Path, dictionary, dest: Path, family: str) -> int:
    """Write dest's tokenizer for a dictionary of BPE ids; returns how many BPE tokens
    have no dictionary row (their HF ids follow the dictionary's)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    if not (data / VOCAB_JSON).is_file() or not (data / MERGES_TXT).is_file():
        raise BridgeError(f"{data} has no {VOCAB_JSON} + {MERGES_TXT}: the BPE the dictionary's "
                          f"ids come from (energy-lm-prepare copies them into data-bin/); "
                          f"give --data the data-bin the model was trained on")
    bpe_vocab = json.loads((data / VOCAB_JSON).read_text(encoding="utf-8"))
    by_id = {int(i): token for token, i in bpe_vocab.items()}
    vocab, specials = {}, []
    for index, symbol in enumerate(dictionary.symbols):
        if symbol.isdigit() and int(symbol) in by_id:
            vocab[by_id[int(symbol)]] = index
        else:
            vocab[symbol] = index
            specials.append(symbol)
    absent = sorted((i, token) for token, i in bpe_vocab.items() if token not in vocab)
    for k, (_, token) in enumerate(absent):
        vocab[token] = len(dictionary) + k
    merges = [tuple(m) for m in _read_merges(data / MERGES_TXT)]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    names = dict(bos_token="<s>" if family == "roberta" else "</s>", eos_token="</s>",
                 unk_token="<unk>", pad_token="<pad>")
    if family == "roberta":
        from transformers import RobertaTokenizerFast

        tok.post_processor = processors.RobertaProcessing(
            ("</s>", dictionary.eos()), ("<s>", dictionary.bos()))
        fast = RobertaTokenizerFast(tokenizer_object=tok, mask_token="<mask>", **names)
    else:
        from transformers import GPT2TokenizerFast

        fast = GPT2TokenizerFast(tokenizer_object=tok, **names)
    fast.save_pretrained(str(dest))
    return len(absent)


def count_absent(data: Path, dictionary) -> int:
    """BPE tokens of data's vocab.json without a dictionary row (see the module docstring)."""
    if not (data / VOCAB_JSON).is_file():
        return 0
    ids = {int(s) for s in dictionary.symbols if s.isdigit()}
    return sum(1 for i in json.loads((data / VOCAB_JSON).read_text(encoding="utf-8")).values()
               if int(i) not in ids)
