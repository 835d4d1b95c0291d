"""One energy pass for both model families, in the layout of the scored positions.

`score_batch(model, sample, candidates)` runs the model's energy pass
(`energy_lm.models.scoring.energy_pass`, either family) and returns a
`ScoredBatch`: log q at every scored position, the data token, whether it is scored, its
energy, and the candidates' tokens and energies. The tools that score a checkpoint
(energy-lm-eval-elm, the harness model) call it and never branch on the family.
"""

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from energy_lm.losses import exact_log_z
from energy_lm.models.scoring import energy_pass
from energy_lm.sampling.proposal import sample_tokens


@dataclass
class ScoredBatch:
    """One batch scored by the energy pass, in the layout of its scored positions P."""
    lprobs: Tensor       # (B, P, V) log q(. | context of p)
    tokens: Tensor       # (B, P) the data token at p
    scored: Tensor       # (B, P) bool
    energy: Tensor       # (B, P) E(x_p)
    cand_tokens: Tensor  # (B, K, P)
    cand_energy: Tensor  # (B, K, P)


def score_batch(model, sample, candidates, first_target: int = 1) -> ScoredBatch:
    """The model's energy pass on a batch of its task (either family); candidates as
    `causal_energy_pass` takes them (and first_target: a causal
    model's first scored position; a masked model scores its masked positions)."""
    net_input = sample["net_input"]
    out = energy_pass(model, net_input["src_tokens"], sample["target"], candidates,
                      segment_ids=net_input.get("segment_ids"), first_target=first_target)
    acc = torch.promote_types(out.logits.dtype, torch.float32)
    return ScoredBatch(torch.log_softmax(out.logits.to(acc), dim=-1), out.tokens, out.scored,
                       out.energy, out.cand_tokens, out.cand_energy)


def head_and_tail(topk: int, num_samples: int, generator: Optional[torch.Generator]) -> Callable:
    """Candidates from the proposal logits (B, P, V): q's top-k tokens, then num_samples
    draws from q restricted to the other tokens -> (B, topk + K, P)."""
    def choose(logits: Tensor) -> Tensor:
        head = logits.topk(topk, dim=-1).indices  # (B, P, k)
        tail_logits = logits.float().scatter(-1, head, float("-inf"))
        tail = sample_tokens(tail_logits, num_samples, generator=generator)  # (B, P, K)
        return torch.cat([head, tail], dim=-1).permute(0, 2, 1)

    return choose


def vocabulary_energies(model, sample, chunk: int = 256, first_target: int = 1):
    """E(y) of every vocabulary entry y at every scored position, in passes of `chunk`
    entries: (ScoredBatch of the last pass, energies (B, P, V))."""
    vocab = model.trunk.embed_tokens.num_embeddings
    energies, out = [], None
    for first in range(0, vocab, chunk):
        ids = torch.arange(first, min(first + chunk, vocab), device=sample["target"].device)

        def every(logits: Tensor, ids=ids) -> Tensor:  # (B, P, V) -> (B, c, P)
            return ids.view(1, -1, 1).expand(logits.size(0), -1, logits.size(1))

        out = score_batch(model, sample, every, first_target)
        energies.append(out.cand_energy)
    return out, torch.cat(energies, dim=1).permute(0, 2, 1)


def exact_log_z_of(model, sample, chunk: int = 256) -> Tensor:
    """log Z at every scored position by scoring each vocabulary entry there: (B, P)."""
    out, energies = vocabulary_energies(model, sample, chunk)
    return exact_log_z(out.lprobs, energies)


def gather_tokens(lprobs: Tensor, tokens: Tensor) -> Tensor:
    return lprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
