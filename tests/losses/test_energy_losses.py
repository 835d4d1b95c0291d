"""MonArc / NCE terms, the exp guard, sampling and log Z estimators against naive
closed forms (python floats, float64) and float64 gradcheck."""

import math

import pytest
import torch
from torch.autograd import gradcheck

from energy_lm.losses import (
    exact_log_z,
    guarded_exp_neg,
    log_z_estimate,
    monarc_terms,
    nce_terms,
)
from energy_lm.sampling.proposal import sample_tokens

# awkward sizes: primes and a length-1 axis
SHAPE = (3, 1, 7)


def naive_guarded_exp_neg(e: float, c: float) -> float:
    u = -e
    return math.exp(u) if u <= c else math.exp(c) * (1 + u - c)


def naive_softplus(a: float) -> float:
    return max(a, 0.0) + math.log1p(math.exp(-abs(a)))


# --- guarded exp -------------------------------------------------------------------

def test_guarded_exp_matches_closed_form_on_both_sides_of_the_guard():
    energy = torch.tensor([3.0, 0.0, -1.5, -4.0, -4.5, -10.0, -1000.0], dtype=torch.float64)
    value, mask = guarded_exp_neg(energy, max_log=4.0)
    expected = [naive_guarded_exp_neg(e, 4.0) for e in energy.tolist()]
    torch.testing.assert_close(value, torch.tensor(expected, dtype=torch.float64))
    assert mask.tolist() == [False, False, False, False, True, True, True]


def test_guard_is_finite_with_nonzero_gradient_that_pushes_energy_up():
    energy = torch.tensor([-1000.0, -1e6, -25.0], requires_grad=True)
    value, mask = guarded_exp_neg(energy)
    assert torch.isfinite(value).all() and mask.all()
    value.sum().backward()
    grad = energy.grad
    assert torch.isfinite(grad).all()
    # slope -exp(c): gradient descent on +exp(-E) raises E
    torch.testing.assert_close(grad, torch.full_like(grad, -math.exp(20.0)))


def test_guard_value_and_slope_are_continuous_at_the_threshold():
    c = 20.0
    eps = 1e-6
    energy = torch.tensor([-c + eps, -c, -c - eps], dtype=torch.float64, requires_grad=True)
    value, mask = guarded_exp_neg(energy, max_log=c)
    assert mask.tolist() == [False, False, True]
    torch.testing.assert_close(value, torch.full_like(value, math.exp(c)), rtol=2e-6, atol=0)
    value.sum().backward()
    torch.testing.assert_close(energy.grad, torch.full_like(value, -math.exp(c)), rtol=2e-6, atol=0)


def test_guard_gradcheck_across_threshold():
    energy = torch.linspace(-3.7, 0.9, 11, dtype=torch.float64, requires_grad=True)
    assert ((-energy > 2.0).any() and (-energy < 2.0).any()).item()
    assert gradcheck(lambda e: guarded_exp_neg(e, max_log=2.0)[0], (energy,))


def test_guard_computes_in_fp32_for_bf16():
    energy = torch.tensor([-30.0, 0.5, 2.0], dtype=torch.bfloat16)
    value, _ = guarded_exp_neg(energy)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, guarded_exp_neg(energy.float())[0])


# --- MonArc ------------------------------------------------------------------------

def test_monarc_terms_closed_form_and_broadcast():
    torch.manual_seed(0)
    e_data = torch.randn(3, 1, 7, dtype=torch.float64) * 3  # (B, 1, P)
    e_sample = torch.randn(3, 2, 7, dtype=torch.float64) * 3  # (B, K, P)
    e_sample[0, 0, 0] = -40.0  # guarded with the default max_log
    terms = monarc_terms(e_data, e_sample)
    assert all(t.shape == (3, 2, 7) for t in terms.values())
    for b in range(3):
        for k in range(2):
            for p in range(7):
                x, y = e_data[b, 0, p].item(), e_sample[b, k, p].item()
                z = naive_guarded_exp_neg(y, 20.0)
                assert terms["ebm"][b, k, p].item() == pytest.approx(x + z - 1, rel=1e-12)
                assert terms["z"][b, k, p].item() == pytest.approx(z, rel=1e-12)
                assert terms["correct"][b, k, p].item() == float(x < y)
                assert terms["guarded"][b, k, p].item() == (-y > 20.0)
    assert terms["guarded"].sum().item() == 1


