"""The mark that keeps a parameter (CLAP's beta) out of weight decay.

Modules mark their parameters here; energy_lm.patches.optim_groups reads the mark when
fairseq builds its optimizer and puts the marked parameters in a group with
weight_decay = 0 (decay would pull the inverse temperature beta towards zero).
"""

from typing import Iterable, List, Union

import torch

_MARK = "_energy_lm_no_weight_decay"


def exclude_from_weight_decay(param: torch.nn.Parameter) -> torch.nn.Parameter:
    setattr(param, _MARK, True)
    return param


def is_excluded_from_weight_decay(param: torch.Tensor) -> bool:
    return getattr(param, _MARK, False)


def weight_decay_groups(params: Iterable[torch.Tensor]) -> Union[List[torch.Tensor], List[dict]]:
    """The flat list itself when nothing is marked, else two torch parameter groups."""
    params = list(params)
    excluded = [p for p in params if is_excluded_from_weight_decay(p)]
    if not excluded:
        return params
    decayed = [p for p in params if not is_excluded_from_weight_decay(p)]
    return [{"params": decayed}, {"params": excluded, "weight_decay": 0.0}]
