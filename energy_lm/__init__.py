"""energy_lm: contrastive and energy-based language modelling for fairseq.

Importing this package registers its architectures, tasks and criterions with fairseq
(fairseq's `--user-dir` imports it the same way). It also installs what it changes in
fairseq, one ordered list: `energy_lm.patches.PATCHES`.
"""

from energy_lm import patches

patches.install_all()

# fairseq's --user-dir auto-imports models/ and tasks/ but not criterions/, so the
# package imports every component itself.
from energy_lm import criterions, models, tasks  # noqa: E402,F401
from energy_lm.data import fairseq_bpe  # noqa: E402,F401  (registers --bpe energy_byte_bpe)

__version__ = "0.1.0"
