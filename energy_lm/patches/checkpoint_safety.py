"""Checkpoints that are whole or absent, resumes that survive a bad file, and no
diverged state on disk: three small wraps of fairseq's save and load path.

1. Atomic writes. fairseq writes `checkpoint_E_U.pt` through `torch_persistent_save`
   (a `.tmp` file renamed into place, never fsynced) and then *copies* it to
   `checkpoint_last.pt`, `checkpoint_best.pt`, ... with `PathManager.copy`, which writes
   the destination in place: a full disk or a signal in mid-copy leaves a truncated
   `checkpoint_last.pt` (measured). Here every one of those files is written to a
   temporary file in the same folder, flushed, fsynced and renamed over the old one
   (`os.replace` is atomic on POSIX), and the folder is fsynced: a reader sees the old
   file or the new one, never a part. A failed write leaves the old file untouched and
   raises `CheckpointWriteError` in one line (a full disk names the folder and the bytes).
2. Resume from the newest good state. Every save leaves a record in the save dir
   (`.energy-lm-save.json`): after fairseq wrote the save's first file, `copying` with
   that file's name; after its copies (`checkpoint_last.pt` among them), `done`. A
   default resume whose record says `copying` (a kill between fairseq's save and its
   copy) resumes from the file the record names; otherwise `checkpoint_last.pt` is
   resumed as it is, whatever its modification time (a renamed or copied
   `checkpoint_last.pt` is the user's). When `checkpoint_last.pt` cannot be read,
   training resumes from the readable checkpoint of the save dir that holds the most
   updates (read from each file, not from modification times), with one warning; it
   refuses only when none is readable. An explicit `--restore-file` is never
   replaced.
3. A save guard. Before fairseq saves, the updated model is checked: every parameter
   finite, the validation loss (when there is one) finite, and one forward pass on the
   last training batch finite. Otherwise the run stops, naming the term and the flags
   that matter (lr, energy weight), and the files on disk keep the last good state.
"""

import errno
import functools
import json
import logging
import math
import os
import re
import shutil
import tempfile
from typing import Callable, List, Optional

import torch

from energy_lm.patches.replace import replace

logger = logging.getLogger("energy_lm.checkpoints")

TEMP_PREFIX = ".energy-lm-partial-"


class CheckpointWriteError(OSError):
    pass


class DivergedError(FloatingPointError):
    """A non-finite loss or state, its message ending with the flags that matter (lr,
    energy weight): raised by the save guard and by the trainer's wraps, which pass one
    on unchanged rather than naming the flags twice (fairseq's train_step calls itself
    again after an error)."""


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _disk_full(err: Exception, folder: str, needed: Optional[int]) -> bool:
    """ENOSPC, or what torch's zip writer says when the disk filled under it
    ("unexpected pos ..."): judged by the free space left."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    free = shutil.disk_usage(folder).free
    return free < (needed or 0) or free < (1 << 20)


def _write_failure(path: str, err: Exception, needed: Optional[int]) -> CheckpointWriteError:
    folder = os.path.dirname(os.path.abspath(path))
    code = getattr(err, "errno", None) or errno.EIO
    if _disk_full(err, folder, needed):
        free = shutil.disk_usage(folder).free
        need = f"needs about {needed:,} bytes, " if needed else ""
        return CheckpointWriteError(
            errno.ENOSPC, f"disk full: cannot write checkpoint {os.path.basename(path)} in "
                          f"{folder} ({need}{free:,} bytes free); the previous file is untouched")
    reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
    return CheckpointWriteError(code, f"cannot write checkpoint {path}: {reason}; the previous "
                                      f"file is untouched")


def atomic_write(path: str, write: Callable, needed: Optional[int] = None) -> None:
    """Write `path` through `write(file_object)` so that it is whole or unchanged."""
    folder = os.path.dirname(os.path.abspath(path))
    _remove_stale_partials(folder)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch's writer raises RuntimeError
        _discard(tmp)
        raise _write_failure(path, err, needed) from None
    except BaseException:
        _discard(tmp)
        raise
    _fsync_dir(folder)


def _discard(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


def _remove_stale_partials(folder: str) -> None:
    """Partial files of writes a signal killed (SIGKILL leaves no chance to clean up)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if name.startswith(TEMP_PREFIX):
            _discard(os.path.join(folder, name))


