"""Byte-level BPE for the embedded corpus (trained here, offline, with `tokenizers`), and
the GPT-2 BPE for WikiText / the Pile. Both write what fairseq-preprocess reads: one
document per line, as space-separated BPE ids. fairseq decodes them again through its
`energy_byte_bpe` (ours, `energy_lm.data.fairseq_bpe`) or `gpt2` BPE, so `fill_mask` prints words.
"""

from pathlib import Path
from typing import Callable, Iterable, List

VOCAB_FILE, MERGES_FILE = "vocab.json", "merges.txt"


def train_byte_level_bpe(train_file: Path, out_dir: Path, vocab_size: int = 2000) -> Path:
    """Train a GPT-2 style byte-level BPE (no prefix space) on `train_file`; writes
    vocab.json and merges.txt into out_dir. Deterministic for the same input."""
    from tokenizers import ByteLevelBPETokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = ByteLevelBPETokenizer(add_prefix_space=False)
    tokenizer.train([str(train_file)], vocab_size=vocab_size, min_frequency=2,
                    show_progress=False, special_tokens=[])
    tokenizer.save_model(str(out_dir))
    return out_dir


def byte_level_encoder(bpe_dir: Path) -> Callable[[str], List[int]]:
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer(str(bpe_dir / VOCAB_FILE), str(bpe_dir / MERGES_FILE),
                                      add_prefix_space=False)
    return lambda text: tokenizer.encode(text).ids


def gpt2_encoder(gpt2_dir: Path) -> Callable[[str], List[int]]:
    """GPT-2's BPE through fairseq's own implementation (as `--bpe gpt2` decodes it)."""
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    encoder = get_encoder(str(gpt2_dir / "encoder.json"), str(gpt2_dir / "vocab.bpe"))
    return encoder.encode


def write_bpe_lines(documents: Iterable[str], encode: Callable[[str], List[int]],
                    out_file: Path) -> int:
    """One line of BPE ids per non-empty document; returns the number written."""
    count = 0
    with open(out_file, "w", encoding="utf-8") as out:
        for doc in documents:
            ids = encode(doc)
            if ids:
                out.write(" ".join(map(str, ids)) + "\n")
                count += 1
    return count
