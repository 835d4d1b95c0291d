"""The energy heads against their formulas (float64), their start at E = 0, and that
each can leave it (a nonzero gradient at the start)."""

import math

import pytest
import torch

from energy_lm.modules.energy_head import EnergyHead


def randomised(head: EnergyHead, seed: int = 0) -> EnergyHead:
    torch.manual_seed(seed)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return head.double()


def test_seed_head_is_the_seeds_scaled_bilinear_form():
    """E = (F n(c) + lq a_f) . (B n(h) + lq a_b) / sqrt(d), n the head's own LayerNorm
    (written here from the formula, not from the module's code)."""
    d = 12
    head = randomised(EnergyHead(d, "seed"))
    state, context = torch.randn(3, 5, d, dtype=torch.float64), torch.randn(3, 5, d, dtype=torch.float64)
    log_q = -torch.rand(3, 5, dtype=torch.float64) * 5
    norm = head.state_norm

    def layer_norm(x):
        mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mu) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias

    fwd = layer_norm(context) @ head.context_proj.weight.T + head.context_proj.bias + \
        log_q[..., None] * head.context_log_q
    bwd = layer_norm(state) @ head.token_proj.weight.T + head.token_proj.bias + \
        log_q[..., None] * head.token_log_q
    expected = (fwd * bwd).sum(-1) / math.sqrt(d)
    torch.testing.assert_close(head(state, context, log_q), expected, rtol=1e-12, atol=1e-12)
    # the context broadcasts over candidates (B, 1, P, d) against (B, K, P, d)
    cands = torch.randn(3, 4, 5, d, dtype=torch.float64)
    many = head(cands, context[:, None], log_q[:, None].expand(-1, 4, -1))
    for k in range(4):
        torch.testing.assert_close(many[:, k], head(cands[:, k], context, log_q))


def test_rich_head_scales_its_bilinear_term_by_one_over_d():
    d = 16
    head = randomised(EnergyHead(d, "rich"))
    state, context = torch.randn(7, d, dtype=torch.float64), torch.randn(7, d, dtype=torch.float64)
    log_q = -torch.rand(7, dtype=torch.float64)
    expected = state @ head.proj.weight[0] + head.proj.bias + head.log_q_weight * log_q + \
        ((context @ head.bilinear.weight) * state).sum(-1) / d
    torch.testing.assert_close(head(state, context, log_q), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["linear", "rich", "seed"])
def test_every_head_starts_at_zero_and_has_a_gradient_to_leave_it(kind):
    d = 8
    torch.manual_seed(1)
    head = EnergyHead(d, kind)
    state, context = torch.randn(6, d), torch.randn(6, d)
    log_q = -torch.rand(6)
    energy = head(state, context, log_q)
    assert not energy.any()
    # a MonArc-like objective on these energies moves at least one parameter
    (energy[:3].sum() + torch.exp(-energy[3:]).sum()).backward()
    grads = [p.grad.abs().sum() for p in head.parameters() if p.grad is not None]
    assert sum(grads) > 0


def test_context_heads_refuse_a_call_without_context():
    for kind in ("rich", "seed"):
        with pytest.raises(ValueError, match="context state and log q"):
            EnergyHead(4, kind)(torch.randn(2, 4))


def test_unknown_head_is_one_clear_error():
    with pytest.raises(ValueError, match="choose one of linear, rich, seed"):
        EnergyHead(4, "cubic")


@pytest.mark.parametrize("kind", ["seed", "rich"])
def test_the_log_q_of_an_impossible_token_leaves_the_energy_finite(kind):
    """Padding in a scored slot, or a symbol an imported model masks, has log q = the
    dtype's lowest value: floored in the head, E stays finite (an imported GPT-2's padded
    validation batch gave E = nan before)."""
    torch.manual_seed(0)
    head = EnergyHead(8, kind)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_()
    state, context = torch.randn(3, 8), torch.randn(3, 8)
    log_q = torch.tensor([-2.0, torch.finfo(torch.float32).min, -7.0])
    energy = head(state, context, log_q)
    assert torch.isfinite(energy).all()
    real = head(state[[0, 2]], context[[0, 2]], log_q[[0, 2]])
    assert torch.equal(energy[[0, 2]], real)  # real log-probabilities are not touched
