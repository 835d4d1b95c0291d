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
    (exact up to the fp64 sum's rounding; `inverse_cdf` forms the sum in two levels). One uniform per sample and an O(V) scan, no
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
        shape = probs.shape[:-1] + (num_samples,)
        if uniforms is None:
            u = torch.rand(shape, dtype=torch.float64, device=probs.device,
                           generator=generator)  # (..., K)
        elif uniforms.shape != shape:
            raise ValueError(f"uniforms must have shape {tuple(shape)}, got {tuple(uniforms.shape)}")
        else:
            u = uniforms.to(device=probs.device, dtype=torch.float64)
        return inverse_cdf(probs, u)


_BLOCK = 256


def inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """probs (..., V) >= 0, u (..., K) in [0, 1) -> (..., K): the first v whose running
    sum exceeds u * sum(probs), sums in fp64.

    In two levels, so that the (..., V) running sum is never formed: the sums of blocks
    of 256 probabilities and their running sum pick the block, then the running sum of
    that block alone picks the token. Same intervals as one running sum (up to fp64
    rounding), at one pass over probs instead of a cast and a cumsum of the whole
    (..., V) in fp64 (which took 0.6 s of a 12 x 768 MonArc step at N = 1024 on 2 CPU
    cores, benchmarks/ratios.py)."""
    vocab = probs.size(-1)
    if vocab <= _BLOCK:
        cdf = probs.to(torch.float64).cumsum(dim=-1)  # (..., V)
        target = u * cdf[..., -1:]
        # right=True: the first index whose running sum exceeds u (skips empty intervals)
        samples = torch.searchsorted(cdf.contiguous(), target.contiguous(), right=True)
        return samples.clamp_(max=vocab - 1)  # u < c_V; the clamp is for rounding
    full = vocab // _BLOCK * _BLOCK
    sums = [probs[..., :full].unflatten(-1, (-1, _BLOCK)).sum(-1, dtype=torch.float64)]
    if full < vocab:
        sums.append(probs[..., full:].sum(-1, keepdim=True, dtype=torch.float64))
    block_cdf = torch.cat(sums, dim=-1).cumsum(dim=-1)  # (..., NB)
    target = (u * block_cdf[..., -1:]).contiguous()  # (..., K)
    block = torch.searchsorted(block_cdf.contiguous(), target, right=True)
    block = block.clamp_(max=block_cdf.size(-1) - 1)  # (..., K)
    before = torch.where(block > 0, block_cdf.gather(-1, (block - 1).clamp(min=0)),
                         torch.zeros_like(target))  # running sum before the block
    index = block[..., None] * _BLOCK + torch.arange(_BLOCK, device=probs.device)  # (..., K, B)
    inside = index < vocab
    flat = index.clamp(max=vocab - 1).flatten(-2)  # (..., K * B)
    values = probs.gather(-1, flat).view(index.shape).masked_fill(~inside, 0.0)  # (..., K, B)
    cdf = before[..., None] + values.to(torch.float64).cumsum(dim=-1)  # (..., K, B)
    step = torch.searchsorted(cdf, target[..., None], right=True).squeeze(-1)  # (..., K)
    # rounding can put the target past the block's own running sum: take its last
    # token of nonzero probability, never one of probability 0
    positions = torch.arange(1, _BLOCK + 1, device=probs.device)
    last_positive = ((values > 0) * positions).argmax(dim=-1)  # (..., K)
    return block * _BLOCK + torch.minimum(step, last_positive)
