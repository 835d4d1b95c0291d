"""Model-level API of the residual energy-based LMs: LM logits, data energies and
candidate energies in one call (a data pass and a candidate pass that reuses the data
stream's keys/values; see energy_lm.models.energy_model).

Causal models (docs/methods.md): for tokens x (B, T), position p's candidate y
stands where x_p stands and sees x_<p (and itself); its energy is E(y, x_<p). The LM
proposal for position p is logits[:, p - 1]. Scoring rule, shared by the criterions,
energy-lm-eval-elm and SIR: every target is scored with exactly the context the LM used
to predict it, including a block's last target (position T, past the input) and the
`</s>` that closes a packed document. Position 0 has no proposal inside the block: its
candidates see only themselves, and a rich energy head gets a zero context and log q = 0
there. The seed head reads the states before the LM's final norm (the same choices
of state otherwise).

Masked models: at each masked position i (target != pad), the data token and each
candidate stand at i, see every other position of the masked input and themselves; the
MLM head's distribution at i is the proposal.
"""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from energy_lm.kernels.visibility import candidate_document
from energy_lm.sampling.proposal import sample_tokens
from energy_lm.sampling.keyed_random import SampleKeys, keyed_uniform


@dataclass
class EnergyOutput:
    """One energy pass of either family, in the layout of its scored slots S: a causal
    pass scores the same positions p in every row (`causal_energy_pass`), a masked pass
    each row's masked positions, left-aligned (`masked_energy_pass`)."""
    positions: Tensor    # (B, S) int64: the input position each slot scores
    scored: Tensor       # (B, S) bool: a real token (not padding, not an empty slot)
    tokens: Tensor       # (B, S) the data token scored there (pad where not scored)
    logits: Tensor       # (B, S, V) the LM's proposal for that token (causal position 0,
                         # which has none: zeros, a uniform q)
    energy: Tensor       # (B, S) fp32: E(x | its context)
    cand_tokens: Tensor  # (B, K, S)
    cand_energy: Tensor  # (B, K, S) fp32: E(y | the same context)


def is_masked_model(model) -> bool:
    """RoBERTa-family (masked) rather than a causal LM."""
    return hasattr(getattr(model, "encoder", None), "sentence_encoder")


_LOG_Q_ROWS = 64  # rows per logsumexp chunk: a (64, V) fp32 temporary, not (B, S, V)


def _token_log_q(logits: Tensor, tokens: Tensor) -> Tensor:
    """logits (B, S, V), tokens (B, K, S) -> (B, K, S) detached log q(token), in fp32
    (float64 stays). Taken as logit - logsumexp with the logsumexp over chunks of rows:
    a full log-softmax would write a (B, S, V) fp32 tensor per batch (200 MiB at 1,024
    tokens of a 50k vocabulary) to read K + 1 numbers per row from it."""
    acc = torch.promote_types(logits.dtype, torch.float32)
    logits = logits.detach()
    flat = logits.reshape(-1, logits.size(-1))
    lse = torch.cat([torch.logsumexp(flat[i:i + _LOG_Q_ROWS].to(acc), dim=-1)
                     for i in range(0, flat.size(0), _LOG_Q_ROWS)])
    picked = logits.gather(-1, tokens.transpose(1, 2)).to(acc)  # (B, S, K)
    return (picked - lse.view(logits.shape[:-1]).unsqueeze(-1)).transpose(1, 2)


def _sample(logits: Tensor, positions: Tensor, num_samples: int,
            sample_keys: Optional[SampleKeys]) -> Tensor:
    """logits (B, P, V) -> (B, K, P) draws from their detached fp32 softmax, keyed by
    (seed, update, example id, position, k) when sample_keys are given, else from
    torch's global RNG."""
    uniforms = (keyed_uniform(sample_keys, positions, num_samples)
                if sample_keys is not None else None)  # (B, P, K)
    return sample_tokens(logits, num_samples, uniforms=uniforms).permute(0, 2, 1)


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


