"""log q of the scored tokens and candidates: logit - a chunked logsumexp, the same
numbers as the full log-softmax it replaces (without writing a (B, S, V) fp32 copy)."""

import pytest
import torch
import torch.nn.functional as F

from energy_lm.inference import pass_parts


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5),
                                       (torch.bfloat16, 2e-5)])
def test_log_q_equals_the_gathered_log_softmax(dtype, tol):
    torch.manual_seed(0)
    # 3 x 50 = 150 rows: chunks of 64, 64 and 22 (a chunk boundary inside a row of B)
    logits = (4 * torch.randn(3, 50, 37, dtype=torch.float64)).to(dtype).requires_grad_()
    tokens = torch.randint(0, 37, (3, 5, 50))
    got = pass_parts.token_log_q(logits, tokens)
    acc = torch.promote_types(dtype, torch.float32)
    full = F.log_softmax(logits.detach().to(torch.float64), dim=-1)
    want = full.unsqueeze(1).expand(-1, 5, -1, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert got.shape == (3, 5, 50) and got.dtype == acc
    assert not got.requires_grad  # q is the detached proposal
    assert torch.allclose(got.double(), want, atol=tol, rtol=0)


def test_chunked_rows_see_their_own_row():
    """Each row's logsumexp is its own: rows with very different scales, across chunks."""
    rows = 130
    logits = torch.zeros(1, rows, 4)
    logits[0, :, 0] = torch.arange(rows, dtype=torch.float32)  # row r: [r, 0, 0, 0]
    tokens = torch.zeros(1, 1, rows, dtype=torch.long)
    got = pass_parts.token_log_q(logits, tokens)[0, 0]
    r = torch.arange(rows, dtype=torch.float64)
    want = r - torch.log(torch.exp(r) + 3)
    assert torch.allclose(got.double(), want, atol=1e-5, rtol=0)
