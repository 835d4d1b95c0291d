"""CLAP: an L2-normalised, weight-tied output head with a learned inverse temperature
(docs/methods.md section 1), and the matching input embedding.

    logits = beta * h @ normalize(E, dim=-1).T

The final hidden state h is not normalised; only the embedding rows are.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from energy_lm.modules.weight_decay import exclude_from_weight_decay


class ClapEmbedding(nn.Embedding):
    """Token embedding whose looked-up rows are L2-normalised (when `l2_normalize`).

    `zero_index` (the dictionary's `<mask>`) embeds as the zero vector ("zero masking")
    instead of its learned row. The padding row is zero-initialised and stays zero (it
    gets no gradient), so it normalises to zero; padding itself is tracked from the
    dictionary's pad index by the encoder/decoder, never from the embedding values.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int, *,
                 l2_normalize: bool = True, zero_index: Optional[int] = None):
        super().__init__(num_embeddings, embedding_dim, padding_idx=padding_idx)
        self.l2_normalize = l2_normalize
        self.zero_index = zero_index

    def forward(self, tokens: Tensor) -> Tensor:
        x = super().forward(tokens)  # (..., d)
        if self.l2_normalize:
            x = F.normalize(x, dim=-1)  # a zero row stays zero (eps in the denominator)
        if self.zero_index is not None:
            x = x.masked_fill(tokens.eq(self.zero_index).unsqueeze(-1), 0.0)
        return x

    def extra_repr(self) -> str:
        return super().extra_repr() + f", l2_normalize={self.l2_normalize}, zero_index={self.zero_index}"


class _NormalizedRows(torch.autograd.Function):
    """rows / max(|rows|, eps) with no gradient into one row (`skip`, or -1 for none).

    The same values as `F.normalize(rows, dim=-1)`, in fewer passes over the (V, d)
    matrix: the head normalises the whole embedding at every step, and composing
    `torch.where` (to stop the pad row's gradient) with `F.normalize` and its autograd
    took about ten V x d passes, a third of a small model's step beyond the softmax
    head's (benchmarks/ratios.py). Forward: the row norms, then one scaled copy.
    Backward: (g - y * <g, y>) / max(|x|, eps), zero in the skipped row.
    """

    @staticmethod
    def forward(ctx, rows: Tensor, skip: int, eps: float) -> Tensor:
        norm = torch.linalg.vector_norm(rows, dim=-1, keepdim=True).clamp_min_(eps)  # (V, 1)
        out = rows / norm  # exactly F.normalize's arithmetic
        ctx.save_for_backward(out, norm.reciprocal())
        ctx.skip = skip
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        out, inv = ctx.saved_tensors
        dot = torch.einsum("vd,vd->v", grad, out).unsqueeze(-1)  # no (V, d) temporary
        if ctx.skip >= 0:
            inv = inv.clone()
            inv[ctx.skip] = 0.0
        return torch.addcmul(grad, out, dot, value=-1.0).mul_(inv), None, None


def normalized_rows(rows: Tensor, skip: Optional[int] = None, eps: float = 1e-12) -> Tensor:
    """F.normalize(rows, dim=-1) whose gradient leaves row `skip` untouched."""
    return _NormalizedRows.apply(rows, -1 if skip is None else int(skip), eps)


class ClapHead(nn.Module):
    """Weight-tied head: beta * h @ normalize(weight).T, no bias, no dense layer.

    `weight` is the input embedding's parameter (shared, not copied). `beta` is a
    trainable scalar excluded from weight decay. Called like fairseq's `RobertaLMHead`
    (`features, masked_tokens`) and like a decoder's `output_projection` (`features`).

    The padding row is fairseq's zero row: normalising it gives zero (a constant pad
    logit of 0), but the gradient of x / max(|x|, eps) at x = 0 is g / eps, ~1e12 times
    the incoming gradient. The head therefore takes no gradient into that row.
    """

    def __init__(self, weight: nn.Parameter, initial_beta: float = 1.0,
                 padding_idx: Optional[int] = None):
        super().__init__()
        self.weight = weight  # (V, d), tied
        self.padding_idx = padding_idx
        self.beta = nn.Parameter(torch.tensor(float(initial_beta)))
        exclude_from_weight_decay(self.beta)

    def forward(self, features: Tensor, masked_tokens: Optional[Tensor] = None, **unused) -> Tensor:
        if masked_tokens is not None:
            features = features[masked_tokens, :]  # only the masked positions: (M, d)
        # the pad row takes no gradient (see the class docstring)
        weight = normalized_rows(self.weight, self.padding_idx)  # (V, d)
        # beta scales the d-dim features rather than the V-dim logits: same value, cheaper
        return F.linear(features * self.beta, weight)  # (..., V)


class LinearHead(nn.Module):
    """An untied `Linear(d, V, bias=False)` MLM head, called like `RobertaLMHead`.

    What a headless (CWT) encoder gets when it is given an MLM head: initialised as a
    copy of the input embeddings (energy-lm-add-head), then fine-tuned with plain CE.
    """

    def __init__(self, embed_dim: int, output_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(output_dim, embed_dim))  # (V, d)
        nn.init.normal_(self.weight, mean=0.0, std=embed_dim ** -0.5)

    def forward(self, features: Tensor, masked_tokens: Optional[Tensor] = None, **unused) -> Tensor:
        if masked_tokens is not None:
            features = features[masked_tokens, :]  # (M, d)
        return F.linear(features, self.weight)  # (..., V)
