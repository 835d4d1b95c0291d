"""One warning when a validation shows the ELM above its LM beyond its error.

fairseq-train reduces the criterion's metrics per batch (a warning there would repeat for
every batch) and a validation's figures once, which it hands to the task's
`post_validate(model, stats, aggregator)` when the task has one. No fairseq task does;
`FairseqTask` gains one that passes the figures to the criterions'
`warn_if_the_energy_hurts` (one line when `elm_gain`, the ELM's estimated NLL minus the
LM's, is above 0 by more than twice its standard error). A task that defines its own
`post_validate` keeps it.
"""

from energy_lm.patches.replace import replace


def install() -> None:
    from fairseq.tasks import FairseqTask

    replace(FairseqTask, "post_validate", _warning)


def _warning(_absent):
    def post_validate(self, model, stats, aggregator):
        """Called by fairseq-train once per validation with its figures (energy_lm:
        warns when the ELM is above its LM beyond its error)."""
        from energy_lm.criterions.residual_energy import warn_if_the_energy_hurts

        warn_if_the_energy_hurts(stats)

    return post_validate
