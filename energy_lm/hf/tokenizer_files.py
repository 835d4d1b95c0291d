"""The tokenizer files of a bridged model.

Hugging Face keeps a tokenizer as `tokenizer.json` (the `tokenizers` library's format;
transformers 5 writes nothing else); fairseq's hub BPE (`energy_byte_bpe`) reads a
byte-level BPE as `vocab.json` + `merges.txt`, which fairseq's `from_pretrained` finds in
the model folder by those names. Only byte-level BPE (GPT-2's and RoBERTa's kind) is
both; a causal model's other tokenizers (Llama's SentencePiece-style BPE, a byte-level BPE
with its own split rule) go through their tokenizer.json (`--bpe energy_hf_tokenizer`),
and RoBERTa's must be byte-level BPE (refused otherwise, with the field that says so).
"""

import json
import shutil
from pathlib import Path
from typing import Dict, List, Optional

from energy_lm.hf.errors import BridgeError

TOKENIZER_JSON = "tokenizer.json"
# what transformers writes beside tokenizer.json (the tokenizer's class and special tokens)
TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json")
VOCAB_JSON, MERGES_TXT = "vocab.json", "merges.txt"


def tokenizer_folder(src: Path, scratch: Path) -> Path:
    """A folder with SRC's tokenizer as tokenizer.json: SRC itself, or (a folder with only
    the older files, vocab.json + merges.txt) what transformers converts it to in scratch."""
    if (Path(src) / TOKENIZER_JSON).is_file():
        return Path(src)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(src))
    except (OSError, ValueError, TypeError) as err:
        raise BridgeError(f"{src} has no tokenizer that transformers can load: "
                          f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
                          ) from None
    tokenizer.save_pretrained(str(scratch))
    if not (scratch / TOKENIZER_JSON).is_file():
        raise BridgeError(f"{src}: transformers wrote no {TOKENIZER_JSON} for its tokenizer")
    return scratch


def read_tokenizer(folder: Path) -> Dict:
    return json.loads((Path(folder) / TOKENIZER_JSON).read_text(encoding="utf-8"))


def _byte_level(part: Optional[Dict]) -> bool:
    if not part:
        return False
    if part.get("type") == "ByteLevel":
        return True
    return any(_byte_level(p) for p in part.get("pretokenizers", []) or [])


def check_byte_level_bpe(tokenizer: Dict) -> None:
    """One line naming the tokenizer.json field that makes it something else."""
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE":
        raise BridgeError(f"tokenizer.json model.type is {model.get('type')!r}, not a byte-level "
                          f"BPE: fairseq's hub BPE here (energy_byte_bpe) reads only GPT-2-style "
                          f"byte-level BPE")
    if not _byte_level(tokenizer.get("pre_tokenizer")):
        kind = (tokenizer.get("pre_tokenizer") or {}).get("type")
        raise BridgeError(f"tokenizer.json pre_tokenizer is {kind!r}, not ByteLevel: not a "
                          f"byte-level BPE (energy_byte_bpe reads only GPT-2-style BPE)")
    if model.get("byte_fallback") or model.get("dropout") or tokenizer.get("normalizer"):
        field = ("model.byte_fallback" if model.get("byte_fallback") else "model.dropout"
                 if model.get("dropout") else "normalizer")
        raise BridgeError(f"tokenizer.json {field} is set: energy_byte_bpe has no such step, "
                          f"so fairseq would tokenize differently")


def gpt2_byte_level(tokenizer: Dict) -> bool:
    """Whether fairseq's byte-level BPE (energy_byte_bpe: GPT-2's split rule, no prefix
    space, from vocab.json + merges.txt) tokenizes as this tokenizer.json does; other
    tokenizers of a causal model go through their tokenizer.json (energy_hf_tokenizer)."""
    try:
        check_byte_level_bpe(tokenizer)
    except BridgeError:
        return False
    pre = tokenizer.get("pre_tokenizer") or {}
    return (pre.get("type") == "ByteLevel" and not pre.get("add_prefix_space", False)
            and pre.get("use_regex", True) is not False)


def document_prefix(tokenizer: Dict, size: int) -> List[int]:
    """The ids the tokenizer's post-processor puts before a text (Llama's BOS; none for
    GPT-2), read off its own output."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(json.dumps(tokenizer))
    bare = tok.encode("a b", add_special_tokens=False).ids
    full = tok.encode("a b", add_special_tokens=True).ids
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return [i for i in full[:start] if i < size]
    return []


def added_token_id(tokenizer: Dict, content: str) -> Optional[int]:
    for token in tokenizer.get("added_tokens", []) or []:
        if token.get("content") == content:
            return int(token["id"])
    return tokenizer.get("model", {}).get("vocab", {}).get(content)


def merges_of(tokenizer: Dict) -> List[str]:
    """The merges as "a b" lines (tokenizer.json holds them as strings or as pairs)."""
    return [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]


def write_bpe_files(tokenizer: Dict, folder: Path) -> None:
    """vocab.json + merges.txt of a byte-level BPE (what fairseq's hub BPE reads)."""
    vocab = dict(tokenizer["model"]["vocab"])
    for token in tokenizer.get("added_tokens", []) or []:
        vocab.setdefault(token["content"], int(token["id"]))
    (folder / VOCAB_JSON).write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / MERGES_TXT).write_text("#version: 0.2\n" + "\n".join(merges_of(tokenizer)) + "\n",
                                     encoding="utf-8")


def copy_tokenizer(src: Path, dest: Path, tokenizer: Dict) -> None:
    """tokenizer.json (as read), the files transformers keeps beside it, and for a
    GPT-2-style byte-level BPE vocab.json and merges.txt."""
    (dest / TOKENIZER_JSON).write_text(json.dumps(tokenizer, ensure_ascii=False),
                                       encoding="utf-8")
    for name in TOKENIZER_EXTRAS:
        if (Path(src) / name).is_file():
            shutil.copy(Path(src) / name, dest / name)
    if gpt2_byte_level(tokenizer):
        write_bpe_files(tokenizer, dest)
