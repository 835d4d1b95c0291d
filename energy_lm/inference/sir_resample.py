"""The one SIR step both samplers make (sir_sampler.sir_sample on token ids, and
sir_generator inside fairseq's SequenceGenerator): K candidates drawn from the proposal
with replacement, one kept with probability proportional to exp(-E)."""

from typing import Optional, Tuple

import torch
from torch import Tensor


def draw_candidates(probs: Tensor, num_candidates: int,
                    generator: Optional[torch.Generator] = None) -> Tensor:
    """probs (B, V) -> (B, K) indices drawn with replacement."""
    return torch.multinomial(probs, num_candidates, replacement=True, generator=generator)


def resample(energies: Tensor, generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
    """energies (B, K) -> (pick (B,), weights (B, K)): candidate k kept with probability
    weights[:, k] = exp(-E_k) / sum_j exp(-E_j), in fp32 (fp64 stays)."""
    weights = torch.softmax(-energies.to(torch.promote_types(energies.dtype, torch.float32)),
                            dim=-1)
    return torch.multinomial(weights, 1, generator=generator).squeeze(1), weights
