"""One clear error for a checkpoint that cannot be read.

fairseq passes torch.load's error through unchanged. For a truncated or foreign file
that is "[Errno 22] Invalid argument", "failed finding central directory" or, worse,
"Weights only load failed ... Unsupported operand 0" with the advice to retry
with safe loading switched off, none of which names the file or the cause.

A refused type ("Unsupported global: GLOBAL os.system ...") means the file pickles
something outside the allow-list: it is refused (nothing in it ran: the safe unpickler
stops before calling anything) with one line naming the file and the global; when the
global is one of omegaconf's (a legacy fairseq checkpoint), the line names the opt-in.
"""

import functools
import pickle
import re

from energy_lm.patches.replace import replace


class CheckpointReadError(RuntimeError):
    pass


class CheckpointRefusedError(CheckpointReadError):
    pass


# torch words it "Unsupported global: GLOBAL x.y" or, for a module it blocks outright
# (os, posix, subprocess, ...), "Trying to load unsupported GLOBAL posix.system ..."
_GLOBAL = re.compile(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)")


def _refusal(path, err: Exception) -> CheckpointRefusedError:
    from energy_lm.patches.compat import OPT_IN_ENV

    found = _GLOBAL.search(str(err))
    name = found.group(1) if found else "a type outside the allow-list"
    if name.startswith("omegaconf.") or name == "typing.Any":
        advice = (f"it is a legacy fairseq checkpoint with an omegaconf config; if you trust "
                  f"it, set {OPT_IN_ENV}=1 (README: Safe loading)")
    else:
        advice = "loading it could run code chosen by the file; it was not loaded"
    return CheckpointRefusedError(f"refusing checkpoint {path}: it pickles {name}, which is not "
                                  f"on energy_lm's allow-list of checkpoint types; {advice}")


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

    replace(checkpoint_utils, "load_checkpoint_to_cpu", _naming_the_file)


def _naming_the_file(load):
    @functools.wraps(load)
    def load_checkpoint_to_cpu(path, *args, **kwargs):
        try:
            return load(path, *args, **kwargs)
        except FileNotFoundError:
            raise
        except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError) as err:
            if _GLOBAL.search(str(err)):
                raise _refusal(path, err) from None
            raise CheckpointReadError(
                f"cannot read checkpoint {path}: the file is truncated, corrupt or not a "
                f"PyTorch checkpoint ({_reason(err)})") from err

    return load_checkpoint_to_cpu