def _data_stream(model, src_tokens: Tensor, extra: dict):
    """Stage 1: the data stream. Returns (features, head_states), both (B, T, C): the
    final states (for the LM head) and the states the energy head reads, the same
    tensor unless the head reads the trunk's states before the LM's final norm (the
    last of fairseq's `inner_states`, time-first)."""
    if not model.energy_head.reads_pre_norm:
        features, _ = model(src_tokens, features_only=True, **extra)
        return features, features
    features, out = model(src_tokens, features_only=True, return_all_hiddens=True, **extra)
    return features, out["inner_states"][-1].transpose(0, 1)


def causal_energy_pass(model, src_tokens: Tensor, candidates: Optional[Tensor] = None, *,
                       targets: Optional[Tensor] = None, num_samples: int = 1, start: int = 1,
                       segment_ids: Optional[Tensor] = None,
                       backend: str = "auto",
                       sample_keys: Optional[SampleKeys] = None,
                       first_target: int = 1) -> EnergyOutput:
    """Score every target in the context the LM used to predict it, with candidates.

    Two layouts:
    - targets (B, T) given (a language-modelling batch: targets[:, t] follows
      src_tokens[:, :t+1]): the scored positions are p = 1..T, the token at p is
      targets[:, p - 1], proposed by logits[:, p - 1]. Position T lies past the input: the
      block's last target is scored there, in the candidate stream.
      With first_target f > 1 only positions f..T are scored (the candidates, whose
      cost grows with the positions, stand there only): what a caller that scores the
      end of each row (a continuation after a context) needs; each position's figures
      are those of the full call.
    - targets None (scoring a sequence): positions p = start..T-1, the token at p is
      src_tokens[:, p].
    The data stream gives E(x_p) where its state at p has exactly that context (src_tokens
    holds the token at p, and p opens no document of a packed block); everywhere else (the
    last target of a block or of a right-padded row, the `</s>` that closes a packed
    document) the token goes through the candidate stream, which sees x_<p inside row
    p - 1's document (energy_lm.kernels.paired_attention). Padding, batch size and
    packing therefore never change a target's energy.

    candidates: (B, K, P); a function of the detached proposal logits (B, P, V) that
    returns them; or None to draw num_samples per position from the LM's detached fp32
    softmax (exact ancestral sampling at temperature 1); with sample_keys
    the draws are a function of (seed, update, example id, position, k), else they come
    from torch's global RNG.
    """
    bsz, tgt_len = src_tokens.shape
    device = src_tokens.device
    pad = model.trunk.padding_idx
    if targets is not None:
        if targets.shape != src_tokens.shape:
            raise ValueError(f"targets must have the shape of src_tokens {tuple(src_tokens.shape)}, "
                             f"got {tuple(targets.shape)}")
        if not 1 <= first_target <= tgt_len:
            raise ValueError(f"first_target must be in [1, {tgt_len}], got {first_target}")
        start, end = first_target, tgt_len + 1
        tokens = targets[:, first_target - 1:]
    else:
        if not 0 <= start < tgt_len:
            raise ValueError(f"start must be in [0, {tgt_len}), got {start}")
        end = tgt_len
        tokens = src_tokens[:, start:]
    positions = torch.arange(start, end, device=device)  # (P,) the scored positions
    num_pos = positions.numel()
    in_stream = positions.clamp(max=tgt_len - 1)  # the data-stream row read at p
    # the data stream's state at p is the target's own context iff the token stands there
    # and p opens no new document (then the stream saw x_<p of that same document)
    from_stream = (positions < tgt_len)[None, :] & src_tokens[:, in_stream].eq(tokens)
    if segment_ids is not None:  # the candidate's document is that of row p - 1
        own_document = candidate_document(positions, tgt_len)
        from_stream = from_stream & segment_ids[:, in_stream].eq(segment_ids[:, own_document])
    scored = tokens.ne(pad)  # (B, P)
    # the positions whose energy the data stream cannot give, left-aligned
    fix_slots, fix_valid = left_aligned(~from_stream & scored)  # (B, F)
    fix_tokens = tokens.gather(1, fix_slots).masked_fill(~fix_valid, pad)  # (B, F)
    fix_pos = positions[fix_slots]  # (B, F)

    paired = model.paired_pass(src_tokens, segment_ids, backend=backend, sample_keys=sample_keys)
    with paired.recording():
        extra = {} if segment_ids is None else {"segment_ids": segment_ids}
        features, head_states = _data_stream(model, src_tokens, extra)  # (B, T, C) each
    logits = model.output_layer(features)  # (B, T, V)
    # the proposal of position p is logits[:, p - 1] (a view: the positions are a range);
    # position 0 has none
    proposer = logits[:, start - 1:end - 1] if start > 0 else None  # (B, P, V)
    if callable(candidates):  # chosen from the proposal itself (top-k, tail samples)
        if proposer is None:
            raise ValueError("choosing candidates from the proposal needs start >= 1")
        candidates = candidates(proposer.detach())
    if candidates is None:
        if proposer is None:
            raise ValueError("sampling candidates needs start >= 1 (position 0 has no "
                             "proposal)")
        candidates = _sample(proposer, positions, num_samples, paired.sample_keys)  # (B, K, P)
    if candidates.dim() != 3 or candidates.shape[0] != bsz or candidates.shape[2] != num_pos:
        raise ValueError(f"candidates must be (B={bsz}, K, {num_pos}), got "
                         f"{tuple(candidates.shape)}")
    k = candidates.size(1)
    cand_tokens = torch.cat([candidates.reshape(bsz, k * num_pos), fix_tokens], dim=1)
    cand_pos = torch.cat([positions.repeat(k).unsqueeze(0).expand(bsz, -1), fix_pos], dim=1)
    cand_features = model.candidate_features(paired, src_tokens, cand_tokens, cand_pos,
                                             pre_norm=model.energy_head.reads_pre_norm)
    fix_features = cand_features[:, k * num_pos:]  # (B, F, C)
    cand_features = cand_features[:, : k * num_pos].view(bsz, k, num_pos, -1)  # (B, K, P, C)

    head = model.energy_head
    state = head_states[:, in_stream]  # (B, P, C); replaced below where not the context
    context = log_q = cand_log_q = fix_context = fix_log_q = None
    if head.needs_context:
        both = torch.cat([tokens.unsqueeze(1), candidates], dim=1)  # (B, 1 + K, P)
        if start > 0:
            context = head_states[:, start - 1:end - 1]
            all_log_q = _token_log_q(proposer, both)
        else:  # position 0: zero context and log q
            context = head_states.new_zeros(state.shape)
            context[:, 1:] = head_states[:, :end - 1]
            all_log_q = F.pad(_token_log_q(logits[:, :end - 1], both[:, :, 1:]), (1, 0))
        log_q, cand_log_q = all_log_q[:, 0], all_log_q[:, 1:]
        fix_context = context.gather(1, fix_slots.unsqueeze(-1).expand(-1, -1, context.size(-1)))
        fix_log_q = log_q.gather(1, fix_slots)
    energy = head(state, context, log_q)  # (B, P)
    if fix_slots.size(1) > 0:
        fix_energy = head(fix_features, fix_context, fix_log_q)  # (B, F)
        placed = torch.zeros_like(energy).scatter_add(
            1, fix_slots, torch.where(fix_valid, fix_energy, torch.zeros_like(fix_energy)))
        energy = torch.where(from_stream, energy, placed)
    cand_energy = head(cand_features, None if context is None else context.unsqueeze(1),
                       cand_log_q)  # (B, K, P)
    if proposer is None:  # position 0 proposes nothing: zero logits there
        proposer = torch.cat([logits.new_zeros(bsz, 1, logits.size(-1)), logits[:, :end - 1]], 1)
    return EnergyOutput(positions.expand(bsz, -1), scored, tokens, proposer, energy, candidates,
                        cand_energy)


