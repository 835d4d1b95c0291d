"""Pieces both families' energy passes share: the data stream, the candidates, log q of
given tokens, and left-aligned slots."""

from typing import Optional

import torch
from torch import Tensor

from energy_lm.sampling.keyed_random import SampleKeys, keyed_uniform
from energy_lm.sampling.proposal import sample_tokens

_LSE_ROWS = 64  # rows per logsumexp chunk without autograd: a (64, V) fp32 temporary


def proposal_logsumexp(logits: Tensor) -> Tensor:
    """logits (B, S, V) -> (B, S) logsumexp in fp32 (float64 stays): log q(y) = logit(y)
    minus it. Computed once per pass, for the energy head's log q and for the LM's
    cross-entropy (which reads it with its graph). Without a graph it runs over chunks of
    rows: a full fp32 copy of bf16 logits is (B, S, V) (200 MiB at 1,024 tokens of a 50k
    vocabulary) to read one number per row."""
    acc = torch.promote_types(logits.dtype, torch.float32)
    if torch.is_grad_enabled() and logits.requires_grad:
        return torch.logsumexp(logits.to(acc), dim=-1)
    flat = logits.reshape(-1, logits.size(-1))
    lse = torch.cat([torch.logsumexp(flat[i:i + _LSE_ROWS].to(acc), dim=-1)
                     for i in range(0, flat.size(0), _LSE_ROWS)])
    return lse.view(logits.shape[:-1])


def token_log_q(logits: Tensor, tokens: Tensor, lse: Tensor) -> Tensor:
    """logits (B, S, V), tokens (B, K, S), lse (B, S) their `proposal_logsumexp` ->
    (B, K, S) detached log q(token) in lse's dtype."""
    picked = logits.detach().gather(-1, tokens.transpose(1, 2)).to(lse.dtype)  # (B, S, K)
    return (picked - lse.detach().unsqueeze(-1)).transpose(1, 2)


def left_aligned(flags: Tensor, min_slots: int = 0):
    """flags (B, P) bool -> (slots (B, F) int64 indices into P, valid (B, F) bool): each
    row's flagged positions first, in order; F = the largest count in a row (at least
    min_slots). Reading F costs one host sync (fairseq's own MLM head syncs too, by
    boolean indexing)."""
    counts = flags.sum(dim=1)
    num = max(int(counts.max()) if flags.numel() else 0, min_slots)
    order = torch.sort((~flags).to(torch.int8), dim=1, stable=True).indices  # flagged first
    slots = order[:, :num]
    valid = torch.arange(num, device=flags.device)[None, :] < counts[:, None]
    return slots, valid


def data_stream(model, src_tokens: Tensor, segment_ids: Optional[Tensor] = None):
    """Stage 1 of the paired forward (run inside `paired.recording()`). Returns
    (features, head_states), both (B, T, C): the final states (for the LM head) and the
    states the energy head reads, the same tensor unless the head reads the trunk's
    states before the LM's final norm (the last of fairseq's time-first `inner_states`).
    It runs through model's forward, which under DistributedDataParallel is what reduces
    the gradients."""
    extra = {} if segment_ids is None else {"segment_ids": segment_ids}
    if not model.energy_head.reads_pre_norm:
        features, _ = model(src_tokens, features_only=True, **extra)
        return features, features
    features, out = model(src_tokens, features_only=True, return_all_hiddens=True, **extra)
    return features, out["inner_states"][-1].transpose(0, 1)


def choose_candidates(candidates, proposer: Optional[Tensor], positions: Tensor,
                      num_samples: int, sample_keys: Optional[SampleKeys]) -> Tensor:
    """The candidates (B, K, P) of P scored positions whose proposal logits are proposer
    (B, P, V; None where a position has no proposal): candidates as given (B, K, P), a
    function of the detached proposal logits returning them, or None to draw num_samples
    per position from the proposal's detached fp32 softmax, keyed by (seed, update,
    example id, position, k) when sample_keys are given, else by torch's global RNG."""
    if candidates is not None and not callable(candidates):
        return candidates
    if proposer is None:
        raise ValueError("choosing or sampling candidates needs a proposal at every scored "
                         "position (start >= 1: position 0 has none)")
    if callable(candidates):  # chosen from the proposal itself (top-k, tail samples)
        return candidates(proposer.detach())
    uniforms = (keyed_uniform(sample_keys, positions, num_samples)
                if sample_keys is not None else None)  # (B, P, K)
    return sample_tokens(proposer, num_samples, uniforms=uniforms).permute(0, 2, 1)


def check_candidates(candidates: Tensor, bsz: int, slots: int) -> None:
    if candidates.dim() != 3 or candidates.shape[0] != bsz or candidates.shape[2] != slots:
        raise ValueError(f"candidates must be (B={bsz}, K, {slots}), got "
                         f"{tuple(candidates.shape)}")