def state_bytes(obj) -> int:
    """The bytes of the tensors in a (nested) checkpoint state: what a save needs."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(v) for v in obj)
    return 0


def atomic_torch_save(obj, filename, async_write: bool = False) -> None:
    """fairseq's `torch_persistent_save`, atomic and fsynced (async writes, which go
    through ioPath's own machinery, are left to fairseq)."""
    if async_write or not isinstance(filename, (str, os.PathLike)):
        return _ORIGINAL["torch_persistent_save"](obj, filename, async_write)
    atomic_write(str(filename), lambda f: torch.save(obj, f), needed=state_bytes(obj))


def atomic_copy(src: str, dst: str) -> None:
    def write(f):
        with open(src, "rb") as source:
            shutil.copyfileobj(source, f, length=16 << 20)

    atomic_write(str(dst), write, needed=os.path.getsize(src))


class _AtomicPathManager:
    """fairseq's PathManager with `copy` made atomic for local files (checkpoint_utils'
    copies to checkpoint_last.pt, checkpoint_best.pt, ...); everything else delegates."""

    def __init__(self, inner):
        self._inner = inner

    def copy(self, src_path, dst_path, overwrite=False, **kwargs):
        if not overwrite and os.path.exists(dst_path):
            return False
        if "://" in str(src_path) or "://" in str(dst_path):
            return self._inner.copy(src_path, dst_path, overwrite=overwrite, **kwargs)
        atomic_copy(str(src_path), str(dst_path))
        return True

    def __getattr__(self, name):
        return getattr(self._inner, name)


# ------------------------------------------------------------------ resume fallback

_CHECKPOINT_NAME = re.compile(r"checkpoint.*\.pt$")


