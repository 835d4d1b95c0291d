"""log Z of a residual energy-based LM, Z = sum_y q(y) exp(-E(y)), three ways.

- `exact_log_z`: by enumerating the vocabulary (exact; O(V) energies per position).
- `topk_tail_log_z`: the exact sum over q's k most likely tokens plus an importance-
  sampled tail, with its standard error and a certain lower bound.
- `log_z_estimate` (in `energy_lm.losses.energy`): plain Monte Carlo from K samples of q.

Why the top-k + tail estimator: with K samples of q, log mean exp(-E(y_k)) is biased low
(Jensen) by about var/2, and the variance is large exactly where q is a poor proposal.
Splitting off the head, where a peaked q puts most of its mass, removes its variance
altogether; only the tail, of mass 1 - Q_k, is sampled. The head alone is a lower bound:
Z >= sum_{y in top-k} q(y) exp(-E(y)), so NLL >= -log q(x) + E(x) + log S_k for certain.

Precision as in `energy_lm.losses.energy`: fp32, or float64 for float64 inputs.
"""

import math
from typing import Tuple

import torch
from torch import Tensor

from energy_lm.losses.energy import compute_dtype


def topk_tail_log_z(head_log_q: Tensor, head_energy: Tensor,
                    tail_energy: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """log Z from the k most likely tokens of q (exact) and K samples of q's tail.

        S   = sum_{i <= k} q(y_i) exp(-E(y_i))              the head, exact
        T^  = (1 - Q_k) * mean_j exp(-E(t_j)),  t_j ~ q restricted to the tail
        log Z^ = log(S + T^),   Q_k = sum_{i <= k} q(y_i)

    T^ is unbiased for the tail's sum, so Z^ is unbiased for Z; log Z^ is biased low by
    about stderr^2 / 2 (small when 1 - Q_k is small or the tail's energies are flat).

    Args:
        head_log_q: (..., k) log q of the k head tokens (distinct; k >= 1).
        head_energy: (..., k) their energies.
        tail_energy: (..., K) energies of K >= 1 samples from q renormalised on the tail
            (K = 1 has no standard error: NaN).
    Returns (each (...), fp32 or float64):
        log_z   the estimate log Z^
        stderr  its standard error (delta method: std_j(T_j) / sqrt(K) / Z^)
        lower   log S, a certain lower bound on log Z
    """
    num = tail_energy.size(-1)
    if num < 1:
        raise ValueError(f"topk_tail_log_z needs at least 1 tail sample, got {num}")
    dtype = compute_dtype(head_log_q, head_energy, tail_energy)
    head_log_q, head_energy = head_log_q.to(dtype), head_energy.to(dtype)
    lower = torch.logsumexp(head_log_q - head_energy, dim=-1)  # log S
    log_tail_mass = torch.log1p(-torch.exp(torch.logsumexp(head_log_q, dim=-1)).clamp(max=1.0))
    terms = log_tail_mass.unsqueeze(-1) - tail_energy.to(dtype)  # log of (1 - Q_k) exp(-E(t_j))
    log_tail = torch.logsumexp(terms, dim=-1) - math.log(num)  # log T^ (-inf for no tail)
    log_z = torch.logaddexp(lower, log_tail)
    ratios = torch.exp(terms - log_z.unsqueeze(-1))  # T_j / Z^, finite whatever the scale
    stderr = (ratios.std(dim=-1, correction=1) / math.sqrt(num) if num > 1
              else torch.full_like(log_z, float("nan")))
    return log_z, stderr, lower


def exact_log_z(lm_logprobs: Tensor, energies: Tensor) -> Tensor:
    """log Z = log sum_y q(y) exp(-E(y)) = logsumexp_y(log q(y) - E(y)), by enumeration.

    Args:
        lm_logprobs: (..., V) log q(y); energies: (..., V) E(y); the two broadcast.
    Returns:
        (...) fp32 (float64 for float64 input). Costs O(V) energies per position.
    """
    dtype = compute_dtype(lm_logprobs, energies)
    return torch.logsumexp(lm_logprobs.to(dtype) - energies.to(dtype), dim=-1)
