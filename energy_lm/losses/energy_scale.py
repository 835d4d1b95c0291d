"""A scale a >= 0 of the energy, fitted on held-out tokens: p_a(y) = q(y) exp(-a E(y)) / Z_a.

a = 1 is the ELM as trained and a = 0 its LM, so the fitted ELM is never worse than its
LM on the tokens it is fitted on (issue 37: an energy trained over several epochs can
memorise its training text and put the ELM above its LM on held-out text). The NLL per
token,

    NLL(a) = -log q(x) + a E(x) + log Z_a,   Z_a = sum_y q(y) exp(-a E(y)),

is convex in a (log Z_a is a log-sum-exp of functions linear in a), so a golden-section
search on [0, max_scale] finds its minimum. log Z_a is taken as `topk_tail_log_z` takes
log Z (q's top-k summed exactly, samples of the tail), or exactly when the head holds
the whole vocabulary.
"""

import math

from torch import Tensor

from energy_lm.losses.partition import topk_tail_log_z


def scaled_nll(scale: float, nll_q: Tensor, energy: Tensor, head_log_q: Tensor,
               head_energy: Tensor, tail_energy: Tensor) -> float:
    """The mean over tokens of NLL(scale) in nats. nll_q, energy: (N,) -log q(x) and E(x)
    of each token; head_log_q, head_energy (N, k) and tail_energy (N, K) as
    `topk_tail_log_z` takes them."""
    log_z, _, _ = topk_tail_log_z(head_log_q, scale * head_energy, scale * tail_energy)
    return float((nll_q.to(log_z.dtype) + scale * energy.to(log_z.dtype) + log_z).mean())


def fit_energy_scale(nll_q: Tensor, energy: Tensor, head_log_q: Tensor, head_energy: Tensor,
                     tail_energy: Tensor, max_scale: float = 4.0, tol: float = 1e-4) -> float:
    """The scale in [0, max_scale] that minimises `scaled_nll` on these tokens (golden
    section, to within tol)."""
    if not max_scale > 0:
        raise ValueError(f"max_scale must be > 0, got {max_scale}")

    def nll(a: float) -> float:
        return scaled_nll(a, nll_q, energy, head_log_q, head_energy, tail_energy)

    ratio = (math.sqrt(5) - 1) / 2
    lo, hi = 0.0, float(max_scale)
    left, right = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    f_left, f_right = nll(left), nll(right)
    while hi - lo > tol:
        if f_left <= f_right:
            hi, right, f_right = right, left, f_left
            left = hi - ratio * (hi - lo)
            f_left = nll(left)
        else:
            lo, left, f_left = left, right, f_right
            right = lo + ratio * (hi - lo)
            f_right = nll(right)
    best = (lo + hi) / 2
    # the ends are candidates too: a convex minimum may sit on the boundary
    return min((0.0, best, float(max_scale)), key=nll)
