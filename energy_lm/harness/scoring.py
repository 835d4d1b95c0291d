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
    """Per row of a batch of windows: sums over its scored targets (natural log)."""
    lm: Tensor                      # (B,) sum of log q
    elm: Optional[Tensor]           # (B,) sum of log q - E - log Z (None when only q was asked)
    log_z_var: Optional[Tensor]     # (B,) sum of the estimate's variances (0 when exact)
    greedy: Tensor                  # (B,) bool: every scored target is the most likely token


def _all_greedy(best: Tensor, tokens: Tensor, scored: Tensor) -> Tensor:
    return ((best == tokens) | ~scored).all(dim=-1)


def _row_sums(values: Tensor, scored: Tensor) -> Tensor:
    return torch.where(scored, values.double(), torch.zeros((), dtype=torch.float64)).sum(-1)


@torch.no_grad()
def score(model, src: Tensor, targets: Tensor, scoring: str = "lm", log_z: str = "exact",
          topk: int = 16, num_samples: int = 16, generator: Optional[torch.Generator] = None,
          chunk: int = 256) -> TargetScores:
    """src (B, T) right-padded windows, targets (B, T): for a causal model targets[:, t]
    follows src[:, :t+1]; for a masked model targets holds the data token at each masked
    position of src; <pad> where a target is not scored. `greedy`: each scored target is the
    argmax of q (scoring "lm"), of the ELM over the whole vocabulary (exact Z), or of the
    ELM over q's top-k (the estimate: a target outside q's top-k is not greedy). A row's
    figures do not depend on the other rows (padding never changes a target's score)."""
    from energy_lm.losses import exact_log_z, topk_tail_log_z
    from energy_lm.inference.log_z import head_and_tail, vocabulary_energies
    from energy_lm.inference.scored_batch import gather_tokens, score_batch

    if scoring not in ("lm", "elm"):
        raise ValueError(f"scoring must be 'lm' or 'elm', got {scoring!r}")
    if log_z not in LOG_Z_MODES:
        raise ValueError(f"log_z must be one of {', '.join(LOG_Z_MODES)}, got {log_z!r}")
    sample = {"net_input": {"src_tokens": src}, "target": targets}
    pad = model.trunk.padding_idx if hasattr(model, "trunk") else model.decoder.padding_idx
    if scoring == "lm":
        logits = model(src)[0]  # (B, T, V)
        lprobs = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
        scored = targets.ne(pad)
        return TargetScores(_row_sums(gather_tokens(lprobs, targets), scored), None, None,
                            _all_greedy(lprobs.argmax(-1), targets, scored))
    # below, the energy pass's own layout: (B, T) targets for a causal model, (B, S)
    # masked positions for a masked one
    if log_z == "exact":
        # V energies per position: a causal window's context is not scored, so its
        # positions get no candidates (from the batch's first scored target on; exact Z
        # has no randomness, so a row's figures still do not depend on its batch)
        scored_at = targets.ne(pad).any(0).nonzero()
        first = int(scored_at[0]) + 1 if scored_at.numel() > 0 else 1
        out, energies = vocabulary_energies(model, sample, chunk,
                                            first_target=first)  # (B, P, V) each
        z = exact_log_z(out.lprobs, energies)  # (B, P)
        lq = gather_tokens(out.lprobs, out.tokens)
        elm = lq - out.energy.to(lq.dtype) - z
        best = (out.lprobs - energies.to(out.lprobs.dtype)).argmax(-1)
        return TargetScores(_row_sums(lq, out.scored), _row_sums(elm, out.scored),
                            torch.zeros(src.size(0), dtype=torch.float64),
                            _all_greedy(best, out.tokens, out.scored))
    out = score_batch(model, sample, head_and_tail(topk, num_samples, generator))
    head = out.cand_tokens[:, :topk].permute(0, 2, 1)  # (B, T, k)
    head_e = out.cand_energy[:, :topk].permute(0, 2, 1)
    tail_e = out.cand_energy[:, topk:].permute(0, 2, 1)
    head_lq = out.lprobs.gather(-1, head)
    z, stderr, _ = topk_tail_log_z(head_lq, head_e, tail_e)
    lq = gather_tokens(out.lprobs, out.tokens)
    elm = lq - out.energy.to(lq.dtype) - z
    best = head.gather(-1, (head_lq - head_e.to(head_lq.dtype)).argmax(-1, keepdim=True))[..., 0]
    return TargetScores(_row_sums(lq, out.scored), _row_sums(elm, out.scored),
                        _row_sums(stderr ** 2, out.scored),
                        _all_greedy(best, out.tokens, out.scored))
