"""Exact samples of the LM's proposal, without gradient and without host syncs."""

from typing import Optional

import torch
from torch import Tensor

from energy_lm.losses.energy import compute_dtype


def sample_tokens(logits: Tensor, num_samples: int = 1,
                  generator: Optional[torch.Generator] = None,
                  uniforms: Optional[Tensor] = None) -> Tensor:
    """Exact ancestral samples y ~ softmax(logits) at temperature 1, without gradient.

    Inverse-CDF sampling: with p = softmax(logits) in fp32, its running sum c in fp64
    and u ~ U(0, c_V), the sample is the first v with c_v > u, so P(v) = p_v / sum(p)
    (exact up to the fp64 sum's rounding). One uniform per sample and an O(V) scan, no
    V random numbers per sample; unlike `torch.multinomial` (which checks its input with
    a host sync on its fast path) this never reads a value back to the host. Tokens
    with probability 0 (logit -inf, or underflow in fp32) are never drawn: their
    interval of the running sum is empty.

    Args:
        logits: (..., V) any float dtype; detached here, so no gradient path is created.
        num_samples: K independent samples per distribution.
        generator: torch RNG to draw from (default: the global RNG of logits' device),
            so a fixed seed reproduces the samples.
        uniforms: (..., K) values in [0, 1) to use instead of drawing them (e.g. from
            `energy_lm.sampling.keyed_random.keyed_uniform`, which makes the samples a
            function of the example rather than of the generator's state).
    Returns:
        LongTensor (..., K).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    with torch.no_grad():
        probs = torch.softmax(logits.detach().to(compute_dtype(logits)), dim=-1)  # (..., V)
        cdf = probs.to(torch.float64).cumsum(dim=-1)  # (..., V), nondecreasing
        shape = probs.shape[:-1] + (num_samples,)
        if uniforms is None:
            u = torch.rand(shape, dtype=torch.float64, device=probs.device,
                           generator=generator)  # (..., K)
        elif uniforms.shape != shape:
            raise ValueError(f"uniforms must have shape {tuple(shape)}, got {tuple(uniforms.shape)}")
        else:
            u = uniforms.to(device=probs.device, dtype=torch.float64)
        u = u * cdf[..., -1:]
        # right=True: the first index whose running sum exceeds u (skips empty intervals)
        samples = torch.searchsorted(cdf.contiguous(), u.contiguous(), right=True)
        return samples.clamp_(max=probs.size(-1) - 1)  # u < c_V; the clamp is for rounding
