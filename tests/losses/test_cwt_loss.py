"""Contrastive weight tying against a naive closed form (python loops, float64),
float64 gradcheck, and a dispatch-level check that no V-sized tensor is ever formed."""

import math

import pytest
import torch
from torch.autograd import gradcheck
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from energy_lm.losses import cwt_candidates, cwt_loss, cwt_loss_from_rows

REPEATED = torch.tensor([3, 5, 3, 0, 6, 5, 3])  # N = 7, U = 4
UNIQUE = torch.tensor([4, 1, 6, 0, 2])


def naive_cwt(hidden, targets, weight, dedup):
    """Per-position losses by the definition, in python floats."""
    h, w = hidden.double().tolist(), weight.double().tolist()
    tokens = targets.tolist()
    candidates = sorted(set(tokens)) if dedup else tokens
    losses = []
    for n, t in enumerate(tokens):
        scores = [sum(a * b for a, b in zip(h[n], w[c])) for c in candidates]
        own = scores[candidates.index(t)] if dedup else scores[n]
        log_norm = math.log(sum(math.exp(s) for s in scores))
        losses.append(log_norm - own)
    return torch.tensor(losses, dtype=torch.float64)


def make_inputs(targets, vocab=8, dim=5, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(targets.numel(), dim, generator=gen, dtype=dtype)
    weight = torch.randn(vocab, dim, generator=gen, dtype=dtype)
    return hidden.requires_grad_(), weight.requires_grad_()


@pytest.mark.parametrize("dedup", [False, True])
@pytest.mark.parametrize("targets", [REPEATED, UNIQUE], ids=["repeated", "unique"])
def test_matches_naive_closed_form(targets, dedup):
    hidden, weight = make_inputs(targets)
    loss = cwt_loss(hidden, targets, weight, dedup=dedup)
    assert loss.shape == (targets.numel(),) and loss.dtype == torch.float64
    expected = naive_cwt(hidden, targets, weight, dedup)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    total = cwt_loss(hidden, targets, weight, dedup=dedup, reduction="sum")
    torch.testing.assert_close(total, loss.sum())


def test_dedup_changes_the_loss_only_when_targets_repeat():
    hidden, weight = make_inputs(REPEATED)
    plain = cwt_loss(hidden, REPEATED, weight)
    dedup = cwt_loss(hidden, REPEATED, weight, dedup=True)
    # without dedup a repeated token counts once per occurrence in every position's
    # normaliser (and is its own negative): every loss is larger
    assert (plain > dedup + 1e-6).all()
    hidden, weight = make_inputs(UNIQUE)
    torch.testing.assert_close(cwt_loss(hidden, UNIQUE, weight),
                               cwt_loss(hidden, UNIQUE, weight, dedup=True))


def test_candidates_and_labels():
    candidates, labels = cwt_candidates(REPEATED, dedup=True)
    assert candidates.tolist() == [0, 3, 5, 6]
    assert torch.equal(candidates[labels], REPEATED)
    candidates, labels = cwt_candidates(REPEATED)
    assert torch.equal(candidates, REPEATED) and labels.tolist() == list(range(7))


@pytest.mark.parametrize("dedup", [False, True])
def test_gradcheck_hidden_and_embedding(dedup):
    hidden, weight = make_inputs(REPEATED, vocab=7, dim=3, seed=1)
    assert gradcheck(lambda h, w: cwt_loss(h, REPEATED, w, dedup=dedup), (hidden, weight))


def test_gradient_reaches_only_the_target_rows_of_the_embedding():
    hidden, weight = make_inputs(REPEATED, vocab=8, seed=2)
    cwt_loss(hidden, REPEATED, weight, reduction="sum").backward()
    touched = weight.grad.abs().sum(-1) > 0
    assert touched.tolist() == [i in {0, 3, 5, 6} for i in range(8)]


def test_from_rows_matches_and_counts_correct():
    targets = torch.tensor([2, 7, 2, 4])
    weight = torch.eye(8, dtype=torch.float64)  # orthonormal rows
    hidden = 5.0 * weight[targets]
    hidden[3] = 5.0 * weight[7]  # position 3 points at the wrong token
    candidates, labels = cwt_candidates(targets)
    loss, correct = cwt_loss_from_rows(hidden, weight[candidates], labels)
    torch.testing.assert_close(loss, cwt_loss(hidden, targets, weight))
    # positions 0 and 2 tie with each other (same token): ties count as correct
    assert correct.tolist() == [True, True, True, False]
    total, count = cwt_loss(hidden, targets, weight, reduction="sum", return_correct=True)
    torch.testing.assert_close(total, loss.sum())
    assert count.item() == 3


def test_no_trained_positions_gives_zero_sum():
    weight = torch.randn(6, 4, requires_grad=True)
    for dedup in (False, True):
        loss, count = cwt_loss(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), weight,
                               dedup=dedup, reduction="sum", return_correct=True)
        assert loss.item() == 0.0 and count.item() == 0


