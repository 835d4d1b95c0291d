"""The energy pass of a causal LM: every target scored in the context the LM used to
predict it, with candidates (docs/methods.md).

For tokens x (B, T), position p's candidate y stands where x_p stands and sees x_<p (and
itself); its energy is E(y, x_<p). The LM proposal for position p is logits[:, p - 1].
Scoring rule, shared by the criterions, energy-lm-eval-elm and SIR: every target is
scored with exactly the context the LM used to predict it, including a block's last
target (position T, past the input) and the `</s>` that closes a packed document.
Position 0 has no proposal inside the block: its candidates see only themselves, and a
head that reads the context gets a zero context and log q = 0 there. The seed head reads
the states before the LM's final norm (the same choices of state otherwise).
"""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from energy_lm.inference.energy_output import EnergyOutput
from energy_lm.inference.pass_parts import (
    check_candidates, choose_candidates, data_stream, left_aligned, proposal_logsumexp,
    token_log_q)
from energy_lm.kernels.visibility import candidate_document
from energy_lm.sampling.keyed_random import SampleKeys


@dataclass
class CausalSlots:
    """Which tokens a causal pass scores, and where each one's energy comes from."""
    start: int            # the first scored position p
    end: int              # one past the last
    positions: Tensor     # (P,) the scored positions
    tokens: Tensor        # (B, P) the token scored at p
    scored: Tensor        # (B, P) bool: not padding
    in_stream: Tensor     # (P,) the data-stream row read at p
    from_stream: Tensor   # (B, P) bool: the data stream's state at p is the token's context
    fix_slots: Tensor     # (B, F) the other scored positions, left-aligned (indices into P)
    fix_valid: Tensor     # (B, F) bool
    fix_tokens: Tensor    # (B, F) their tokens (pad where not valid)
    fix_pos: Tensor       # (B, F) their positions


def causal_slots(src_tokens: Tensor, targets: Optional[Tensor], start: int, first_target: int,
                 segment_ids: Optional[Tensor], pad: int) -> CausalSlots:
    """targets given: positions first_target..T, the token at p is targets[:, p - 1];
    else positions start..T-1, the token at p is src_tokens[:, p]. The data stream gives
    E(x_p) where its state at p has exactly that context (src_tokens holds the token at
    p, and p opens no document of a packed block); everywhere else (a block's last
    target, the last of a right-padded row, the `</s>` that closes a packed document) the
    token goes through the candidate stream, which sees x_<p inside row p - 1's document.
    Padding, batch size and packing therefore never change a target's energy."""
    tgt_len = src_tokens.size(1)
    if targets is not None:
        if targets.shape != src_tokens.shape:
            raise ValueError(f"targets must have the shape of src_tokens "
                             f"{tuple(src_tokens.shape)}, got {tuple(targets.shape)}")
        if not 1 <= first_target <= tgt_len:
            raise ValueError(f"first_target must be in [1, {tgt_len}], got {first_target}")
        start, end, tokens = first_target, tgt_len + 1, targets[:, first_target - 1:]
    else:
        if not 0 <= start < tgt_len:
            raise ValueError(f"start must be in [0, {tgt_len}), got {start}")
        end, tokens = tgt_len, src_tokens[:, start:]
    positions = torch.arange(start, end, device=src_tokens.device)
    in_stream = positions.clamp(max=tgt_len - 1)
    from_stream = (positions < tgt_len)[None, :] & src_tokens[:, in_stream].eq(tokens)
    if segment_ids is not None:  # the candidate's document is that of row p - 1
        own_document = candidate_document(positions, tgt_len)
        from_stream = from_stream & segment_ids[:, in_stream].eq(segment_ids[:, own_document])
    scored = tokens.ne(pad)
    fix_slots, fix_valid = left_aligned(~from_stream & scored)
    fix_tokens = tokens.gather(1, fix_slots).masked_fill(~fix_valid, pad)
    return CausalSlots(start, end, positions, tokens, scored, in_stream, from_stream,
                       fix_slots, fix_valid, fix_tokens, positions[fix_slots])


def _head_inputs(slots: CausalSlots, head_states: Tensor, proposal: Tensor, lse: Tensor,
                 candidates: Tensor):
    """The energy head's context (B, P, C) and log q of the data token (B, P) and of the
    candidates (B, K, P); a head that reads only the token's state needs none of them."""
    start, end = slots.start, slots.end
    both = torch.cat([slots.tokens.unsqueeze(1), candidates], dim=1)  # (B, 1 + K, P)
    all_log_q = token_log_q(proposal, both, lse)
    if start > 0:
        context = head_states[:, start - 1:end - 1]
    else:  # position 0 proposes nothing: zero context and log q there
        context = head_states.new_zeros(head_states.size(0), end, head_states.size(-1))
        context[:, 1:] = head_states[:, :end - 1]
        all_log_q[:, :, 0] = 0
    return context, all_log_q[:, 0], all_log_q[:, 1:]


