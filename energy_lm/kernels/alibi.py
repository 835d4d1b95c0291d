"""ALiBi: attention with linear biases (docs/methods.md section 2).

Slopes follow the ALiBi paper's rule; the bias is built in fp32 from query and key
positions, so the same function serves full passes and incremental decoding (where the
queries are the last positions of a longer key sequence).
"""

import math
from typing import List

import torch

from energy_lm.kernels.visibility import alibi_distance

ALIBI_MODES = ("causal", "symmetric", "shifted")
DECODER_ALIBI_CHOICES = ("none", "causal")
ENCODER_ALIBI_CHOICES = ("none", "symmetric", "shifted")
# What an ALiBi model reports as its max_positions: it has no learned limit (evaluating
# beyond the training length is ALiBi's point); fairseq takes the minimum with the
# task's --tokens-per-sample, which then sets the length.
ALIBI_MAX_POSITIONS = 1 << 20


def _geometric_slopes(n: int) -> List[float]:
    # m_h = 2^(-8h/n), h = 1..n
    return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """Per-head slopes, shape (H,), fp32.

    For H not a power of two: the slopes of the nearest lower power of two P, then every
    other slope of 2P until there are H.
    """
    if num_heads < 1:
        raise ValueError(f"ALiBi needs at least one head, got {num_heads}")
    p = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = _geometric_slopes(p)
    if p < num_heads:
        slopes += _geometric_slopes(2 * p)[0::2][: num_heads - p]
    return torch.tensor(slopes, dtype=torch.float32)


def check_alibi_mode(mode: str, causal: bool) -> None:
    """Raise a one-line ValueError for a mode that does not fit the model family."""
    allowed = DECODER_ALIBI_CHOICES if causal else ENCODER_ALIBI_CHOICES
    if mode not in allowed:
        family = "a causal (decoder) model" if causal else "a bidirectional (encoder) model"
        raise ValueError(
            f"--alibi {mode!r} is not valid for {family}; choose one of {', '.join(allowed)}"
        )


def alibi_bias(
    slopes: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, mode: str
) -> torch.Tensor:
    """Additive attention bias, shape (H, Tq, Tk), fp32.

    causal:    -m * (i - j)   (entries with j > i are meant to be masked by the caller)
    symmetric: -m * |i - j|
    shifted:   -m * (i - j) for j <= i, -m * (j - i - 0.5) for j > i
    """
    if mode not in ALIBI_MODES:
        raise ValueError(f"unknown ALiBi mode {mode!r}; choose one of {', '.join(ALIBI_MODES)}")
    dist = alibi_distance(q_pos[:, None], k_pos[None, :], mode)  # (Tq, Tk)
    return -slopes.to(torch.float32)[:, None, None] * dist  # (H, Tq, Tk)
