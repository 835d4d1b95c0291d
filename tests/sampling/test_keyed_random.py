"""Counter-based uniforms (energy_lm.sampling.keyed_random) and the sampler fed with them."""

import math

import pytest
import torch

from energy_lm.sampling.proposal import sample_tokens
from energy_lm.sampling.keyed_random import SampleKeys, keyed_uniform, mix32


def test_mix32_matches_the_lowbias32_reference_on_python_ints():
    def reference(x):  # the published lowbias32, in plain Python integers
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    xs = [0, 1, 2, 12345, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 0xDEADBEEF]
    got = mix32(torch.tensor(xs, dtype=torch.int64)).tolist()
    assert got == [reference(x) for x in xs]
    assert min(got) >= 0 and max(got) < 2 ** 32


def test_uniforms_depend_on_the_example_not_on_the_batch_layout():
    keys = SampleKeys(seed=3, update=17, ids=torch.tensor([5, 9, 2, 40]))
    u = keyed_uniform(keys, torch.arange(1, 8), num_samples=3)  # (4, 7, 3)
    assert u.shape == (4, 7, 3) and u.dtype == torch.float64
    # the same examples split in two batches, in another order
    part = keyed_uniform(SampleKeys(3, 17, torch.tensor([2, 5])), torch.arange(1, 8), 3)
    assert torch.equal(part[0], u[2]) and torch.equal(part[1], u[0])
    # a (B, P) position tensor gives each row its own positions
    rows = keyed_uniform(keys, torch.arange(1, 8).expand(4, -1), 3)
    assert torch.equal(rows, u)
    # any key changed: new numbers
    for other in (SampleKeys(4, 17, keys.ids), SampleKeys(3, 18, keys.ids)):
        assert not torch.isclose(keyed_uniform(other, torch.arange(1, 8), 3), u).any()
    shifted = keyed_uniform(keys, torch.arange(2, 9), 3)  # keyed by absolute position
    assert torch.equal(shifted[:, :-1], u[:, 1:]) and not torch.isclose(shifted, u).any()


def test_uniforms_look_uniform_and_independent():
    """Kolmogorov-Smirnov distance and moments on 120k numbers, lag-1 correlation along
    every key: a broken hash (e.g. ignoring a key, or overflowing) fails these."""
    keys = SampleKeys(seed=0, update=0, ids=torch.arange(200))
    u = keyed_uniform(keys, torch.arange(100), num_samples=6)  # (200, 100, 6)
    flat = u.flatten().sort().values
    n = flat.numel()
    ks = (flat - torch.arange(1, n + 1, dtype=torch.float64) / n).abs().max().item()
    assert ks < 1.63 / math.sqrt(n)  # the 1% critical value
    assert abs(flat.mean().item() - 0.5) < 0.005 and abs(flat.var().item() - 1 / 12) < 0.002
    assert ((u >= 0) & (u < 1)).all()
    for dim in range(3):
        a, b = u.narrow(dim, 0, u.size(dim) - 1), u.narrow(dim, 1, u.size(dim) - 1)
        corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()
        assert abs(corr) < 0.01, (dim, corr)


def test_sampler_with_keyed_uniforms_draws_from_the_softmax():
    torch.manual_seed(0)
    logits = torch.randn(50) * 2
    logits[7] = float("-inf")
    keys = SampleKeys(seed=1, update=2, ids=torch.arange(400))
    u = keyed_uniform(keys, torch.arange(1), num_samples=100)  # (400, 1, 100)
    samples = sample_tokens(logits.expand(400, 1, 50), 100, uniforms=u)  # (400, 1, 100)
    counts = torch.bincount(samples.flatten(), minlength=50).double()
    expected = torch.softmax(logits, 0).double() * samples.numel()
    assert counts[7] == 0
    keep = expected > 0
    chi2 = (((counts - expected) ** 2)[keep] / expected[keep]).sum().item()
    assert chi2 < 85.0  # 48 degrees of freedom: the 0.1% critical value is ~85.4
    with pytest.raises(ValueError, match="uniforms must have shape"):
        sample_tokens(logits.expand(2, 50), 3, uniforms=torch.rand(2, 2))
