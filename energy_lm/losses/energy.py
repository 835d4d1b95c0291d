"""Residual energy-based LM objectives (docs/methods.md sections 4-5) as pure functions.

An LM q proposes, an energy E corrects: p(x) = q(x) exp(-E(x)) / Z with
Z = E_{y~q}[exp(-E(y))]. This module holds the arithmetic only (no fairseq, no model):

- `guarded_exp_neg`: exp(-E) that cannot overflow and never loses its gradient.
- `monarc_terms`:    E(x) + exp(-E(y)) - 1, the Z - log Z - 1 penalty with a one-sample Z.
- `nce_terms`:       softplus(E(x)) + softplus(-E(y)), data vs LM samples with logit -E.
- `log_z_estimate`:  log Z from K samples of q (see `energy_lm.losses.partition` for
                     the exact sum and the top-k + tail estimator).

Precision: every function computes in fp32 (float64 inputs stay float64, so
`gradcheck` sees exact arithmetic) and returns that dtype, whatever the input dtype
(bf16/fp16 included). Energy inputs broadcast against each other, with any leading
shape. Nothing here reads a value back to the host (no `.item()`, no data-dependent
shapes), so the functions are safe on the training path.
"""

import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """fp32, or float64 when any input is float64 (low precision is always upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def guarded_exp_neg(energy: Tensor, max_log: float = 20.0) -> Tuple[Tensor, Tensor]:
    """exp(-E), continued linearly above u = -E = max_log so it stays finite.

        u = -E,  c = max_log
        value = exp(u)                     u <= c
                exp(c) * (1 + u - c)       u >  c   (first-order Taylor expansion at c)

    Value and first derivative are continuous at u = c; d value / dE = -exp(min(u, c))
    is never zero, so a loss containing + exp(-E) still pushes E up where guarded.

    Args:
        energy: (...) any float dtype.
        max_log: c, the largest exponent evaluated exactly (exp(20) ~ 4.9e8).
    Returns:
        value (...) fp32 (float64 for float64 input), guarded_mask (...) bool: u > c.
    """
    u = -energy.to(compute_dtype(energy))
    guarded = u > max_log
    # exp of the clamped exponent: the branch torch.where discards must stay finite,
    # else its zero gradient times inf gives NaN in the backward pass.
    exact = torch.exp(u.clamp(max=max_log))
    linear = math.exp(max_log) * (1.0 + (u - max_log))
    return torch.where(guarded, linear, exact), guarded


def monarc_terms(energy_data: Tensor, energy_sample: Tensor,
                 max_log: float = 20.0) -> Dict[str, Tensor]:
    """Per-position MonArc energy term and its logging companions.

        ebm = E(x) + exp(-E(y)) - 1        y ~ q, sampled without gradient

    This is the true value (zero when E = 0 everywhere), and it is differentiable with
    the gradient of the seed's surrogate E(x) - stopgrad(exp(-E(y))) * E(y):
        d ebm / d E(x) = 1,   d ebm / d E(y) = -exp(-E(y))
    (with exp(-E(y)) guarded above -E(y) = max_log, where the slope is -exp(max_log)).

    Args:
        energy_data: E(x) (...), energy_sample: E(y) (...); the two broadcast.
    Returns a dict of tensors of the broadcast shape, fp32 (float64 for float64 input):
        ebm      differentiable loss term per position
        z        exp(-E(y)), guarded and detached: the one-sample estimate of Z (~1)
        correct  (E(x) < E(y)) as float: the energy prefers the data token
        guarded  bool, where exp(-E(y)) used the linear guard
    """
    dtype = compute_dtype(energy_data, energy_sample)
    e_data, e_sample = torch.broadcast_tensors(energy_data.to(dtype), energy_sample.to(dtype))
    z, guarded = guarded_exp_neg(e_sample, max_log)
    return {
        "ebm": e_data + z - 1.0,
        "z": z.detach(),
        "correct": (e_data < e_sample).to(dtype),
        "guarded": guarded,
    }


def nce_terms(energy_data: Tensor, energy_sample: Tensor,
              max_log: float = 20.0) -> Dict[str, Tensor]:
    """Per-position NCE energy term: a data-vs-sample classifier with logit -E.

        ebm = softplus(E(x)) + softplus(-E(y)) = -log sigmoid(-E(x)) - log sigmoid(E(y))

    softplus(a) = log1p(exp(a)) is evaluated by `F.softplus`, which returns a itself for
    a > 20 (no overflow), so any finite energy gives a finite loss and gradient
        d ebm / d E(x) = sigmoid(E(x)),   d ebm / d E(y) = -sigmoid(-E(y)).

    Args and the `z`, `correct`, `guarded` entries: as in `monarc_terms` (logging only;
    NCE assumes Z = 1, and `z` shows how far that holds).
    """
    dtype = compute_dtype(energy_data, energy_sample)
    e_data, e_sample = torch.broadcast_tensors(energy_data.to(dtype), energy_sample.to(dtype))
    z, guarded = guarded_exp_neg(e_sample.detach(), max_log)
    return {
        "ebm": F.softplus(e_data) + F.softplus(-e_sample),
        "z": z,
        "correct": (e_data < e_sample).to(dtype),
        "guarded": guarded,
    }


def log_z_estimate(energy_samples: Tensor, dim: int = -1) -> Tuple[Tensor, Tensor]:
    """Monte Carlo log Z from K samples y_k ~ q, and its standard error.

        log_z  = log( (1/K) sum_k exp(-E(y_k)) ) = logsumexp_k(-E(y_k)) - log K
        stderr = std_k(exp(-E(y_k))) / sqrt(K) / mean_k(exp(-E(y_k)))   (delta method)

    (std with Bessel's correction, computed on the ratios exp(-E(y_k)) / mean, which are
    finite whatever the scale of E.) The mean of exp(-E(y_k)) is an unbiased estimate
    of Z, but its log is biased low (Jensen: E[log Z_hat] <= log Z), so an ELM NLL
    log q(x) - E(x) - log_z reads optimistic (too low) for small K; the bias is about
    stderr^2 / 2.

    Args:
        energy_samples: (..., K, ...) energies E(y_k) of samples from q along `dim`.
        dim: the sample axis; needs K >= 2 for a standard error.
    Returns:
        log_z, stderr: the input shape without `dim`, fp32 (float64 for float64 input).
    """
    num = energy_samples.size(dim)
    if num < 2:
        raise ValueError(f"log_z_estimate needs at least 2 samples along dim {dim}, got {num}")
    neg = -energy_samples.to(compute_dtype(energy_samples))
    log_z = torch.logsumexp(neg, dim=dim) - math.log(num)
    ratios = torch.exp(neg - log_z.unsqueeze(dim))  # exp(-E(y_k)) / mean_k: mean 1
    stderr = ratios.std(dim=dim, correction=1) / math.sqrt(num)
    return log_z, stderr
