"""Fill a masked position by the ELM rather than by the MLM head alone.

A masked model trained with MonArc or NCE has an energy E(y | masked context) beside
its MLM head q; the ELM is p(y) = q(y) exp(-E(y)) / Z. `elm_fillings` ranks candidate
fillings by p: the top `candidates` tokens of q (the energy is computed only for them,
in one paired forward), renormalised over those candidates, or over every token of the
vocabulary with candidates=None (then Z is exact).
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from energy_lm.inference.masked_pass import masked_energy_pass
from energy_lm.inference.protocol import MASKED, require


@torch.no_grad()
def elm_fillings(model, tokens: Tensor, masked_index: int, topk: int,
                 candidates: Optional[int] = 32) -> Tuple[Tensor, Tensor, Tensor]:
    """tokens (T,) with the mask symbol at masked_index. Returns (token ids (topk,), ELM
    probabilities (topk,) renormalised over the scored candidates, q's probabilities of
    the same tokens (topk,)), best first."""
    require(model, MASKED, "energy", user="scoring='elm'")
    src = tokens.unsqueeze(0)
    pad = model.trunk.padding_idx
    targets = torch.full_like(src, pad)
    features, _ = model(src, features_only=True)  # the MLM state, for q's top candidates
    logits = model.output_layer(features[0, masked_index])  # (V,)
    vocab = logits.size(-1)
    lq = torch.log_softmax(logits.float(), dim=-1)
    lq[pad] = float("-inf")  # fairseq never fills with <pad>
    count = vocab if candidates is None else min(max(candidates, topk), vocab)
    if not 1 <= topk <= count:
        raise ValueError(f"topk must be in [1, {count}], got {topk}")
    cand = lq.topk(count).indices  # (C,)
    targets[0, masked_index] = cand[0]  # a data token is required; its energy is unused
    out = masked_energy_pass(model, src, targets, candidates=cand.view(1, -1, 1))
    energy = out.cand_energy[0, :, 0].float()  # (C,)
    score = lq[cand] - energy  # log q + (-E): the ELM's unnormalised log-probability
    p = torch.softmax(score.masked_fill(~torch.isfinite(lq[cand]), float("-inf")), dim=0)
    best = p.topk(topk)
    return cand[best.indices], best.values, lq[cand[best.indices]].exp()