def _data_energies(head, slots: CausalSlots, head_states: Tensor, fix_features: Tensor,
                   context: Optional[Tensor], log_q: Optional[Tensor]) -> Tensor:
    """E(x_p) (B, P): from the data stream where its state is the token's context, from
    the candidate stream (fix_features (B, F, C)) elsewhere."""
    energy = head(head_states[:, slots.in_stream], context, log_q)  # (B, P)
    if slots.fix_slots.size(1) == 0:
        return energy
    fix_context = fix_log_q = None
    if context is not None:
        index = slots.fix_slots.unsqueeze(-1).expand(-1, -1, context.size(-1))
        fix_context, fix_log_q = context.gather(1, index), log_q.gather(1, slots.fix_slots)
    fix_energy = head(fix_features, fix_context, fix_log_q)  # (B, F)
    placed = torch.zeros_like(energy).scatter_add(
        1, slots.fix_slots, torch.where(slots.fix_valid, fix_energy, torch.zeros_like(fix_energy)))
    return torch.where(slots.from_stream, energy, placed)


def causal_energy_pass(model, src_tokens: Tensor, candidates=None, *,
                       targets: Optional[Tensor] = None, num_samples: int = 1, start: int = 1,
                       segment_ids: Optional[Tensor] = None, backend: str = "auto",
                       sample_keys: Optional[SampleKeys] = None,
                       first_target: int = 1) -> EnergyOutput:
    """Score every target in the context the LM used to predict it, with candidates.

    targets (B, T) given (a language-modelling batch: targets[:, t] follows
    src_tokens[:, :t+1]): the scored positions are p = first_target..T (position T, past
    the input, scores the block's last target); targets None (scoring a sequence):
    p = start..T-1, the token at p is src_tokens[:, p] (see `causal_slots`).
    candidates: (B, K, P); a function of the detached proposal logits (B, P, V) that
    returns them; or None to draw num_samples per position from the LM's detached fp32
    softmax (exact ancestral sampling at temperature 1), keyed by sample_keys when given.
    """
    bsz = src_tokens.size(0)
    slots = causal_slots(src_tokens, targets, start, first_target, segment_ids,
                         model.trunk.padding_idx)
    start, end, num_pos = slots.start, slots.end, slots.positions.numel()
    paired = model.paired_pass(src_tokens, segment_ids, backend=backend, sample_keys=sample_keys)
    with paired.recording():
        features, head_states = data_stream(model, src_tokens, segment_ids)  # (B, T, C) each
    logits = model.output_layer(features)  # (B, T, V)
    # the proposal of position p is logits[:, p - 1] (a view); position 0 has none (zero
    # logits stand there in the output: a uniform q)
    proposer = logits[:, start - 1:end - 1] if start > 0 else None  # (B, P, V)
    proposal = proposer if proposer is not None else torch.cat(
        [logits.new_zeros(bsz, 1, logits.size(-1)), logits[:, :end - 1]], 1)
    lse = proposal_logsumexp(proposal)  # (B, P): the head's log q and the LM's loss
    candidates = choose_candidates(candidates, proposer, slots.positions, num_samples,
                                   paired.sample_keys)
    check_candidates(candidates, bsz, num_pos)
    k = candidates.size(1)
    cand_tokens = torch.cat([candidates.reshape(bsz, k * num_pos), slots.fix_tokens], dim=1)
    cand_pos = torch.cat([slots.positions.repeat(k).unsqueeze(0).expand(bsz, -1),
                          slots.fix_pos], dim=1)
    head = model.energy_head
    cand_features = model.candidate_features(paired, src_tokens, cand_tokens, cand_pos,
                                             pre_norm=head.reads_pre_norm)
    context = log_q = cand_log_q = None
    if head.needs_context:
        context, log_q, cand_log_q = _head_inputs(slots, head_states, proposal, lse,
                                                  candidates)
    energy = _data_energies(head, slots, head_states, cand_features[:, k * num_pos:],
                            context, log_q)
    cand_energy = head(cand_features[:, :k * num_pos].view(bsz, k, num_pos, -1),
                       None if context is None else context.unsqueeze(1), cand_log_q)
    return EnergyOutput(slots.positions.expand(bsz, -1), slots.scored, slots.tokens, proposal,
                        lse, energy, candidates, cand_energy)
