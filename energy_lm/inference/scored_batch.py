"""A batch of either family scored by the energy pass, in the layout of its scored
positions: what the tools that score a checkpoint (energy-lm-eval-elm, the harness
model, the criterions' validation estimate) read, without branching on the family."""

from dataclasses import dataclass

import torch
from torch import Tensor

from energy_lm.inference.energy_pass import energy_pass


@dataclass
class ScoredBatch:
    """One batch scored by the energy pass, in the layout of its scored positions P."""
    lprobs: Tensor       # (B, P, V) log q(. | context of p)
    tokens: Tensor       # (B, P) the data token at p
    scored: Tensor       # (B, P) bool
    energy: Tensor       # (B, P) E(x_p)
    cand_tokens: Tensor  # (B, K, P)
    cand_energy: Tensor  # (B, K, P)


def score_batch(model, sample, candidates, first_target: int = 1,
                backend: str = "auto") -> ScoredBatch:
    """The model's energy pass on a batch of its task (either family); candidates as
    `energy_pass` takes them (and first_target: a causal model's first scored position;
    a masked model scores its masked positions)."""
    net_input = sample["net_input"]
    out = energy_pass(model, net_input["src_tokens"], sample["target"], candidates,
                      segment_ids=net_input.get("segment_ids"), first_target=first_target,
                      backend=backend)
    acc = torch.promote_types(out.logits.dtype, torch.float32)
    return ScoredBatch(torch.log_softmax(out.logits.to(acc), dim=-1), out.tokens, out.scored,
                       out.energy, out.cand_tokens, out.cand_energy)


def gather_tokens(lprobs: Tensor, tokens: Tensor) -> Tensor:
    """lprobs (..., V), tokens (...) -> (...) the log-probability of each token."""
    return lprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
