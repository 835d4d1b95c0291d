"""The data stream's key/value cache for sampling a causal energy LM token by token.

One step of SIR proposes K candidates for each row's next position. They run through the
layers as queries at that position against the cached keys of the row plus their own key
(the candidate stream of the paired forward, energy_lm.modules.paired_pass, served from
the cache instead of a recorded data stream): one batched forward of K tokens, no rerun
of the prefix. A candidate's keys and values at every layer are exactly those the data
stream would compute for that token there, so the chosen one joins the cache as it is,
and its final state gives the row's next proposal (the LM head runs on the chosen row
only: K projections onto the vocabulary would cost more than the layers).

Rows of a batch may have prompts of different lengths: the cache is left-padded (padded
keys are hidden by the key padding mask), so every row appends at the same index and the
attention's positions (causal visibility, ALiBi distances) are those of the row; learned
position embeddings read the row's own position.

The cache is fairseq's `incremental_state` (per layer `prev_key`, `prev_value` (B, H, S, D)
and `prev_key_padding_mask` (B, S)), the format energy_lm's SelfAttention and fairseq's
generators use.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from energy_lm.inference.pass_parts import data_stream
from energy_lm.modules.paired_pass import PairedPass

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]


@dataclass
class DecodeCache:
    """What a row needs to propose and score its next token."""
    state: IncrementalState  # fairseq's per-layer buffers, left-padded to S keys
    lengths: Tensor          # (B,) tokens of each row so far (prompt + chosen)
    logits: Tensor           # (B, V) the LM's proposal for each row's next token
    context: Tensor          # (B, C) the state that proposed it (the energy head's context)


@dataclass
class StepForward:
    """The K candidates of every row run through the layers at the next position."""
    candidates: Tensor                           # (B, K)
    head_states: Tensor                          # (B, K, C) what the energy head reads
    final: Tensor                                # (B, K, C) what the LM head reads
    kept: Dict[nn.Module, Tuple[Tensor, Tensor]]  # per layer (k, v), each (B, H, K, D)


def _layers_attention(trunk) -> List[nn.Module]:
    return [layer.self_attn for layer in trunk.layers]


def _check_positions(trunk, length: int) -> None:
    limit = trunk.max_positions()
    if length > limit:
        raise ValueError(f"sampling past position {limit}: this model learned {limit} "
                         f"positions (learned absolute positions do not extrapolate; the "
                         f"ALiBi archs, *_alibi_* and *_zero_clap_*, do)")


def prefill(model, prompts: List[Tensor]) -> DecodeCache:
    """Run each prompt (1-D, at least one token) through the data stream once and lay
    its keys and values into one left-padded cache."""
    if not prompts or any(p.dim() != 1 or p.numel() == 0 for p in prompts):
        raise ValueError("prompts must be non-empty 1-D token tensors")
    trunk = model.trunk
    attns = _layers_attention(trunk)
    width = max(p.numel() for p in prompts)
    _check_positions(trunk, width)
    keys: List[List[Tensor]] = [[] for _ in attns]
    values: List[List[Tensor]] = [[] for _ in attns]
    logits, contexts = [], []
    for prompt in prompts:
        row = prompt.unsqueeze(0)
        paired = model.paired_pass(row)
        with paired.recording():
            features, head_states = data_stream(model, row)  # (1, T, C) each
        gap = width - prompt.numel()
        for i, attn in enumerate(attns):
            _, k, v = paired.records[attn]  # (1, H, T, D)
            keys[i].append(F.pad(k, (0, 0, gap, 0)))  # zeros at the left: hidden
            values[i].append(F.pad(v, (0, 0, gap, 0)))
        logits.append(model.output_layer(features[:, -1]))  # (1, V)
        contexts.append(head_states[:, -1])  # (1, C)
    lengths = torch.tensor([p.numel() for p in prompts], device=prompts[0].device)
    hidden = torch.arange(width, device=lengths.device)[None, :] < (width - lengths)[:, None]
    state: IncrementalState = {}
    for i, attn in enumerate(attns):
        attn._set_input_buffer(state, {"prev_key": torch.cat(keys[i]),
                                       "prev_value": torch.cat(values[i]),
                                       "prev_key_padding_mask": hidden})
    return DecodeCache(state, lengths, torch.cat(logits), torch.cat(contexts))


def forward_candidates(model, cache: DecodeCache, candidates: Tensor,
                       backend: str = "auto") -> StepForward:
    """candidates (B, K) at each row's next position, through every layer."""
    trunk = model.trunk
    attns = _layers_attention(trunk)
    buffers = [attn._get_input_buffer(cache.state) for attn in attns]
    keys = buffers[0]["prev_key"]  # (B, H, S, D)
    hidden = buffers[0].get("prev_key_padding_mask")  # (B, S); None: no padding
    if hidden is None:
        hidden = torch.zeros(keys.size(0), keys.size(2), dtype=torch.bool, device=keys.device)
    width = hidden.size(1)
    _check_positions(trunk, int(cache.lengths.max()) + 1)
    # the paired kernel's candidates need only the data keys/values (the data queries
    # are not used without the data output, so a zero-stride stand-in of their shape
    # takes no memory): the cache stands in for a recorded stream
    def no_queries(attn, k):
        return k.new_zeros(()).expand(k.size(0), attn.num_heads, k.size(2), k.size(3))

    records = {attn: (no_queries(attn, b["prev_key"]), b["prev_key"], b["prev_value"])
               for attn, b in zip(attns, buffers)}
    paired = PairedPass(owner=trunk.attention_pattern, key_padding_mask=hidden,
                        backend=backend, records=records)
    bsz, k = candidates.shape
    cand_pos = torch.full((bsz, k), width, dtype=torch.long, device=candidates.device)
    embed_pos = cache.lengths[:, None].expand(bsz, k)  # the row's own position
    probe = candidates.new_zeros(1, int(cache.lengths.max()))  # the position table's extent
    with paired.candidates(cand_pos, keep_kv=True, rotary_pos=embed_pos) as stage:
        pre_norm = trunk.candidate_features(probe, candidates, cand_pos, pre_norm=True,
                                            embed_pos=embed_pos)  # (B, K, C)
    final = trunk.final_states(pre_norm)
    head_states = pre_norm if model.energy_head.reads_pre_norm else final
    return StepForward(candidates, head_states, final, stage.kept)


