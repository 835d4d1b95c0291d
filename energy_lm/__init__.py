"""energy_lm: contrastive and energy-based language modelling for fairseq.

Importing this package registers its architectures, tasks and criterions with fairseq
(fairseq's `--user-dir` imports it the same way). It also applies the small set of
fixes fairseq 0.12 needs on a modern stack (`energy_lm.patches.compat`).
"""

from energy_lm.patches import compat

compat.apply()

from energy_lm.patches import (  # noqa: E402
    checkpoint_errors,
    checkpoint_safety,
    data_checks,
    elm_fill_mask,
    epoch_workers,
    optim_groups,
    resume_batches,
    shared_cpu,
    sir_generation,
    update_number,
)

checkpoint_errors.install()
checkpoint_safety.install()
data_checks.install()
elm_fill_mask.install()
epoch_workers.install()
optim_groups.install()
resume_batches.install()
shared_cpu.install()
sir_generation.install()
update_number.install()

# fairseq's --user-dir auto-imports models/ and tasks/ but not criterions/, so the
# package imports every component itself.
from energy_lm import criterions, models, tasks  # noqa: E402,F401
from energy_lm.data import fairseq_bpe  # noqa: E402,F401  (registers --bpe energy_byte_bpe)

__version__ = "0.1.0"