def energy_pass(model, src_tokens: Tensor, targets: Tensor, candidates=None, *,
                num_samples: int = 1, backend: str = "auto",
                sample_keys: Optional[SampleKeys] = None, segment_ids: Optional[Tensor] = None,
                first_target: int = 1) -> EnergyOutput:
    """A batch of the model's task (src_tokens, targets (B, T)) scored in one call, for
    either family: every target of a causal batch, the masked positions of a masked one
    (`EnergyModelMixin.energy_pass` says what it returns). `model` may be fairseq's
    distributed wrapper: the data stream runs through its forward, which is what makes
    DistributedDataParallel reduce the gradients (a method of the wrapped model would
    run the inner model's forward, and each rank would step on its own gradient)."""
    if is_masked_model(model):
        if segment_ids is not None:
            raise ValueError("segment_ids (packed documents) are an option of a causal "
                             "model; a masked model sees its whole input")
        if first_target != 1:  # score targets[:, f - 1:] only, as a causal model does
            targets = targets.clone()
            targets[:, :first_target - 1] = model.trunk.padding_idx
        return masked_energy_pass(model, src_tokens, targets, candidates,
                                  num_samples=num_samples, backend=backend,
                                  sample_keys=sample_keys)
    return causal_energy_pass(model, src_tokens, candidates, targets=targets,
                              num_samples=num_samples, segment_ids=segment_ids,
                              backend=backend, sample_keys=sample_keys,
                              first_target=first_target)