def test_monarc_is_zero_at_zero_energy():
    terms = monarc_terms(torch.zeros(SHAPE), torch.zeros(SHAPE))
    assert terms["ebm"].abs().max().item() == 0.0
    assert terms["z"].eq(1).all()


def test_monarc_gradient_equals_the_seed_surrogate():
    torch.manual_seed(1)
    e_data = (torch.randn(SHAPE) * 2).requires_grad_()
    e_sample = (torch.randn(SHAPE) * 2).requires_grad_()
    weights = torch.rand(SHAPE)
    (monarc_terms(e_data, e_sample)["ebm"] * weights).sum().backward()
    ours = e_data.grad.clone(), e_sample.grad.clone()
    e_data.grad = e_sample.grad = None
    surrogate = e_data - torch.exp(-e_sample).detach() * e_sample
    (surrogate * weights).sum().backward()
    torch.testing.assert_close(ours[0], e_data.grad)
    torch.testing.assert_close(ours[1], e_sample.grad)
    assert ours[1].abs().min() > 0


def test_monarc_ebm_gradcheck():
    torch.manual_seed(2)
    e_data = torch.randn(SHAPE, dtype=torch.float64, requires_grad=True)
    e_sample = (torch.randn(SHAPE, dtype=torch.float64) * 3).requires_grad_()
    assert gradcheck(lambda a, b: monarc_terms(a, b, max_log=2.0)["ebm"], (e_data, e_sample))


def test_monarc_z_is_detached_and_ebm_is_not():
    e = torch.zeros(4, requires_grad=True)
    terms = monarc_terms(e, e)
    assert terms["ebm"].requires_grad and not terms["z"].requires_grad


def test_monarc_bf16_inputs_give_fp32_close_to_fp32():
    torch.manual_seed(3)
    e_data, e_sample = torch.randn(SHAPE) * 4, torch.randn(SHAPE) * 4
    e_sample[0, 0, 0] = -60.0
    low = monarc_terms(e_data.bfloat16(), e_sample.bfloat16())
    full = monarc_terms(e_data, e_sample)
    for key in ("ebm", "z", "correct"):
        assert low[key].dtype == torch.float32 and torch.isfinite(low[key]).all()
    # bf16 keeps ~3 significant digits of E; exp(-E) inherits that relative error
    torch.testing.assert_close(low["ebm"], full["ebm"], rtol=0.05, atol=0.05)
    torch.testing.assert_close(low["z"], full["z"], rtol=0.05, atol=1e-3)


# --- NCE ---------------------------------------------------------------------------

def test_nce_terms_closed_form_including_extreme_energies():
    e_data = torch.tensor([0.0, 1.5, -2.0, 100.0, -100.0, 30.0], dtype=torch.float64)
    e_sample = torch.tensor([0.0, -0.5, 3.0, -100.0, 100.0, -30.0], dtype=torch.float64)
    terms = nce_terms(e_data, e_sample)
    for i, (x, y) in enumerate(zip(e_data.tolist(), e_sample.tolist())):
        expected = naive_softplus(x) + naive_softplus(-y)
        assert terms["ebm"][i].item() == pytest.approx(expected, rel=1e-12, abs=1e-300)
        assert terms["correct"][i].item() == float(x < y)
    assert terms["ebm"][0].item() == pytest.approx(2 * math.log(2))
    assert torch.isfinite(terms["z"]).all()
    assert terms["guarded"].tolist() == [False, False, False, True, False, True]


def test_nce_ebm_gradcheck_and_gradient_is_sigmoid():
    torch.manual_seed(4)
    e_data = (torch.randn(SHAPE, dtype=torch.float64) * 3).requires_grad_()
    e_sample = (torch.randn(SHAPE, dtype=torch.float64) * 3).requires_grad_()
    assert gradcheck(lambda a, b: nce_terms(a, b)["ebm"], (e_data, e_sample))
    nce_terms(e_data, e_sample)["ebm"].sum().backward()
    torch.testing.assert_close(e_data.grad, torch.sigmoid(e_data.detach()))
    torch.testing.assert_close(e_sample.grad, -torch.sigmoid(-e_sample.detach()))


def test_nce_bf16_inputs_give_fp32_close_to_fp32():
    torch.manual_seed(5)
    e_data, e_sample = torch.randn(SHAPE) * 4, torch.randn(SHAPE) * 4
    low = nce_terms(e_data.bfloat16(), e_sample.bfloat16())
    assert low["ebm"].dtype == torch.float32 and torch.isfinite(low["ebm"]).all()
    torch.testing.assert_close(low["ebm"], nce_terms(e_data, e_sample)["ebm"], rtol=0.02, atol=0.02)


