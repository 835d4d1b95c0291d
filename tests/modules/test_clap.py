import pytest
import torch
import torch.nn.functional as F
from fairseq import optim
from omegaconf import OmegaConf

from energy_lm.modules.clap import ClapEmbedding, ClapHead, normalized_rows
from energy_lm.modules.weight_decay import is_excluded_from_weight_decay


def test_head_is_beta_times_cosine_logits_closed_form():
    torch.manual_seed(0)
    emb = ClapEmbedding(7, 5, padding_idx=1)
    head = ClapHead(emb.weight, initial_beta=2.5, padding_idx=1)
    h = torch.randn(3, 4, 5)
    rows = emb.weight.detach() / emb.weight.detach().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    expected = 2.5 * torch.einsum("btd,vd->btv", h, rows)
    torch.testing.assert_close(head(h), expected, rtol=1e-6, atol=1e-6)
    assert head.weight is emb.weight  # tied, not copied


def test_hidden_state_is_not_normalised():
    emb = ClapEmbedding(6, 4, padding_idx=0)
    head = ClapHead(emb.weight, padding_idx=0)
    h = torch.randn(2, 4)
    torch.testing.assert_close(head(3 * h), 3 * head(h))


def test_masked_tokens_projects_only_masked_positions():
    emb = ClapEmbedding(9, 4, padding_idx=1)
    head = ClapHead(emb.weight, padding_idx=1)
    h = torch.randn(2, 5, 4)
    masked = torch.zeros(2, 5, dtype=torch.bool)
    masked[0, 1] = masked[1, 3] = True
    out = head(h, masked_tokens=masked)
    assert out.shape == (2, 9)
    torch.testing.assert_close(out, head(h)[masked])


def test_embedding_rows_unit_norm_pad_zero_and_zero_masking():
    emb = ClapEmbedding(10, 6, padding_idx=1, zero_index=9)
    tokens = torch.tensor([[0, 1, 5, 9]])
    x = emb(tokens)
    torch.testing.assert_close(x[0, [0, 2]].norm(dim=-1), torch.ones(2))
    assert x[0, 1].abs().sum() == 0 and x[0, 3].abs().sum() == 0
    plain = ClapEmbedding(10, 6, padding_idx=1, l2_normalize=False)
    plain.load_state_dict(emb.state_dict())
    torch.testing.assert_close(plain(tokens)[0, 0], emb.weight[0])


def test_no_gradient_blow_up_through_the_zero_pad_row():
    torch.manual_seed(0)
    emb = ClapEmbedding(50, 8, padding_idx=1)
    head = ClapHead(emb.weight, padding_idx=1)
    tokens = torch.randint(2, 50, (4, 6))
    loss = F.cross_entropy(head(emb(tokens)).view(-1, 50), tokens.view(-1))
    loss.backward()
    assert emb.weight.grad[1].abs().sum() == 0
    assert emb.weight.grad.norm() < 100  # without the guard the pad row gets ~1e12


def test_beta_is_trainable_and_kept_out_of_weight_decay():
    emb = ClapEmbedding(5, 4, padding_idx=1)
    head = ClapHead(emb.weight, initial_beta=3.0, padding_idx=1)
    assert is_excluded_from_weight_decay(head.beta) and head.beta.requires_grad
    cfg = OmegaConf.create({"_name": "adam", "lr": [0.1], "adam_betas": "(0.9, 0.98)",
                            "adam_eps": 1e-8, "weight_decay": 0.5, "use_old_adam": False,
                            "fp16_adam_stats": False, "tpu": False})
    optimizer = optim.build_optimizer(cfg, [emb.weight, head.beta])
    groups = optimizer.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.5, 0.0]
    # zero gradients: only weight decay acts, so beta must not move and weights must shrink
    emb.weight.grad = torch.zeros_like(emb.weight)
    head.beta.grad = torch.zeros_like(head.beta)
    before = emb.weight.detach().clone()
    optimizer.step()
    assert head.beta.item() == 3.0
    torch.testing.assert_close(emb.weight.detach(), before * (1 - 0.1 * 0.5))


@pytest.mark.parametrize("skip", [None, 0, 3])
def test_normalized_rows_equals_f_normalize_with_the_skipped_rows_gradient_zero(skip):
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(7, 5, generator=g, dtype=torch.float64)
    rows[2] = 0.0  # a zero row (fairseq's pad row): value 0, finite gradient
    upstream = torch.randn(7, 5, generator=g, dtype=torch.float64)
    mine = rows.clone().requires_grad_()
    theirs = rows.clone().requires_grad_()
    out = normalized_rows(mine, skip)
    torch.testing.assert_close(out, F.normalize(theirs, dim=-1), rtol=0, atol=0)
    (out * upstream).sum().backward()
    want = F.normalize(theirs, dim=-1)
    (want * upstream).sum().backward()
    expected = theirs.grad.clone()
    if skip is not None:
        expected[skip] = 0.0
    keep = [i for i in range(7) if i != 2]  # F.normalize's gradient at a zero row is g / eps
    torch.testing.assert_close(mine.grad[keep], expected[keep], rtol=1e-12, atol=1e-12)
    assert torch.isfinite(mine.grad).all()
    if skip is None:  # with a skipped row the gradient is not the function's, by design
        nonzero = rows.clone()
        nonzero[2] = 1.0
        assert torch.autograd.gradcheck(normalized_rows, (nonzero.requires_grad_(),))
