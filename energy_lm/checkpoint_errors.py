"""One clear error for a checkpoint that cannot be read.

fairseq passes torch.load's error through unchanged: for a truncated or foreign file
that is "PytorchStreamReader failed reading zip archive: failed finding central
directory" or "invalid load key", which names neither the file nor the cause.
"""

import functools
import pickle


class CheckpointReadError(RuntimeError):
    pass


def install() -> None:
    """Wrap fairseq's `checkpoint_utils.load_checkpoint_to_cpu` (idempotent). It is the
    one function through which `--restore-file`, `--finetune-from-model`,
    `from_pretrained`, `fairseq-eval-lm` and `fairseq-generate` read checkpoints."""
    from fairseq import checkpoint_utils

    load = checkpoint_utils.load_checkpoint_to_cpu
    if getattr(load, "_energy_lm_wrapped", False):
        return

    @functools.wraps(load)
    def load_checkpoint_to_cpu(path, *args, **kwargs):
        try:
            return load(path, *args, **kwargs)
        except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as err:
            if "Weights only load failed" in str(err):
                raise  # torch's own message already explains an unsafe global
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointReadError(
                f"cannot read checkpoint {path}: the file is truncated, corrupt or not a "
                f"PyTorch checkpoint ({reason})") from err

    load_checkpoint_to_cpu._energy_lm_wrapped = True
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
