"""Training objectives as pure tensor functions (no fairseq): the criterions in
`energy_lm.criterions` are thin adapters around them."""

from energy_lm.losses.cwt import cwt_candidates, cwt_loss, cwt_loss_from_rows
from energy_lm.losses.energy import (
    guarded_exp_neg,
    log_z_estimate,
    monarc_terms,
    nce_terms,
)
from energy_lm.losses.energy_scale import fit_energy_scale, scaled_nll
from energy_lm.losses.partition import exact_log_z, topk_tail_log_z

__all__ = [
    "cwt_candidates",
    "cwt_loss",
    "cwt_loss_from_rows",
    "exact_log_z",
    "fit_energy_scale",
    "guarded_exp_neg",
    "log_z_estimate",
    "monarc_terms",
    "nce_terms",
    "scaled_nll",
    "topk_tail_log_z",
]