def masked_positions(targets: Tensor, pad: int):
    """targets (B, T), pad where not masked -> positions (B, S), valid (B, S), S = the
    largest count of masked positions in a row (at least 1)."""
    return left_aligned(targets.ne(pad), min_slots=1)


def masked_energy_pass(model, src_tokens: Tensor, targets: Tensor, candidates: Optional[Tensor] = None,
                       *, num_samples: int = 1, backend: str = "auto",
                       sample_keys: Optional[SampleKeys] = None) -> EnergyOutput:
    """Score, at every masked position (targets != pad), the data token and candidates.

    src_tokens: (B, T) the masked input; targets: (B, T) the data tokens at masked
    positions, pad elsewhere. candidates: (B, K, S) in the layout of `masked_positions`,
    a function of the detached MLM logits (B, S, V) returning them, or None to sample num_samples per position from the MLM head's detached fp32 softmax
    (keyed by sample_keys and the absolute position when given, as causal_energy_pass).
    """
    pad = model.trunk.padding_idx
    positions, valid = masked_positions(targets, pad)  # (B, S)
    bsz, slots = positions.shape
    data_tokens = targets.gather(1, positions)  # (B, S), pad in invalid slots
    paired = model.paired_pass(src_tokens, backend=backend, sample_keys=sample_keys)
    with paired.recording():
        features, head_states = _data_stream(model, src_tokens, {})  # (B, T, C) each
    where = positions.unsqueeze(-1).expand(-1, -1, features.size(-1))
    state = features.gather(1, where)  # (B, S, C): the MLM state at each masked position
    logits = model.output_layer(state)  # (B, S, V)
    if callable(candidates):
        candidates = candidates(logits.detach())
    if candidates is None:
        candidates = _sample(logits, positions, num_samples, paired.sample_keys)  # (B, K, S)
    if candidates.dim() != 3 or candidates.shape[0] != bsz or candidates.shape[2] != slots:
        raise ValueError(f"candidates must be (B={bsz}, K, {slots}), got "
                         f"{tuple(candidates.shape)}")
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
        log_q = _token_log_q(logits, cand_tokens)
    energies = head(cand_features, context, log_q)  # (B, 1+K, S)
    return EnergyOutput(positions, valid, data_tokens, logits, energies[:, 0], candidates,
                        energies[:, 1:])