def held_updates(path: str) -> Optional[int]:
    """The update count a checkpoint holds (its last optimizer_history entry), read with
    the tensors memory-mapped rather than loaded; None when the file cannot be read."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state["optimizer_history"][-1]["num_updates"])
    except Exception:  # truncated, corrupt, refused or not a training checkpoint
        return None


def readable_candidates(save_dir: str, exclude: str) -> List[str]:
    """The readable checkpoint files of a save dir but `exclude`, the most updates first:
    ordered by the state each holds, not by when it was written (a copied or renamed
    file is as new as its contents)."""
    try:
        names = [n for n in os.listdir(save_dir) if _CHECKPOINT_NAME.match(n)]
    except OSError:
        return []
    paths = [os.path.join(save_dir, n) for n in sorted(names)]
    held = {p: held_updates(p) for p in paths if os.path.isfile(p)
            and os.path.abspath(p) != os.path.abspath(exclude)}
    readable = [p for p, updates in held.items() if updates is not None]
    return sorted(readable, key=lambda p: held[p], reverse=True)  # stable: ties by name


def _load_with_fallback(original):
    @functools.wraps(original)
    def load_checkpoint(self, filename, *args, **kwargs):
        from energy_lm.patches.checkpoint_errors import CheckpointReadError, CheckpointRefusedError
        from energy_lm.models.energy_model import DictionaryMismatchError

        interrupted = _interrupted_save_file(self, filename)
        if interrupted is not None:  # a kill between a save and its copy to checkpoint_last.pt
            try:
                result = original(self, interrupted, *args, **kwargs)
                logger.info("resumed from %s: the save that wrote it was interrupted before "
                            "its copy to %s", interrupted, filename)
                return result
            except CheckpointReadError:
                pass  # then the default file, as fairseq would
        try:
            return original(self, filename, *args, **kwargs)
        except DictionaryMismatchError as err:
            raise DictionaryMismatchError(f"checkpoint {filename}: {err}") from None
        except CheckpointRefusedError:
            raise  # a file refused for what it pickles is not replaced silently
        except CheckpointReadError as err:
            return _fall_back(self, original, filename, err, args, kwargs)
        except Exception as err:
            # fairseq's trainer replaces any load error by "Cannot load model parameters
            # ... please ensure that the architectures match": say the real cause
            cause = err.__cause__ or err.__context__
            if isinstance(cause, DictionaryMismatchError):
                raise DictionaryMismatchError(f"checkpoint {filename}: {cause}") from None
            raise

    return load_checkpoint


def _is_default_resume(trainer, filename) -> bool:
    ckpt = trainer.cfg.checkpoint
    default = os.path.join(ckpt.save_dir, "checkpoint_last.pt")
    return ckpt.restore_file == "checkpoint_last.pt" and \
        os.path.abspath(filename) == os.path.abspath(default)


SAVE_RECORD = ".energy-lm-save.json"


def write_save_record(save_dir: str, state: str, first: str, updates: int) -> None:
    """The record of the save in progress (`copying`) or finished (`done`), atomic."""
    text = json.dumps({"state": state, "file": os.path.basename(first), "updates": updates})
    atomic_write(os.path.join(save_dir, SAVE_RECORD), lambda f: f.write(text.encode()))


def read_save_record(save_dir: str) -> Optional[dict]:
    try:
        with open(os.path.join(save_dir, SAVE_RECORD)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _interrupted_save_file(trainer, filename) -> Optional[str]:
    """The file an interrupted save wrote first, when the save dir's record says the save
    did not finish its copies: fairseq writes checkpoint_E_U.pt (or checkpoint_best.pt)
    first and copies it to checkpoint_last.pt after, so a kill in between leaves the
    newest state there. Nothing is guessed from modification times."""
    if not _is_default_resume(trainer, filename):
        return None
    save_dir = trainer.cfg.checkpoint.save_dir
    record = read_save_record(save_dir)
    if record is None or record.get("state") != "copying":
        return None
    first = os.path.join(save_dir, str(record.get("file", "")))
    if not os.path.isfile(first) or os.path.abspath(first) == os.path.abspath(filename):
        return None
    return first


def _fall_back(trainer, original, filename, err, args, kwargs):
    """Resume from the readable checkpoint with the most updates when the default one is
    unreadable;
    an explicit --restore-file is the user's choice and is never replaced."""
    from energy_lm.patches.checkpoint_errors import CheckpointReadError, CheckpointRefusedError

    ckpt = trainer.cfg.checkpoint
    if not _is_default_resume(trainer, filename):
        raise err
    bad = err
    for candidate in readable_candidates(ckpt.save_dir, filename):
        try:
            result = original(trainer, candidate, *args, **kwargs)
        except CheckpointRefusedError:
            continue
        except CheckpointReadError as later:
            bad = later
            continue
        logger.warning("%s cannot be read (truncated or corrupt); resumed from %s, the "
                       "readable checkpoint with the most updates", filename, candidate)
        return result
    raise CheckpointReadError(f"cannot resume: {filename} cannot be read and no other "
                              f"checkpoint in {ckpt.save_dir} can ({bad})") from err


# ------------------------------------------------------------------ save guard

def _flag_values(trainer) -> str:
    parts = [f"lr={trainer.get_lr():g}"]
    weight = getattr(getattr(trainer.criterion, "cfg", None), "energy_weight", None)
    if weight is not None:
        parts.append(f"--energy-weight {weight:g}")
    return ", ".join(parts)


def check_state_before_save(trainer, val_loss) -> None:
    """Raise FloatingPointError when the state about to be saved is not finite."""
    update = trainer.get_num_updates()
    where = f"refusing to save the checkpoint of update {update}"
    if val_loss is not None and not math.isfinite(float(val_loss)):
        raise DivergedError(f"{where}: the validation loss is {val_loss} "
                                 f"({_flag_values(trainer)})")
    for name, param in trainer.model.named_parameters():
        if not bool(torch.isfinite(param).all()):
            raise DivergedError(f"{where}: parameter {name} is not finite "
                                     f"({_flag_values(trainer)})")
    sample = getattr(trainer, "_energy_lm_last_sample", None)
    if sample is None:
        return
    loss = _probe_loss(trainer, sample)
    if loss is not None and not math.isfinite(loss):
        raise DivergedError(f"{where}: the updated model's loss on the last training "
                                 f"batch is {loss} ({_flag_values(trainer)}); the files on "
                                 f"disk keep the last finite state")


