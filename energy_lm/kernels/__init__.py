"""Attention kernels, each behind one public function with a `backend=` switch; every
kernel has an exact PyTorch reference (`backend="reference"`)."""

from energy_lm.kernels.layout import Alibi, PairedLayout  # noqa: F401
from energy_lm.kernels.paired_attention import paired_attention  # noqa: F401
