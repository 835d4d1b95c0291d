"""The energy pass of a masked LM: at each masked position i (target != pad), the data
token and each candidate stand at i, see every other position of the masked input and
themselves; the MLM head's distribution at i is the proposal."""

from typing import Optional

import torch
from torch import Tensor

from energy_lm.inference.energy_output import EnergyOutput
from energy_lm.inference.pass_parts import (
    check_candidates, choose_candidates, data_stream, left_aligned, proposal_logsumexp,
    token_log_q)
from energy_lm.sampling.keyed_random import SampleKeys


def masked_positions(targets: Tensor, pad: int):
    """targets (B, T), pad where not masked -> positions (B, S), valid (B, S), S = the
    largest count of masked positions in a row (at least 1)."""
    return left_aligned(targets.ne(pad), min_slots=1)


def masked_energy_pass(model, src_tokens: Tensor, targets: Tensor, candidates=None, *,
                       num_samples: int = 1, backend: str = "auto",
                       sample_keys: Optional[SampleKeys] = None) -> EnergyOutput:
    """Score, at every masked position (targets != pad), the data token and candidates.

    src_tokens: (B, T) the masked input; targets: (B, T) the data tokens at masked
    positions, pad elsewhere. candidates: (B, K, S) in the layout of `masked_positions`,
    a function of the detached MLM logits (B, S, V) returning them, or None to sample
    num_samples per position from the MLM head's detached fp32 softmax (keyed by
    sample_keys and the absolute position when given, as the causal pass).
    """
    pad = model.trunk.padding_idx
    positions, valid = masked_positions(targets, pad)  # (B, S)
    bsz, slots = positions.shape
    data_tokens = targets.gather(1, positions)  # (B, S), pad in invalid slots
    paired = model.paired_pass(src_tokens, backend=backend, sample_keys=sample_keys)
    with paired.recording():
        features, head_states = data_stream(model, src_tokens)  # (B, T, C) each
    where = positions.unsqueeze(-1).expand(-1, -1, features.size(-1))
    state = features.gather(1, where)  # (B, S, C): the MLM state at each masked position
    logits = model.output_layer(state)  # (B, S, V)
    lse = proposal_logsumexp(logits)  # (B, S)
    candidates = choose_candidates(candidates, logits, positions, num_samples,
                                   paired.sample_keys)
    check_candidates(candidates, bsz, slots)
    k = candidates.size(1)
    # invalid slots score the pad token at some position; their outputs are ignored
    cand_tokens = torch.cat([data_tokens.unsqueeze(1), candidates], dim=1)  # (B, 1+K, S)
    cand_pos = positions.repeat(1, k + 1)  # (B, (1+K)*S)
    head = model.energy_head
    cand_features = model.candidate_features(
        paired, src_tokens, cand_tokens.reshape(bsz, -1), cand_pos,
        pre_norm=head.reads_pre_norm).view(bsz, k + 1, slots, -1)
    context = log_q = None
    if head.needs_context:  # the state whose MLM head proposed (B, 1, S, C)
        context = (head_states.gather(1, where) if head.reads_pre_norm else state).unsqueeze(1)
        log_q = token_log_q(logits, cand_tokens, lse)
    energies = head(cand_features, context, log_q)  # (B, 1+K, S)
    return EnergyOutput(positions, valid, data_tokens, logits, lse, energies[:, 0], candidates,
                        energies[:, 1:])