def _probe_loss(trainer, sample) -> Optional[float]:
    """The criterion's loss of the current weights on one batch (eval mode, no grad)."""
    from fairseq import metrics, utils

    model, criterion = trainer.model, trainer.criterion
    was_training = model.training
    model.eval()
    criterion.eval()
    try:
        with torch.no_grad(), metrics.aggregate(new_root=True):
            sample = trainer._prepare_sample(sample)[0] if hasattr(trainer, "_prepare_sample") \
                else utils.move_to_cuda(sample)
            if not sample:
                return None
            out = trainer.task.valid_step(sample, model, criterion)
            # a task whose valid_step gives no (loss, size, log) is not ours to judge
            loss = out[0] if isinstance(out, tuple) and len(out) == 3 else None
            return float(loss) if isinstance(loss, (torch.Tensor, float, int)) else None
    except FloatingPointError:
        return float("nan")  # an energy criterion's own finite-check fired
    finally:
        model.train(was_training)
        criterion.train(was_training)


def _remember_last_sample(original):
    @functools.wraps(original)
    def train_step(self, samples, *args, **kwargs):
        if samples:
            self._energy_lm_last_sample = samples[-1]
        try:
            return original(self, samples, *args, **kwargs)
        except DivergedError:
            raise
        except FloatingPointError as err:
            raise DivergedError(f"{err} ({_flag_values(self)})") from None

    return train_step


def _names_the_flags(original):
    """Trainer.valid_step, with the flag values added to a non-finite loss error."""
    @functools.wraps(original)
    def valid_step(self, *args, **kwargs):
        try:
            return original(self, *args, **kwargs)
        except DivergedError:
            raise
        except FloatingPointError as err:
            raise DivergedError(f"{err} in validation ({_flag_values(self)})") from None

    return valid_step


def _guarded_save(original):
    @functools.wraps(original)
    def save_checkpoint(cfg, trainer, epoch_itr, val_loss):
        check_state_before_save(trainer, val_loss)
        trainer._energy_lm_first_save = None
        result = original(cfg, trainer, epoch_itr, val_loss)
        first = trainer._energy_lm_first_save
        if first is not None:  # this rank wrote the save: its copies are done too
            write_save_record(cfg.save_dir, "done", first, trainer.get_num_updates())
        return result

    return save_checkpoint


def _records_the_first_file(original):
    """Trainer.save_checkpoint writes the save's first file; record it before the copies."""
    @functools.wraps(original)
    def save_checkpoint(self, filename, extra_state):
        written = original(self, filename, extra_state)
        if written is not None and getattr(self, "_energy_lm_first_save", "") is None:
            self._energy_lm_first_save = written
            write_save_record(os.path.dirname(written), "copying", written,
                              self.get_num_updates())
        return written

    return save_checkpoint


def _ensemble_names_the_checkpoint(original):
    """`load_model_ensemble_and_task` (hub, eval tools), naming the checkpoint when its
    dictionary is not the data's."""
    @functools.wraps(original)
    def load_model_ensemble_and_task(filenames, *args, **kwargs):
        from energy_lm.models.energy_model import DictionaryMismatchError

        try:
            return original(filenames, *args, **kwargs)
        except DictionaryMismatchError as err:
            names = ", ".join(str(f) for f in filenames)
            raise DictionaryMismatchError(f"checkpoint {names}: {err}") from None

    return load_model_ensemble_and_task


_ORIGINAL = {}  # fairseq's torch_persistent_save, for the async writes left to it


def _keeping_fairseqs(original):
    _ORIGINAL["torch_persistent_save"] = original
    return atomic_torch_save


def install() -> None:
    """Apply the three wraps (idempotent): eight names of fairseq's checkpoint_utils and
    Trainer (energy_lm.patches.PATCHES lists them)."""
    from fairseq import checkpoint_utils
    from fairseq.trainer import Trainer

    replace(checkpoint_utils, "torch_persistent_save", _keeping_fairseqs)
    replace(checkpoint_utils, "PathManager", _AtomicPathManager)
    replace(checkpoint_utils, "save_checkpoint", _guarded_save)
    replace(checkpoint_utils, "load_model_ensemble_and_task", _ensemble_names_the_checkpoint)
    replace(Trainer, "load_checkpoint", _load_with_fallback)
    replace(Trainer, "save_checkpoint", _records_the_first_file)
    replace(Trainer, "train_step", _remember_last_sample)
    replace(Trainer, "valid_step", _names_the_flags)
