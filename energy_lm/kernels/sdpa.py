"""Scaled-dot-product attention with an exact ALiBi path for half precision.

`attention` calls torch's SDPA where it is exact and `attention_math` (explicit scores
and an fp32 softmax) for bf16/fp16 inputs with a float bias, where adding the bias in
half precision would lose ALiBi's half-slope shift at long range (docs/methods.md).
Shared by the models' self-attention and the paired-attention reference.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def attention_math(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], is_causal: bool,
                   dropout_p: float = 0.0) -> Tensor:
    """Explicit attention with an fp32 softmax; (B, H, Tq, D) x (B, Hk, Tk, D) -> (B, H, Tq, D),
    Hk dividing H (grouped-query attention: query head h reads key/value head h // (H / Hk)).

    Used for half-precision inputs with ALiBi, where adding the bias in bf16/fp16 would
    lose the half-slope shift at long range (docs/methods.md section 2).
    """
    tq, tk = q.size(-2), k.size(-2)
    group = q.size(1) // k.size(1)
    if group > 1:  # grouped heads: query head h reads key head h // group, never repeated
        b, h, _, d = q.shape
        q = q.view(b, k.size(1), group * tq, d)
    scores = torch.matmul(q, k.transpose(-1, -2))  # (B, Hk, G Tq, Tk)
    if group > 1:
        scores = scores.view(b, h, tq, tk)
    scores = scores.float() * (q.size(-1) ** -0.5)
    if is_causal:
        visible = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq)
        scores = scores.masked_fill(~visible, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    if group == 1:
        return torch.matmul(probs.to(v.dtype), v)
    out = torch.matmul(probs.to(v.dtype).view(b, v.size(1), group * tq, tk), v)
    return out.view(b, h, tq, v.size(-1))


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], is_causal: bool,
              dropout_p: float = 0.0) -> Tensor:
    """SDPA where it is exact; the fp32-softmax path for half inputs with a float bias.
    k, v may have fewer heads than q (grouped-query attention; SDPA's enable_gqa)."""
    if mask is not None and mask.dtype != torch.bool and q.dtype in _HALF_DTYPES:
        return attention_math(q, k, v, mask, is_causal, dropout_p)
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                          is_causal=is_causal, enable_gqa=k.size(1) != q.size(1))