def candidate_energies(model, cache: DecodeCache, step: StepForward) -> Tensor:
    """E(y_k | row) (B, K), the energy head read exactly as the scoring rule reads it."""
    head = model.energy_head
    context = log_q = None
    if head.needs_context:
        acc = torch.promote_types(cache.logits.dtype, torch.float32)
        lprobs = torch.log_softmax(cache.logits.to(acc), dim=-1)  # (B, V)
        log_q = lprobs.gather(1, step.candidates)  # (B, K)
        context = cache.context.unsqueeze(1)  # (B, 1, C)
    return head(step.head_states, context, log_q)


def append_chosen(model, cache: DecodeCache, step: StepForward, pick: Tensor) -> DecodeCache:
    """Candidate pick (B,) of every row joins its cache; returns the next step's cache."""
    trunk = model.trunk
    rows = torch.arange(pick.numel(), device=pick.device)
    state = cache.state
    for attn in _layers_attention(trunk):
        saved = attn._get_input_buffer(state)
        k, v = step.kept[attn]  # (B, H, K, D)
        k = k[rows, :, pick].unsqueeze(2)  # (B, H, 1, D)
        v = v[rows, :, pick].unsqueeze(2)
        hidden = saved.get("prev_key_padding_mask")
        if hidden is not None:
            hidden = torch.cat([hidden, hidden.new_zeros(hidden.size(0), 1)], dim=1)
        attn._set_input_buffer(state, {"prev_key": torch.cat([saved["prev_key"], k], dim=2),
                                       "prev_value": torch.cat([saved["prev_value"], v], dim=2),
                                       "prev_key_padding_mask": hidden})
    final = step.final[rows, pick]  # (B, C)
    return DecodeCache(state, cache.lengths + 1, model.output_layer(final),
                       step.head_states[rows, pick])
