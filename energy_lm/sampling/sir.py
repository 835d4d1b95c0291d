"""Generation with a residual energy-based LM: sampling-importance-resampling (SIR).

At every step: draw K candidates y_1..y_K ~ q(. | prefix) (with replacement), score each
with the energy head (the candidate stream at the next position), and keep one with
probability proportional to exp(-E(y_k)). As K grows this approaches sampling from the
ELM q * exp(-E) / Z; K = 1 is plain ancestral sampling from q (no energy is computed and
no extra random number is drawn, so a fixed seed gives exactly the LM's sample).

Like fairseq's sampling, the padding symbol is never proposed: SIR targets the ELM
conditioned on y != <pad>, i.e. q * exp(-E) / Z renormalised without <pad>. Training's
samples and evaluation's Z use the whole vocabulary; the two agree wherever q(<pad>) is
negligible, as it is for any trained LM (<pad> is never a target). Each step runs the
model on the whole prefix (no incremental state): meant for research-scale generation.
"""

from typing import List, Optional

import torch
from torch import Tensor


def _step_energies(model, prefix: Tensor, candidates: Tensor) -> Tensor:
    """Energies of candidates (B, K) standing at position T of prefix (B, T) -> (B, K)."""
    from energy_lm.models.scoring import causal_energy_pass

    bsz, k = candidates.shape
    # the candidate position must exist in the data stream: extend the prefix by one
    # placeholder token; causal attention keeps it out of the candidates' view
    extended = torch.cat([prefix, candidates[:, :1]], dim=1)  # (B, T+1)
    out = causal_energy_pass(model, extended, candidates.unsqueeze(-1),
                             start=extended.size(1) - 1)
    return out.cand_energy.squeeze(-1)  # (B, K)


@torch.no_grad()
def sir_sample(model, prefix: Tensor, max_new_tokens: int, num_candidates: int = 1,
               eos: Optional[int] = None, pad: Optional[int] = None,
               generator: Optional[torch.Generator] = None) -> List[Tensor]:
    """Continue each row of prefix (B, T) by up to max_new_tokens tokens.

    Returns one 1-D tensor per row: the prefix and its continuation, up to and including
    the first eos (when given).
    """
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    model.eval()
    tokens = prefix
    done = torch.zeros(prefix.size(0), dtype=torch.bool, device=prefix.device)
    for _ in range(max_new_tokens):
        logits, _ = model(tokens)  # (B, T, V)
        logits = logits[:, -1].float()
        if pad is not None:
            logits[:, pad] = float("-inf")
        probs = torch.softmax(logits, dim=-1)
        candidates = torch.multinomial(probs, num_candidates, replacement=True,
                                       generator=generator)  # (B, K)
        if num_candidates == 1:
            chosen = candidates[:, 0]
        else:
            weights = torch.softmax(-_step_energies(model, tokens, candidates), dim=-1)
            pick = torch.multinomial(weights, 1, generator=generator)  # (B, 1)
            chosen = candidates.gather(1, pick).squeeze(1)
        if eos is not None:
            chosen = torch.where(done, torch.full_like(chosen, eos), chosen)
            done = done | chosen.eq(eos)
        tokens = torch.cat([tokens, chosen.unsqueeze(1)], dim=1)
        if eos is not None and bool(done.all()):
            break
    rows = []
    for row in tokens:
        if eos is not None:
            ends = (row[prefix.size(1):] == eos).nonzero()
            if len(ends):
                row = row[: prefix.size(1) + int(ends[0]) + 1]
        rows.append(row)
    return rows
