"""Paired-token attention through PyTorch FlexAttention (docs/methods.md section 6).

One `flex_attention` call over the concatenated sequence `[data; candidates]` (length
L = N + M): a `mask_mod` says which keys each query row sees (the reference's rules:
data query i sees data j <= i or any j, candidate at p sees data j < p or j != p plus
its own key; same segment, not padding) and a `score_mod` adds the ALiBi bias of the
row's position (0 for the own key).

The BlockMask depends only on the batch (positions, segments, padding), not on the
layer: given a `mask_cache` dict that lives for one batch (the candidate
stage of a paired pass keeps one), it is built by the first layer and reused by every other one.
On CUDA, `flex_attention` is called through `torch.compile` (that is what makes it a
fused kernel); on the CPU it runs eagerly.

Supports what the reference supports except dropout (`dropout_p > 0` raises). Tested:
forward against the reference on the CPU, and the mask cache (tests/kernels/
test_paired_flex.py); torch 2.13 has no FlexAttention backward on the CPU ("FlexAttention
does not support backward on CPU"), so gradients are tested only with CUDA and this is a
GPU backend. Not yet run on a GPU.
"""

import functools
from typing import Optional, Tuple

import torch
from torch import Tensor

from energy_lm.kernels.reference import row_positions, segment_positions
from energy_lm.kernels.visibility import alibi_distance, position_visible


@functools.lru_cache(maxsize=None)
def _flex_attention(device_type: str):
    """flex_attention, compiled for CUDA (eager elsewhere: the CPU path is for tests)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if device_type == "cuda" else flex_attention


def _batch_layout(cand_pos: Tensor, n: int, b: int, causal: bool, segment_ids, key_padding_mask):
    """(BlockMask, row_pos (B, L)) for one batch: what every layer shares."""
    from torch.nn.attention.flex_attention import create_block_mask

    m = cand_pos.size(1)
    device = cand_pos.device
    row_pos = row_positions(cand_pos, n)  # (B, L)
    seg = segment_ids.long() if segment_ids is not None else torch.zeros(b, n, dtype=torch.long,
                                                                         device=device)
    row_seg = seg.gather(1, segment_positions(row_pos, n, n, causal))  # (B, L): each row's document
    pad = (key_padding_mask.bool() if key_padding_mask is not None
           else torch.zeros(b, n, dtype=torch.bool, device=device))
    key_pad = torch.cat([pad, torch.zeros(b, m, dtype=torch.bool, device=device)], dim=1)

    def mask_mod(bi, hi, qi, ki):
        p = row_pos[bi, qi]
        q_cand, k_cand = qi >= n, ki >= n
        sees = position_visible(p, ki, q_cand, causal)
        data_ok = ~k_cand & sees & (row_seg[bi, qi] == row_seg[bi, ki]) & ~key_pad[bi, ki]
        return data_ok | (k_cand & (qi == ki))

    length = n + m
    return create_block_mask(mask_mod, b, None, length, length, device=device), row_pos


def paired_attention_flex(
    q: Tensor, k: Tensor, v: Tensor,
    q_c: Tensor, k_c: Tensor, v_c: Tensor,
    cand_pos: Tensor,
    *,
    causal: bool,
    alibi_slopes: Optional[Tensor] = None,
    alibi_mode: str = "causal",
    segment_ids: Optional[Tensor] = None,
    key_padding_mask: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    mask_cache: Optional[dict] = None,
) -> Tuple[Tensor, Tensor]:
    """As `paired_attention_reference`; mask_cache: a dict living for one batch (the same
    cand_pos, segment_ids and key_padding_mask on every call) that keeps the BlockMask."""
    if dropout_p > 0.0:
        raise NotImplementedError("the flex paired-attention backend has no dropout; use "
                                  "backend='reference'")
    b, h, n, _ = q.shape
    key = ("flex", n, cand_pos.size(1), bool(causal), q.device)
    if mask_cache is not None and key in mask_cache:
        block_mask, row_pos = mask_cache[key]
    else:
        block_mask, row_pos = _batch_layout(cand_pos, n, b, causal, segment_ids,
                                            key_padding_mask)
        if mask_cache is not None:
            mask_cache[key] = (block_mask, row_pos)
    score_mod = None
    if alibi_slopes is not None:
        slopes = alibi_slopes.to(device=q.device, dtype=torch.float32)

        def score_mod(score, bi, hi, qi, ki):
            dist = alibi_distance(row_pos[bi, qi], ki, alibi_mode)
            own = ki >= n
            return score - torch.where(own, torch.zeros_like(dist), slopes[hi] * dist)

    out = _flex_attention(q.device.type)(
        torch.cat([q, q_c], 2), torch.cat([k, k_c], 2), torch.cat([v, v_c], 2),
        score_mod=score_mod, block_mask=block_mask)  # (B, H, L, D)
    return out[:, :, :n], out[:, :, n:]