# --- sampling ----------------------------------------------------------------------

def test_sample_frequencies_match_softmax():
    logits = torch.tensor([1.0, -0.5, 0.3, 2.0, -2.0])
    probs = torch.softmax(logits, -1)
    torch.manual_seed(0)
    samples = sample_tokens(logits, num_samples=20_000)
    assert samples.shape == (20_000,) and samples.dtype == torch.long
    counts = torch.bincount(samples, minlength=5).double()
    freqs = counts / counts.sum()
    assert (freqs - probs.double()).abs().max().item() < 0.02
    expected = probs.double() * counts.sum()
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 18.5  # 4 degrees of freedom: p ~ 0.001


def test_sample_leading_shape_and_each_row_uses_its_own_distribution():
    # three rows that each put (almost) all mass on a different token
    logits = torch.full((3, 1, 5), -30.0)
    logits[0, 0, 4] = logits[1, 0, 0] = logits[2, 0, 2] = 30.0
    samples = sample_tokens(logits, num_samples=4)
    assert samples.shape == (3, 1, 4)
    assert samples[0].eq(4).all() and samples[1].eq(0).all() and samples[2].eq(2).all()


def test_sample_never_draws_zero_probability_tokens():
    logits = torch.tensor([0.0, float("-inf"), 0.0, float("-inf")]).expand(50, 4)
    samples = sample_tokens(logits, num_samples=40)
    assert samples.shape == (50, 40)
    assert set(samples.unique().tolist()) == {0, 2}


def test_fixed_seed_reproduces_and_generator_is_used():
    logits = torch.randn(6, 11)
    torch.manual_seed(7)
    a = sample_tokens(logits, 3)
    torch.manual_seed(7)
    b = sample_tokens(logits, 3)
    assert torch.equal(a, b)
    c = sample_tokens(logits, 3, generator=torch.Generator().manual_seed(7))
    d = sample_tokens(logits, 3, generator=torch.Generator().manual_seed(7))
    e = sample_tokens(logits, 3, generator=torch.Generator().manual_seed(8))
    assert torch.equal(c, d) and not torch.equal(c, e)


def test_sample_makes_no_gradient_path():
    logits = torch.randn(4, 9, requires_grad=True)
    samples = sample_tokens(logits, 2)
    assert samples.grad_fn is None and not samples.requires_grad
    (logits * 2).sum().backward()  # the graph of logits is untouched
    assert logits.grad is not None


def test_sample_bf16_logits():
    logits = torch.tensor([0.2, 1.1, -0.7, 0.0, 0.5], dtype=torch.bfloat16)
    probs = torch.softmax(logits.float(), -1)
    samples = sample_tokens(logits.expand(20_000, 5), generator=torch.Generator().manual_seed(1))
    assert samples.shape == (20_000, 1)
    freqs = torch.bincount(samples.flatten(), minlength=5).float() / 20_000
    assert (freqs - probs).abs().max().item() < 0.02


def test_sample_rejects_zero_samples():
    with pytest.raises(ValueError):
        sample_tokens(torch.zeros(3), num_samples=0)


# --- log Z ------------------------------------------------------------------------

def test_exact_log_z_matches_a_loop():
    torch.manual_seed(8)
    logprobs = torch.log_softmax(torch.randn(2, 3, 6, dtype=torch.float64), -1)
    energies = torch.randn(2, 3, 6, dtype=torch.float64) * 2
    out = exact_log_z(logprobs, energies)
    assert out.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            z = sum(math.exp(lp) * math.exp(-e) for lp, e in zip(logprobs[i, j].tolist(),
                                                                  energies[i, j].tolist()))
            assert out[i, j].item() == pytest.approx(math.log(z), rel=1e-12)
    # E = 0 everywhere: Z = 1
    assert exact_log_z(logprobs, torch.zeros_like(energies)).abs().max().item() < 1e-12


