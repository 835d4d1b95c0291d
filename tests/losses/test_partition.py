"""log Z estimators against the exact sum (energy_lm.losses.partition) and the bias
benchmark's replay (benchmarks/log_z_bias.py)."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from energy_lm.losses import exact_log_z, log_z_estimate, topk_tail_log_z
from energy_lm.sampling.proposal import sample_tokens


def case(seed=0, positions=5, vocab=30, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    log_q = torch.log_softmax(torch.randn(positions, vocab, generator=g, dtype=torch.float64) * 3, -1)
    energy = torch.randn(positions, vocab, generator=g, dtype=torch.float64) * scale
    return log_q, energy, g


def test_topk_tail_by_hand():
    log_q = torch.log(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))
    energy = torch.tensor([0.1, -0.4, 2.0], dtype=torch.float64)
    tail_energy = torch.tensor([2.0, 2.0], dtype=torch.float64)  # the tail is token 2 only
    log_z, stderr, lower = topk_tail_log_z(log_q[:2], energy[:2], tail_energy)
    head = 0.5 * math.exp(-0.1) + 0.3 * math.exp(0.4)
    assert float(lower) == pytest.approx(math.log(head))
    assert float(log_z) == pytest.approx(math.log(head + 0.2 * math.exp(-2.0)))
    assert float(log_z) == pytest.approx(float(exact_log_z(log_q, energy)))  # one-token tail
    assert float(stderr) == pytest.approx(0.0)


def test_the_estimate_of_z_is_unbiased_and_the_head_is_a_lower_bound():
    log_q, energy, g = case()
    exact = exact_log_z(log_q, energy)
    head = log_q.topk(6, dim=-1).indices
    tail_logits = log_q.scatter(-1, head, float("-inf"))
    zs, lowers = [], None
    for _ in range(4000):
        tail = sample_tokens(tail_logits, 3, generator=g)
        log_z, _, lower = topk_tail_log_z(log_q.gather(-1, head), energy.gather(-1, head),
                                          energy.gather(-1, tail))
        zs.append(log_z.exp())
        lowers = lower
    mean_z = torch.stack(zs).mean(0)
    torch.testing.assert_close(mean_z.log(), exact, atol=0.03, rtol=0)  # Z^ unbiased for Z
    assert (lowers <= exact + 1e-12).all()


def test_at_equal_budget_the_head_split_has_less_error_than_plain_sampling():
    log_q, energy, g = case(seed=1, scale=3.0)
    exact = exact_log_z(log_q, energy)
    head = log_q.topk(4, dim=-1).indices
    tail_logits = log_q.scatter(-1, head, float("-inf"))
    plain, split = [], []
    for _ in range(300):
        plain.append(log_z_estimate(energy.gather(-1, sample_tokens(log_q, 8, generator=g)))[0])
        tail = sample_tokens(tail_logits, 4, generator=g)
        split.append(topk_tail_log_z(log_q.gather(-1, head), energy.gather(-1, head),
                                     energy.gather(-1, tail))[0])
    rmse = [float((torch.stack(x) - exact).pow(2).mean().sqrt()) for x in (plain, split)]
    assert rmse[1] < rmse[0]


def test_the_bias_replay_is_exact_when_energies_are_flat():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "log_z_bias.py"
    spec = importlib.util.spec_from_file_location("log_z_bias", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    log_q, _, g = case(seed=2)
    flat = bench.simulate(log_q, torch.zeros_like(log_q), [2, 8], repeats=5, generator=g)
    for row in flat.values():  # E = 0: every estimate is log Z = 0 exactly
        assert row["plain_bias"] == pytest.approx(0, abs=1e-12)
        assert row["topk_tail_bias"] == pytest.approx(0, abs=1e-12)
    log_q, energy, g = case(seed=3, scale=3.0)
    rows = bench.simulate(log_q, energy, [2, 32], repeats=200, generator=g)
    assert rows[2]["plain_bias"] < rows[32]["plain_bias"] <= 0.05  # Jensen: low, shrinking
