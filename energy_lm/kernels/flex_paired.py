"""Paired-token attention through PyTorch FlexAttention (METHODS.md section 6).

One `flex_attention` call over the concatenated sequence `[data; candidates]` (length
L = N + M): a `mask_mod` says which keys each query row sees (the reference's rules:
data query i sees data j <= i or any j, candidate at p sees data j < p or j != p plus
its own key; same segment, not padding) and a `score_mod` adds the ALiBi bias of the
row's position (0 for the own key). The BlockMask is built once per call.

Supports what the reference supports except dropout (`dropout_p > 0` raises). Tested:
forward against the reference on the CPU (torch 2.13 has no FlexAttention backward on
the CPU: "FlexAttention does not support backward on CPU"), so it is a GPU backend; not
yet run on a GPU. Compiling `flex_attention` (torch.compile) is what makes it fast; it is
called eagerly here.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor


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
) -> Tuple[Tensor, Tensor]:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if dropout_p > 0.0:
        raise NotImplementedError("the flex paired-attention backend has no dropout; use "
                                  "backend='reference'")
    b, h, n, _ = q.shape
    m = q_c.size(2)
    device = q.device
    # position of every query/key row of [data; candidates]: data i at i, candidate at p
    row_pos = torch.cat([torch.arange(n, device=device).expand(b, n), cand_pos.long()], dim=1)
    seg = segment_ids.long() if segment_ids is not None else torch.zeros(b, n, dtype=torch.long,
                                                                         device=device)
    row_seg = seg.gather(1, row_pos)  # (B, L): the document of each row's position
    pad = (key_padding_mask.bool() if key_padding_mask is not None
           else torch.zeros(b, n, dtype=torch.bool, device=device))
    key_pad = torch.cat([pad, torch.zeros(b, m, dtype=torch.bool, device=device)], dim=1)
    slopes = (alibi_slopes.float() if alibi_slopes is not None
              else torch.zeros(h, device=device))

    def mask_mod(bi, hi, qi, ki):
        p = row_pos[bi, qi]
        q_cand, k_cand = qi >= n, ki >= n
        if causal:
            sees = torch.where(q_cand, ki < p, ki <= p)
        else:
            sees = torch.where(q_cand, ki != p, ki == ki)
        data_ok = ~k_cand & sees & (row_seg[bi, qi] == row_seg[bi, ki]) & ~key_pad[bi, ki]
        return data_ok | (k_cand & (qi == ki))

    def score_mod(score, bi, hi, qi, ki):
        p = row_pos[bi, qi].float()
        j = ki.float()
        if alibi_mode == "causal":
            dist = p - j
        elif alibi_mode == "symmetric":
            dist = (p - j).abs()
        else:  # shifted
            dist = torch.where(j <= p, p - j, j - p - 0.5)
        own = ki >= n
        return score - torch.where(own, torch.zeros_like(dist), slopes[hi] * dist)

    length = n + m
    block_mask = create_block_mask(mask_mod, b, None, length, length, device=device)
    out = flex_attention(torch.cat([q, q_c], 2), torch.cat([k, k_c], 2), torch.cat([v, v_c], 2),
                         score_mod=score_mod if alibi_slopes is not None else None,
                         block_mask=block_mask)  # (B, H, L, D)
    return out[:, :, :n], out[:, :, n:]