def test_log_z_estimate_closed_form_and_dim():
    energies = torch.tensor([[0.5, -1.0, 2.0, 0.0], [3.0, 3.0, 3.0, 3.0]], dtype=torch.float64)
    log_z, stderr = log_z_estimate(energies)
    assert log_z.shape == stderr.shape == (2,)
    for row in range(2):
        w = [math.exp(-e) for e in energies[row].tolist()]
        mean = sum(w) / 4
        std = math.sqrt(sum((x - mean) ** 2 for x in w) / 3)
        assert log_z[row].item() == pytest.approx(math.log(mean), rel=1e-12)
        assert stderr[row].item() == pytest.approx(std / 2 / mean, rel=1e-9, abs=1e-15)
    assert stderr[1].item() == 0.0
    log_z_t, stderr_t = log_z_estimate(energies.T.contiguous(), dim=0)
    torch.testing.assert_close(log_z_t, log_z)
    torch.testing.assert_close(stderr_t, stderr)


def test_log_z_estimate_is_stable_for_large_energies():
    log_z, stderr = log_z_estimate(torch.tensor([-500.0, -501.0, -499.0]))
    assert torch.isfinite(log_z) and torch.isfinite(stderr)
    assert log_z.item() == pytest.approx(500.0 + math.log((1 + math.exp(1) + math.exp(-1)) / 3))


def test_log_z_estimate_needs_two_samples():
    with pytest.raises(ValueError):
        log_z_estimate(torch.zeros(4, 1))


def _draw_energies(num_contexts: int, num_samples: int, seed: int):
    """Contexts with a random q over 6 tokens and random energies; E(y_k), y_k ~ q."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_contexts, 6, generator=gen, dtype=torch.float64)
    energies = torch.randn(num_contexts, 6, generator=gen, dtype=torch.float64)
    samples = sample_tokens(logits, num_samples, generator=gen)  # (C, K)
    return energies.gather(1, samples), exact_log_z(torch.log_softmax(logits, -1), energies)


def test_log_z_estimate_approaches_exact_within_a_few_stderr():
    sampled, exact = _draw_energies(num_contexts=8, num_samples=20_000, seed=9)
    log_z, stderr = log_z_estimate(sampled)
    assert (stderr < 0.05).all() and (stderr > 0).all()
    assert ((log_z - exact).abs() < 4 * stderr).all()


def test_log_z_stderr_shrinks_like_inverse_sqrt_k():
    small, _ = _draw_energies(num_contexts=16, num_samples=100, seed=10)
    large, _ = _draw_energies(num_contexts=16, num_samples=10_000, seed=10)
    ratio = log_z_estimate(small)[1].mean() / log_z_estimate(large)[1].mean()
    assert 8.0 < ratio.item() < 12.5


def test_log_of_unbiased_z_is_biased_low_for_small_k():
    # 4000 independent K = 2 estimates of one context
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn(6, generator=gen, dtype=torch.float64)
    energies = torch.randn(6, generator=gen, dtype=torch.float64) * 1.5
    samples = sample_tokens(logits.expand(4000, 6), 2, generator=gen)  # (4000, 2)
    log_z, _ = log_z_estimate(energies[samples])
    exact = exact_log_z(torch.log_softmax(logits, -1), energies).item()
    assert log_z.exp().mean().item() == pytest.approx(math.exp(exact), rel=0.05)  # Z unbiased
    assert log_z.mean().item() < exact - 0.05  # log Z biased low (Jensen)


def test_log_z_bf16_energies_give_fp32():
    log_z, stderr = log_z_estimate(torch.randn(3, 16).bfloat16())
    assert log_z.dtype == stderr.dtype == torch.float32
    assert exact_log_z(torch.zeros(5).bfloat16(), torch.zeros(5).bfloat16()).dtype == torch.float32


@pytest.mark.parametrize("vocab", [300, 512, 1000])
def test_two_level_inverse_cdf_equals_one_running_sum(vocab):
    """`inverse_cdf` picks a block by block sums, then a token inside it: the same
    token as one running sum over the whole vocabulary, for the same uniforms, with
    empty (probability 0) tokens and blocks never drawn."""
    from energy_lm.sampling.proposal import inverse_cdf

    g = torch.Generator().manual_seed(vocab)
    probs = torch.softmax(torch.randn(6, 3, vocab, generator=g) * 3, dim=-1)
    probs[0, :, 250:] = 0.0  # whole empty blocks
    probs[1, :, ::2] = 0.0   # every other token empty
    u = torch.rand(6, 3, 64, generator=g, dtype=torch.float64)
    cdf = probs.double().cumsum(-1)
    want = torch.searchsorted(cdf, u * cdf[..., -1:], right=True).clamp(max=vocab - 1)
    got = inverse_cdf(probs, u)
    assert torch.equal(got, want)
    assert bool((probs.gather(-1, got) > 0).all())
