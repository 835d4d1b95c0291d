"""One clear error for a checkpoint that cannot be read.

fairseq passes torch.load's error through unchanged. For a truncated or foreign file
that is "[Errno 22] Invalid argument", "failed finding central directory" or, worse,
"Weights only load failed ... Unsupported operand 0" with the advice to retry
with safe loading switched off, none of which names the file or the cause. A refused type
("Unsupported global: ...") is a different problem and keeps torch's own message.
"""

import functools
import pickle


class CheckpointReadError(RuntimeError):
    pass


_TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _reason(err: Exception) -> str:
    """The informative line of torch's message, without its weights_only boilerplate."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(_TORCH_BOILERPLATE)]
    return useful[0] if useful else (lines[0] if lines else type(err).__name__)


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
        except FileNotFoundError:
            raise
        except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError) as err:
            if "Unsupported global" in str(err):
                raise  # a type outside the allow-list: torch's message says which
            raise CheckpointReadError(
                f"cannot read checkpoint {path}: the file is truncated, corrupt or not a "
                f"PyTorch checkpoint ({_reason(err)})") from err

    load_checkpoint_to_cpu._energy_lm_wrapped = True
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
