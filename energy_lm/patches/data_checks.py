"""One clear error for binarized data that cannot be right.

fairseq loads `data-bin/{split}.{bin,idx}` through `data_utils.load_indexed_dataset`.
A truncated `.bin` fails deep inside numpy ("offset must be non-negative and no greater
than buffer length"), a truncated `.idx` with an AttributeError from a destructor, and
an empty split later, wherever a batch was expected. `install()` wraps the loader so that
each of these stops at load time with one line naming the files and the cause; and a
split whose token ids do not fit the dictionary (data binarized with another dict.txt)
is caught when the split is loaded.
"""

import functools
import os
import struct

import numpy as np

from energy_lm.patches.replace import replace

_MMAP_MAGIC = b"MMIDIDX\x00\x00"
_HEADER = len(_MMAP_MAGIC) + 8 + 1 + 8  # magic, version, dtype code, count


class DataCheckError(ValueError):
    pass


def check_mmap_files(prefix: str) -> int:
    """Raise DataCheckError if prefix.idx / prefix.bin (fairseq's mmap format) do not
    describe each other; return the number of sequences."""
    idx, binary = prefix + ".idx", prefix + ".bin"
    with open(idx, "rb") as f:
        header = f.read(_HEADER)
        if len(header) < _HEADER or header[:9] != _MMAP_MAGIC:
            raise DataCheckError(f"{idx}: not a fairseq mmap index (truncated or another "
                                 f"format); re-run the binarization")
        (code,) = struct.unpack("<B", header[17:18])
        (count,) = struct.unpack("<Q", header[18:26])
    idx_size = os.path.getsize(idx)
    want_idx = _HEADER + count * (4 + 8)
    if idx_size < want_idx:
        raise DataCheckError(f"{idx}: truncated ({idx_size} bytes, its header promises "
                             f"{count} sequences = {want_idx} bytes); re-run the binarization")
    if not os.path.exists(binary):
        raise DataCheckError(f"{binary}: missing (its index {idx} exists)")
    if count == 0:
        return 0
    sizes = np.memmap(idx, dtype=np.int32, mode="r", offset=_HEADER, shape=(count,))
    pointers = np.memmap(idx, dtype=np.int64, mode="r", offset=_HEADER + 4 * count,
                         shape=(count,))
    from fairseq.data.indexed_dataset import _code_to_dtype  # the .bin element types

    itemsize = np.dtype(_code_to_dtype[code]).itemsize if code in _code_to_dtype else 1
    want_bin = int(pointers[-1]) + int(sizes[-1]) * itemsize
    bin_size = os.path.getsize(binary)
    if bin_size < want_bin:
        raise DataCheckError(f"{binary}: truncated ({bin_size} bytes, its index {idx} "
                             f"describes {want_bin}); re-run the binarization")
    return count


def _check_ids_fit(dataset, dictionary, path: str) -> None:
    """The largest token id must be a symbol of the dictionary (a cheap look at up to
    64 sequences spread over the split)."""
    n = len(dataset)
    picks = sorted({int(i) for i in np.linspace(0, n - 1, num=min(n, 64))})
    largest = max(int(dataset[i].max()) for i in picks if len(dataset[i]) > 0) if picks else -1
    if largest >= len(dictionary):
        raise DataCheckError(f"{path}: token id {largest} is not in the dictionary "
                             f"({len(dictionary)} symbols): the split was binarized with "
                             f"another dict.txt")


def _empty(path: str) -> str:
    return f"{path}: the split is empty (0 sequences); check the text it was binarized from"


def install() -> None:
    """Wrap fairseq's `data_utils.load_indexed_dataset` (idempotent)."""
    from fairseq.data import data_utils

    replace(data_utils, "load_indexed_dataset", _checked)


def _checked(load):
    @functools.wraps(load)
    def load_indexed_dataset(path, dictionary=None, *args, **kwargs):
        if os.path.exists(path + ".idx"):
            with open(path + ".idx", "rb") as f:
                is_mmap = f.read(9) == _MMAP_MAGIC or os.path.getsize(path + ".idx") < 9
            if is_mmap and check_mmap_files(path) == 0:
                raise DataCheckError(_empty(path))
        dataset = load(path, dictionary, *args, **kwargs)
        if dataset is not None and len(dataset) == 0:
            raise DataCheckError(_empty(path))
        if dataset is not None and dictionary is not None:
            _check_ids_fit(dataset, dictionary, path)
        return dataset

    return load_indexed_dataset
