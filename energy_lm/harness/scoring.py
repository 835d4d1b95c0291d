"""The log-likelihood of a sequence's target tokens under the LM q or under the ELM, with
the project's scoring rule (every target in the context the LM used to predict it).

ELM: log p(x_t) = log q(x_t) - E(x_t) - log Z_t, with log Z_t either `exact` (summed over
the vocabulary at each scored position: V energies per position) or the top-k + tail
`estimate` (energy_lm.losses.topk_tail_log_z, with its standard error). Natural log.
"""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

LOG_Z_MODES = ("exact", "estimate")


@dataclass
class TargetScores:
    lm: Tensor                      # (n,) log q of each scored target
    elm: Optional[Tensor]           # (n,) log q - E - log Z (None when only q was asked)
    log_z_stderr: Optional[Tensor]  # (n,) the estimate's standard error (0 when exact)
    greedy: bool                    # every target is the most likely token (see `score`)


def _sample(src: Tensor, targets: Tensor) -> dict:
    return {"net_input": {"src_tokens": src.unsqueeze(0)}, "target": targets.unsqueeze(0)}


@torch.no_grad()
def score(model, src: Tensor, targets: Tensor, scoring: str = "lm", log_z: str = "exact",
          topk: int = 16, num_samples: int = 16, generator: Optional[torch.Generator] = None,
          chunk: int = 256) -> TargetScores:
    """src (T,) the model's input, targets (T,) targets[t] follows src[:t+1], <pad> where
    a target is not scored. `greedy`: each scored target is the argmax of q (scoring
    "lm"), of the ELM over the whole vocabulary (exact Z), or of the ELM over q's top-k
    (the estimate: a target outside q's top-k is not greedy)."""
    from energy_lm.cli.eval_elm import head_and_tail, score_batch, vocabulary_energies
    from energy_lm.losses import exact_log_z, topk_tail_log_z

    if scoring not in ("lm", "elm"):
        raise ValueError(f"scoring must be 'lm' or 'elm', got {scoring!r}")
    if log_z not in LOG_Z_MODES:
        raise ValueError(f"log_z must be one of {', '.join(LOG_Z_MODES)}, got {log_z!r}")
    sample = _sample(src, targets)
    pad = model._trunk().padding_idx if hasattr(model, "_trunk") else model.decoder.padding_idx
    scored = targets.ne(pad)
    tokens = targets[scored]
    if scoring == "lm":
        logits = model(src.unsqueeze(0))[0][0]  # (T, V)
        lprobs = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
        lm = lprobs[scored].gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        greedy = bool((lprobs[scored].argmax(-1) == tokens).all())
        return TargetScores(lm, None, None, greedy)
    if log_z == "exact":
        out, energies = vocabulary_energies(model, sample, chunk)  # (1, P, V) each
        lprobs, energies = out.lprobs[0][scored], energies[0][scored]  # (n, V)
        z = exact_log_z(lprobs, energies)
        lm = lprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        energy = out.energy[0][scored].to(lm.dtype)
        greedy = bool(((lprobs - energies.to(lprobs.dtype)).argmax(-1) == tokens).all())
        return TargetScores(lm, lm - energy - z, torch.zeros_like(z), greedy)
    out = score_batch(model, sample, head_and_tail(topk, num_samples, generator))
    lprobs = out.lprobs[0][scored]  # (n, V)
    cands = out.cand_tokens[0].t()[scored]  # (n, k + K)
    cand_e = out.cand_energy[0].t()[scored]
    head, head_e, tail_e = cands[:, :topk], cand_e[:, :topk], cand_e[:, topk:]
    head_lq = lprobs.gather(-1, head)
    z, stderr, _ = topk_tail_log_z(head_lq, head_e, tail_e)
    lm = lprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    energy = out.energy[0][scored].to(lm.dtype)
    best = head.gather(1, (head_lq - head_e.to(head_lq.dtype)).argmax(-1, keepdim=True))[:, 0]
    return TargetScores(lm, lm - energy - z, stderr, bool((best == tokens).all()))
