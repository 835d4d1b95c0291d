"""log q of the scored tokens and candidates: logit minus the pass's one logsumexp, the
same numbers as the full log-softmax it replaces; the logsumexp without a graph runs in
chunks of rows (no (B, S, V) fp32 copy), with one it carries the LM loss's gradient."""

import pytest
import torch
import torch.nn.functional as F

from energy_lm.inference import pass_parts


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5),
                                       (torch.bfloat16, 2e-5)])
def test_log_q_equals_the_gathered_log_softmax(dtype, tol, grad):
    torch.manual_seed(0)
    # 3 x 50 = 150 rows: chunks of 64, 64 and 22 (a chunk boundary inside a row of B)
    logits = (4 * torch.randn(3, 50, 37, dtype=torch.float64)).to(dtype).requires_grad_(grad)
    tokens = torch.randint(0, 37, (3, 5, 50))
    lse = pass_parts.proposal_logsumexp(logits)
    got = pass_parts.token_log_q(logits, tokens, lse)
    acc = torch.promote_types(dtype, torch.float32)
    full = F.log_softmax(logits.detach().to(torch.float64), dim=-1)
    want = full.unsqueeze(1).expand(-1, 5, -1, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert got.shape == (3, 5, 50) and got.dtype == acc and lse.dtype == acc
    assert not got.requires_grad  # q is the detached proposal
    assert lse.requires_grad == grad  # the LM loss's gradient runs through the logsumexp
    assert torch.allclose(got.double(), want, atol=tol, rtol=0)


def test_the_cross_entropy_from_the_logsumexp_is_fs_with_its_gradient():
    torch.manual_seed(1)
    logits = torch.randn(2, 7, 11, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 11, (2, 7))
    scored = torch.rand(2, 7) > 0.3
    lse = pass_parts.proposal_logsumexp(logits)
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    ours = torch.where(scored, lse - picked, torch.zeros_like(picked)).sum()
    (g_ours,) = torch.autograd.grad(ours, logits)
    theirs = F.cross_entropy(logits.flatten(0, 1), tokens.masked_fill(~scored, -100).flatten(),
                             ignore_index=-100, reduction="sum")
    (g_theirs,) = torch.autograd.grad(theirs, logits)
    assert torch.allclose(ours, theirs, atol=1e-12, rtol=0)
    assert torch.allclose(g_ours, g_theirs, atol=1e-12, rtol=0)


def test_chunked_rows_see_their_own_row():
    """Each row's logsumexp is its own: rows with very different scales, across chunks."""
    rows = 130
    logits = torch.zeros(1, rows, 4)
    logits[0, :, 0] = torch.arange(rows, dtype=torch.float32)  # row r: [r, 0, 0, 0]
    tokens = torch.zeros(1, 1, rows, dtype=torch.long)
    got = pass_parts.token_log_q(logits, tokens, pass_parts.proposal_logsumexp(logits))[0, 0]
    r = torch.arange(rows, dtype=torch.float64)
    want = r - torch.log(torch.exp(r) + 3)
    assert torch.allclose(got.double(), want, atol=1e-5, rtol=0)
