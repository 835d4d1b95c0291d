"""The energy scale fitted on held-out tokens: against a fine grid of the exact NLL, never
worse than the LM (a = 0) or the ELM as trained (a = 1), and on tokens drawn from
q exp(-E) / Z itself it finds a = 1."""

import torch

from energy_lm.losses.energy_scale import fit_energy_scale, scaled_nll


def exact_case(true_scale: float, n: int = 4000, vocab: int = 12, seed: int = 0):
    """Tokens drawn from q exp(-true_scale E) / Z at n positions; the head holds the
    whole vocabulary (so log Z_a is exact) and one tail sample of empty mass."""
    g = torch.Generator().manual_seed(seed)
    log_q = torch.log_softmax(torch.randn(n, vocab, generator=g, dtype=torch.float64), -1)
    energies = torch.randn(n, vocab, generator=g, dtype=torch.float64)
    p = torch.softmax(log_q - true_scale * energies, -1)
    x = torch.multinomial(p, 1, generator=g).squeeze(1)
    nll_q = -log_q.gather(1, x[:, None]).squeeze(1)
    energy = energies.gather(1, x[:, None]).squeeze(1)
    return nll_q, energy, log_q, energies, torch.zeros(n, 1, dtype=torch.float64)


def test_the_fit_is_the_exact_minimum_and_never_worse_than_lm_or_elm():
    case = exact_case(true_scale=0.4)
    fitted = fit_energy_scale(*case)
    grid = torch.linspace(0, 4, 801, dtype=torch.float64)
    values = [scaled_nll(float(a), *case) for a in grid]
    best = float(grid[int(torch.tensor(values).argmin())])
    assert abs(fitted - best) <= 0.01
    assert scaled_nll(fitted, *case) <= min(scaled_nll(0.0, *case), scaled_nll(1.0, *case))
    assert abs(fitted - 0.4) < 0.1  # the scale the tokens were drawn with


def test_tokens_from_the_elm_itself_give_scale_one_and_from_q_give_zero():
    assert abs(fit_energy_scale(*exact_case(true_scale=1.0, seed=1)) - 1.0) < 0.1
    assert fit_energy_scale(*exact_case(true_scale=0.0, seed=2)) < 0.08


def test_energies_that_hurt_are_scaled_to_nothing():
    nll_q, energy, log_q, energies, tail = exact_case(true_scale=-1.0, seed=3)  # E backwards
    fitted = fit_energy_scale(nll_q, energy, log_q, energies, tail)
    assert fitted == 0.0  # the boundary: the LM
    assert scaled_nll(fitted, nll_q, energy, log_q, energies, tail) == \
        scaled_nll(0.0, nll_q, energy, log_q, energies, tail)
