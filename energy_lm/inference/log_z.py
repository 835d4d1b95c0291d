"""log Z of the ELM at scored positions: exact (every vocabulary entry scored), and the
candidates of its estimate (q's top-k and samples of the tail)."""

from typing import Callable, Optional

import torch
from torch import Tensor

from energy_lm.inference.scored_batch import score_batch
from energy_lm.losses import exact_log_z
from energy_lm.sampling.proposal import sample_tokens


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