def test_bad_inputs_raise():
    hidden, weight = make_inputs(UNIQUE)
    with pytest.raises(ValueError):
        cwt_loss(hidden, UNIQUE, weight, reduction="mean")
    with pytest.raises(ValueError):
        cwt_loss(hidden[:, :3], UNIQUE, weight)
    with pytest.raises(ValueError):
        cwt_loss(hidden, UNIQUE[:3], weight)
    with pytest.raises(ValueError):
        cwt_loss(hidden, UNIQUE.view(5, 1), weight)


@pytest.mark.parametrize("dedup", [False, True])
def test_bf16_inputs_give_fp32_close_to_fp32(dedup):
    hidden, weight = make_inputs(REPEATED, dtype=torch.float32, seed=3)
    low, low_correct = cwt_loss(hidden.bfloat16(), REPEATED, weight.bfloat16(), dedup=dedup,
                                return_correct=True)
    full = cwt_loss(hidden, REPEATED, weight, dedup=dedup)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert low_correct.dtype == torch.bool
    torch.testing.assert_close(low, full, rtol=0.03, atol=0.03)
    # gradients reach bf16 leaves too, in their own dtype
    hidden_bf = hidden.detach().bfloat16().requires_grad_()
    weight_bf = weight.detach().bfloat16().requires_grad_()
    cwt_loss(hidden_bf, REPEATED, weight_bf, dedup=dedup, reduction="sum").backward()
    assert weight_bf.grad.dtype == torch.bfloat16 and torch.isfinite(weight_bf.grad).all()


class ShapeRecorder(TorchDispatchMode):
    """Records the shape of every tensor each aten op returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.shapes += [(str(func), tuple(t.shape)) for t in tree_leaves(out)
                        if isinstance(t, torch.Tensor)]
        return out


def v_sized(recorder, vocab, dim):
    """Op outputs with a V-sized axis, other than the (V, d) embedding gradient."""
    return [(op, shape) for op, shape in recorder.shapes
            if vocab in shape and shape != (vocab, dim)]


@pytest.mark.parametrize("dedup", [False, True])
def test_never_forms_a_v_sized_tensor(dedup):
    vocab, dim = 50_000, 8
    targets = torch.tensor([17, 49_999, 17, 3, 256, 3])
    hidden = torch.randn(6, dim, requires_grad=True)
    weight = torch.randn(vocab, dim, requires_grad=True)
    with ShapeRecorder() as recorder:
        cwt_loss(hidden, targets, weight, dedup=dedup, reduction="sum").backward()
    assert recorder.shapes, "the recorder saw no ops"
    assert any(shape == (vocab, dim) for _, shape in recorder.shapes)  # the embedding grad
    assert v_sized(recorder, vocab, dim) == []
    assert weight.grad.abs().sum(-1).nonzero().flatten().tolist() == [3, 17, 256, 49_999]


def test_shape_recorder_catches_a_full_vocabulary_projection():
    vocab, dim = 50_000, 8
    hidden = torch.randn(6, dim, requires_grad=True)
    weight = torch.randn(vocab, dim, requires_grad=True)
    with ShapeRecorder() as recorder:
        torch.nn.functional.cross_entropy(hidden @ weight.T, torch.arange(6)).backward()
    assert v_sized(recorder, vocab, dim)
