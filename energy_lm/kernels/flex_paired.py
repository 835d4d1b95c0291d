"""Paired-token attention through PyTorch FlexAttention (docs/methods.md section 6).

One `flex_attention` call over the concatenated sequence `[data; candidates]` (length
L = N + M): a `mask_mod` says which keys each query row sees (the reference's rules:
data query i sees data j <= i or any j, candidate at p sees data j < p or j != p plus
its own key; same segment, not padding) and a `score_mod` adds the ALiBi bias of the
row's position (0 for the own key).

Grouped-query attention: keys and values may have Hk heads, Hk dividing the H query
heads (query head h reads key/value head h // (H / Hk)); they go to `flex_attention`
with `enable_gqa=True`, which indexes the shared head, so the repeated heads are never
stored: the K/V of a layer (and their candidate keys and values) stay H / Hk times
smaller than with repeated heads.

The BlockMask depends only on the layout (positions, segments, padding), not on the
layer: it is kept on the `PairedLayout` (a model's candidate stage hands one layout to
all its layers), so the first layer builds it and every other one reuses it.
On CUDA, `flex_attention` is called through `torch.compile` (that is what makes it a
fused kernel); on the CPU it runs eagerly.

Supports what the reference supports (grouped heads included) except dropout
(`dropout_p > 0` raises). Tested: forward against the reference on the CPU (equal and
grouped heads), and the mask cache (tests/kernels/
test_paired_flex.py); torch 2.13 has no FlexAttention backward on the CPU ("FlexAttention
does not support backward on CPU"), so gradients are tested only with CUDA and this is a
GPU backend. Not yet run on a GPU.
"""

import functools
from typing import Tuple

import torch
from torch import Tensor

from energy_lm.kernels.layout import PairedLayout
from energy_lm.kernels.reference import row_positions, segment_positions
from energy_lm.kernels.visibility import position_visible


@functools.lru_cache(maxsize=None)
def _flex_attention(device_type: str):
    """flex_attention, compiled for CUDA (eager elsewhere: the CPU path is for tests)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if device_type == "cuda" else flex_attention


def _batch_layout(layout: PairedLayout, device: torch.device):
    """(BlockMask, row_pos (B, L)) for one layout: what every layer shares."""
    from torch.nn.attention.flex_attention import create_block_mask

    cand_pos, n, causal = layout.cand_pos, layout.num_data, layout.causal
    b, m = cand_pos.shape
    row_pos = row_positions(cand_pos, n)  # (B, L)
    seg = (layout.segment_ids.long() if layout.segment_ids is not None
           else torch.zeros(b, n, dtype=torch.long, device=device))
    row_seg = seg.gather(1, segment_positions(row_pos, n, n, causal))  # (B, L): each row's document
    pad = (layout.key_padding_mask.bool() if layout.key_padding_mask is not None
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


def paired_attention_flex(q: Tensor, k: Tensor, v: Tensor, q_c: Tensor, k_c: Tensor,
                          v_c: Tensor, layout: PairedLayout,
                          dropout_p: float = 0.0) -> Tuple[Tensor, Tensor]:
    """As `paired_attention_reference` (keys and values with H or Hk heads); the BlockMask
    is built once per layout (kept on it) and reused by every layer handed the same
    layout."""
    if dropout_p > 0.0:
        raise NotImplementedError("the flex paired-attention backend has no dropout; use "
                                  "backend='reference'")
    n = q.size(2)
    block_mask, row_pos = layout.derived(f"flex-{q.device}",
                                         lambda: _batch_layout(layout, q.device))
    score_mod = None if layout.alibi is None else layout.alibi.score_mod(row_pos, n, q.device)
    out = _flex_attention(q.device.type)(
        torch.cat([q, q_c], 2), torch.cat([k, k_c], 2), torch.cat([v, v_c], 2),
        score_mod=score_mod, block_mask=block_mask,
        enable_gqa=k.size(1) != q.size(1))  # (B, H, L, D); score_mod's head is q's
    return out[:, :, :n], out[:, :, n:]
