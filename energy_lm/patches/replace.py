"""The one way a patch changes a name of fairseq (or numpy, torch): `replace(owner, name,
wrap)` sets owner.name = wrap(the current value) once, marks the new value, and records
its dotted name in INSTALLED, the list of what this process changed (read by the test
that compares it with energy_lm.patches.PATCHES and with the docs)."""

import types
from typing import Any, Callable, List

MARK = "_energy_lm_wrapped"
INSTALLED: List[str] = []  # dotted names, in the order they were installed


def dotted(owner, name: str) -> str:
    """'fairseq.trainer.Trainer.train_step' for (Trainer, 'train_step')."""
    if isinstance(owner, types.ModuleType):
        return f"{owner.__name__}.{name}"
    return f"{owner.__module__}.{owner.__qualname__}.{name}"


def record(name: str) -> None:
    """A change that sets no attribute (an allow-list entry, an exit hook), recorded once."""
    if name not in INSTALLED:
        INSTALLED.append(name)


def replace(owner, name: str, wrap: Callable[[Any], Any]) -> None:
    """owner.name = wrap(owner.name) (None when absent), unless the current value is
    already ours: installing twice (fairseq's --user-dir importing the package again)
    changes nothing."""
    current = getattr(owner, name, None)
    if not getattr(current, MARK, False):
        new = wrap(current)
        setattr(new, MARK, True)
        setattr(owner, name, new)
    record(dotted(owner, name))
