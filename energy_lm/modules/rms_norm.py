"""RMSNorm: x / sqrt(mean(x ** 2) + eps) * weight, no mean subtracted and no bias.

Computed in float32 whatever the input's dtype and cast back before the weight, as the
Llama-family implementations of transformers do, so that an imported model's bf16
log-probs match its source's as closely as its float32 ones.
"""

import torch
from torch import Tensor, nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps:g}"

    def forward(self, x: Tensor) -> Tensor:
        wide = x.float()
        wide = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * wide.to(x.dtype)


def build_norm(kind: str, dim: int, eps: float) -> nn.Module:
    """The trunk's norm: "layer" (torch's LayerNorm, with bias) or "rms"."""
    if kind == "rms":
        return RMSNorm(dim, eps)
    if kind == "layer":
        return nn.LayerNorm(dim, eps=eps)
    raise ValueError(f"--norm must be layer or rms, got {kind!r}")
