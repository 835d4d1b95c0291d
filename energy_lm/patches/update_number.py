"""Hand fairseq's update number to the criterion as well as to the model.

The candidates of MonArc/NCE are keyed by the update number (energy_lm.sampling.
keyed_random), and the criterion draws them; but fairseq delivers that number only to
the model (`task.train_step` calls `model.set_num_updates`). Every change of the
trainer's count goes through `Trainer.set_num_updates` (after each update, and when a
checkpoint is loaded), so a criterion that defines `set_num_updates` receives each one
there: the same number the model receives at the next train step.
"""

from energy_lm.patches.replace import replace


def install() -> None:
    """Wrap `fairseq.trainer.Trainer.set_num_updates` (idempotent)."""
    from fairseq.trainer import Trainer

    replace(Trainer, "set_num_updates", _telling_the_criterion)


def _telling_the_criterion(original):
    def set_num_updates(self, num_updates):
        original(self, num_updates)
        hook = getattr(self._criterion, "set_num_updates", None)  # the unwrapped criterion
        if callable(hook):
            hook(num_updates)

    set_num_updates.__doc__ = original.__doc__
    return set_num_updates
