"""Fixes for running fairseq 0.12 on a modern stack (Python 3.11, torch >= 2.6, numpy 2).

Each fix names the upstream behaviour it works around, is applied once when energy_lm
is imported, and has its own test in tests/patches/test_compat.py. Nothing here edits fairseq's
files; nothing here turns off torch's safe loading.
"""

import argparse
import atexit
import os
import queue
import threading
import types
import weakref

import numpy as np
import torch

from energy_lm.patches.replace import MARK, record, replace


def _numpy_safe_globals():
    """numpy objects that fairseq checkpoints hold in `extra_state` (e.g. the data
    iterator's RNG state, meters), under their numpy-2 and numpy-1 qualified names."""
    from numpy._core import multiarray

    entries = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar,
               (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
               (multiarray.scalar, "numpy.core.multiarray.scalar")]
    # Each dtype class (numpy.dtypes.Float64DType, ...) is pickled by reference;
    # torch's get_unsafe_globals_in_checkpoint does not report them, but loads need them.
    entries += [cls for cls in vars(np.dtypes).values()
                if isinstance(cls, type) and issubclass(cls, np.dtype)]
    return entries


def allow_fairseq_checkpoint_globals() -> None:
    """torch >= 2.6 loads with `weights_only=True`; checkpoints written by
    `fairseq-train` pickle an `argparse.Namespace` (the "args" entry) and numpy values,
    which the safe unpickler refuses ("Unsupported global: GLOBAL argparse.Namespace").
    Allow exactly those types. An omegaconf DictConfig is deliberately not allowed."""
    torch.serialization.add_safe_globals([argparse.Namespace] + _numpy_safe_globals())
    record("torch.serialization.add_safe_globals")


OPT_IN_ENV = "ENERGY_LM_ALLOW_OMEGACONF_CHECKPOINTS"


def omegaconf_checkpoint_globals() -> list:
    """What a checkpoint whose config was pickled as an omegaconf object (fairseq
    checkpoints written before the config was stored as a plain dict) needs: omegaconf's
    container and node classes, and the builtins they pickle by reference. Data classes
    only: their unpickling runs no code of the file's choosing."""
    import collections
    import typing

    from omegaconf import DictConfig, ListConfig, base, nodes

    node_types = [cls for cls in vars(nodes).values()
                  if isinstance(cls, type) and issubclass(cls, nodes.Node)]
    return [DictConfig, ListConfig, base.Metadata, base.ContainerMetadata, *node_types,
            collections.defaultdict, dict, list, int, float, str, bool, typing.Any]


def allow_omegaconf_checkpoints() -> None:
    """The explicit opt-in (environment variable ENERGY_LM_ALLOW_OMEGACONF_CHECKPOINTS=1,
    or this call): loads stay `weights_only=True`, with omegaconf's types allowed too."""
    torch.serialization.add_safe_globals(omegaconf_checkpoint_globals())


def restore_numpy_compat() -> None:
    """numpy 2 removed `np.compat`; fairseq's TokenBlockDataset (`--sample-break-mode
    eos`) and LanguagePairDataset call `np.compat.long`, which was Python's int."""
    if "compat" not in vars(np) or getattr(np.compat, MARK, False):
        replace(np, "compat", lambda _: types.SimpleNamespace(long=int))


class CpuAwareDistributedDataParallel(torch.nn.parallel.DistributedDataParallel):
    """torch's DDP, minus the device ids for a module that lives on the CPU.

    fairseq's `--ddp-backend pytorch_ddp` (its default) builds DistributedDataParallel
    with `device_ids=[args.device_id]`, which torch refuses for a CPU module ("device_ids
    and output_device arguments only work with single-device/multiple-device GPU modules
    or CPU modules"). A CPU module gets `device_ids=None` and `output_device=None`; the
    device arguments of a CUDA module are passed through unchanged."""

    def __init__(self, module, *args, **kwargs):
        on_cpu = all(p.device.type == "cpu" for p in module.parameters())
        if on_cpu:
            kwargs["device_ids"] = None
            kwargs["output_device"] = None
        super().__init__(module, *args, **kwargs)


def ddp_on_cpu() -> None:
    """Make `--ddp-backend pytorch_ddp` (and its alias c10d) work with `--cpu` (gloo)."""
    from fairseq.models import distributed_fairseq_model

    replace(distributed_fairseq_model, "DistributedDataParallel",
            lambda _: CpuAwareDistributedDataParallel)


_PREFETCH_STOP = threading.Event()
_PREFETCH_THREADS: "weakref.WeakSet" = weakref.WeakSet()


def _stoppable_consumer_run(self) -> None:
    """fairseq's BackgroundConsumer.run, but it stops when `_PREFETCH_STOP` is set: it
    never blocks on a full queue for long and it checks the flag between batches."""
    _PREFETCH_THREADS.add(self)
    if self.cuda_device is not None:
        torch.cuda.set_device(self.cuda_device)
    try:
        for item in self._source:
            while not _PREFETCH_STOP.is_set():
                try:
                    self._queue.put(item, timeout=0.05)
                    break
                except queue.Full:
                    continue
            if _PREFETCH_STOP.is_set():
                return
            self.count += 1
            if self._max_len is not None and self.count >= self._max_len:
                break
        self._queue.put(_fairseq_sentinel())
    except Exception as err:  # handed to the training loop, as fairseq does
        self._queue.put(err)


def _fairseq_sentinel():
    from fairseq.data import iterators

    return iterators._sentinel


def stop_prefetch_threads(timeout: float = 10.0) -> None:
    """Stop and join the batch-prefetch threads (run at interpreter exit)."""
    _PREFETCH_STOP.set()
    for thread in list(_PREFETCH_THREADS):
        thread.join(timeout)


def stop_prefetch_at_exit() -> None:
    """fairseq's BufferedIterator prefetches batches in a daemon thread that is still
    running when fairseq-train returns (it stops at --max-update in mid-epoch). If Python
    finalizes while that thread is inside torch, the C++ runtime aborts: `terminate called
    without an active exception`, exit -6 after a successful run (seen in the test suite
    on torch 2.13). The thread now stops at a flag that an atexit hook sets, and is joined
    before finalization."""
    from fairseq.data import iterators

    if iterators.BackgroundConsumer.run is not _stoppable_consumer_run:
        atexit.register(stop_prefetch_threads)
    replace(iterators.BackgroundConsumer, "run", lambda _: _stoppable_consumer_run)


def install() -> None:
    allow_fairseq_checkpoint_globals()
    if os.environ.get(OPT_IN_ENV, "") == "1":
        allow_omegaconf_checkpoints()
    restore_numpy_compat()
    ddp_on_cpu()
    stop_prefetch_at_exit()
