"""Rotary position embedding (RoPE) of queries and keys, rotate-half convention.

The first `rotary_dims` of each head (an even number; all of them in Llama and Qwen2, a
fraction in GPT-NeoX and StableLM) are split into two halves (x1, x2) rotated together:
(x1 cos - x2 sin, x2 cos + x1 sin), the angle of pair i at position p being
p * base ** (-2 i / rotary_dims). The rest of the head passes unchanged. The angles
are computed in float32 and cast to the input's dtype, as the Llama/NeoX
implementations of transformers do, so an imported model's log-probs match.

A score q_i . k_j then depends on i - j only, so the positions may start anywhere: the
model uses a token's row index in its (possibly padded) batch, and a candidate of the
paired pass is rotated at the position of the data token it stands in for.
One `Rotary` is shared by every attention layer of a model; its (cos, sin) table is
grown on demand and kept per device and dtype.
"""

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn


def rotary_dims(head_dim: int, fraction: float) -> int:
    """How many dimensions of a head are rotated: int(fraction * head_dim), as NeoX and
    StableLM count them (`rotary_pct`, `partial_rotary_factor`); must be even and > 0."""
    dims = int(fraction * head_dim)
    if not 0.0 < fraction <= 1.0 or dims < 2 or dims % 2:
        raise ValueError(f"--rotary-fraction {fraction} of a head of {head_dim} dims rotates "
                         f"{dims}: it must be an even number >= 2 (fraction in (0, 1])")
    return dims


class Rotary(nn.Module):
    def __init__(self, head_dim: int, fraction: float = 1.0, base: float = 10000.0):
        super().__init__()
        if not base > 1.0:
            raise ValueError(f"--rotary-base must be > 1, got {base}")
        self.head_dim = head_dim
        self.dims = rotary_dims(head_dim, fraction)
        self.base = float(base)
        # as transformers computes it: integer exponents, then float32
        exponents = torch.arange(0, self.dims, 2, dtype=torch.int64).float() / self.dims
        self.register_buffer("inv_freq", 1.0 / (self.base ** exponents), persistent=False)
        self._tables: Dict[Tuple[torch.device, torch.dtype], Tuple[Tensor, Tensor]] = {}

    def extra_repr(self) -> str:
        return f"dims={self.dims}/{self.head_dim}, base={self.base:g}"

    def _table(self, length: int, device: torch.device, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
        """(cos, sin), each (length', dims) in dtype with length' >= length."""
        key = (device, dtype)
        cached = self._tables.get(key)
        if cached is None or cached[0].size(0) < length:
            size = max(length, 2 * cached[0].size(0) if cached is not None else 256)
            positions = torch.arange(size, device=device, dtype=torch.int64).float()
            # float32 angles whatever the model's dtype (a float64 model too), as
            # transformers computes them
            freqs = positions[:, None] * self.inv_freq.to(device).float()[None, :]  # (L, dims / 2)
            angles = torch.cat([freqs, freqs], dim=-1)  # (L, dims)
            cached = (angles.cos().to(dtype), angles.sin().to(dtype))
            self._tables[key] = cached
        return cached

    def forward(self, x: Tensor, positions: Tensor, bound: Optional[int] = None) -> Tensor:
        """x (B, H, T, D) rotated at positions: (T,) shared by the batch, or (B, T), each in
        [0, bound). The model passes the bound it knows (no read of the positions: on a
        GPU that read would wait for the device in every layer); without one it is read."""
        if positions.numel() == 0:
            return x
        if bound is None:
            if positions.min() < 0:
                raise ValueError("rotary positions must be >= 0")
            bound = int(positions.max()) + 1
        cos, sin = self._table(bound, x.device, x.dtype)
        cos, sin = cos[positions], sin[positions]  # (T, dims) or (B, T, dims)
        if positions.dim() == 2:
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, dims)
        rot, rest = x[..., : self.dims], x[..., self.dims:]
        half = self.dims // 2
        turned = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
        rotated = rot * cos + turned * sin
        return rotated if rest.size(-1) == 0 else torch.cat([rotated, rest], dim=-1)
