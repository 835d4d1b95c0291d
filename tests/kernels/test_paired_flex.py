"""The FlexAttention paired-attention backend against the reference, with equal and
grouped key/value heads. torch 2.13 has no FlexAttention backward on the CPU, so
gradients are compared only with CUDA."""

import pytest
import torch

from conftest import PAIRED_MODE_IDS, PAIRED_MODES, layout_of, paired_tensors
from energy_lm.kernels import paired_attention
from energy_lm.kernels.alibi import alibi_slopes

MODES = PAIRED_MODES
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def case(seed=0, b=2, h=3, n=13, m=7, d=16):
    g = torch.Generator().manual_seed(seed)
    six = [torch.randn(b, h, x, d, generator=g).to(DEVICE) for x in (n, n, n, m, m, m)]
    cand_pos = torch.randint(0, n, (b, m), generator=g).to(DEVICE)
    seg = (torch.rand(b, n, generator=g) < 0.3).cumsum(1).to(DEVICE)
    pad = torch.zeros(b, n, dtype=torch.bool)
    pad[1, n - 3:] = True
    return six, cand_pos, seg, pad.to(DEVICE)


@pytest.mark.parametrize("causal,mode", MODES)
@pytest.mark.parametrize("masks", [False, True])
def test_flex_forward_equals_reference(causal, mode, masks):
    six, cand_pos, seg, pad = case()
    kwargs = dict(causal=causal, alibi_slopes=alibi_slopes(3).to(DEVICE) if mode else None,
                  alibi_mode=mode or "causal", segment_ids=seg if masks else None,
                  key_padding_mask=pad if masks else None)
    with torch.no_grad():
        got = paired_attention(*six, layout_of(cand_pos, six[0].size(2), **kwargs), backend="flex")
        want = paired_attention(*six, layout_of(cand_pos, six[0].size(2), **kwargs),
                                backend="reference")
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def grouped_case(kv_heads, masks, causal, seed=0, b=2, h=6, n=13, m=7, d=16):
    """Six tensors with H = 6 query heads and kv_heads key/value heads (odd N, M), the
    candidates at random positions including both ends (causal: p = N)."""
    g = torch.Generator().manual_seed(seed)
    cand_pos = torch.randint(0, n, (b, m), generator=g)
    cand_pos[:, 0], cand_pos[:, -1] = 0, n if causal else n - 1
    six, seg, pad = paired_tensors(b, h, n, d, cand_pos, masks, generator=g, kv_heads=kv_heads)
    return [t.to(DEVICE) for t in six], cand_pos.to(DEVICE), seg, pad


def grouped_kwargs(causal, mode, seg, pad, h=6):
    return dict(causal=causal, alibi_slopes=alibi_slopes(h).to(DEVICE) if mode else None,
                alibi_mode=mode or "causal",
                segment_ids=seg.to(DEVICE) if seg is not None else None,
                key_padding_mask=pad.to(DEVICE) if pad is not None else None)


# grouped-query attention: query head h reads key/value head h // (6 / kv_heads); the
# per-query-head ALiBi slopes make a wrong head mapping visible
@pytest.mark.parametrize("kv_heads", [2, 1])
@pytest.mark.parametrize("masks", ["none", "both"])
@pytest.mark.parametrize("causal,mode", MODES, ids=PAIRED_MODE_IDS)
def test_flex_forward_with_grouped_heads_equals_reference(causal, mode, masks, kv_heads):
    six, cand_pos, seg, pad = grouped_case(kv_heads, masks, causal)
    assert six[1].size(1) == kv_heads and six[4].size(1) == kv_heads
    layout = layout_of(cand_pos, six[0].size(2), **grouped_kwargs(causal, mode, seg, pad))
    with torch.no_grad():
        got = paired_attention(*six, layout, backend="flex")
        want = paired_attention(*six, layout, backend="reference")
        _, got_c = paired_attention(*six, layout, backend="flex", need_data_out=False)
    for x, y in zip((*got, got_c), (*want, want[1])):
        assert x.shape == y.shape == six[0].shape[:2] + y.shape[2:]
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention backward needs CUDA")
@pytest.mark.parametrize("kv_heads", [2, 1])
def test_flex_gradients_with_grouped_heads_equal_reference_on_gpu(kv_heads):
    six, cand_pos, seg, pad = grouped_case(kv_heads, "both", causal=True)
    layout = layout_of(cand_pos, six[0].size(2), **grouped_kwargs(True, "causal", seg, pad))
    grads = {}
    for backend in ("flex", "reference"):
        leaves = [t.detach().requires_grad_() for t in six]
        out, out_c = paired_attention(*leaves, layout, backend=backend)
        grads[backend] = torch.autograd.grad(out.sum() + (out_c * out_c).sum(), leaves)
    for x, y in zip(grads["flex"], grads["reference"]):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)


def test_flex_query_without_keys_returns_zero():
    six, cand_pos, _, _ = case(n=6, m=2)
    pad = torch.zeros(2, 6, dtype=torch.bool, device=DEVICE)
    pad[0, :3] = True  # causal data queries 0..2 of row 0 see only padding
    with torch.no_grad():
        out, _ = paired_attention(*six,
                                  layout_of(cand_pos, six[0].size(2), causal=True,
                                            key_padding_mask=pad),
                                  backend="flex")
    assert torch.isfinite(out).all() and not out[0, :, :3].any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention backward needs CUDA")
def test_flex_gradients_equal_reference_on_gpu():
    six, cand_pos, seg, pad = case()
    kwargs = dict(causal=True, alibi_slopes=alibi_slopes(3).cuda(), alibi_mode="causal",
                  segment_ids=seg, key_padding_mask=pad)
    grads = {}
    for backend in ("flex", "reference"):
        leaves = [t.detach().requires_grad_() for t in six]
        out, out_c = paired_attention(*leaves, layout_of(cand_pos, leaves[0].size(2), **kwargs),
                                      backend=backend)
        grads[backend] = torch.autograd.grad(out.sum() + out_c.sum(), leaves)
    for x, y in zip(grads["flex"], grads["reference"]):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)


def test_block_mask_is_built_once_per_batch_and_reused(monkeypatch):
    """One layout handed to two layers (as a candidate stage hands its layout to every
    layer): the second call reuses the first one's BlockMask and still equals the
    reference; a new layout (new candidates) builds a new one."""
    from energy_lm.kernels import flex_paired

    built = []
    build = flex_paired._batch_layout
    monkeypatch.setattr(flex_paired, "_batch_layout",
                        lambda *a, **kw: built.append(1) or build(*a, **kw))
    six, cand_pos, seg, pad = case()
    kwargs = dict(causal=False, alibi_slopes=alibi_slopes(3).to(DEVICE), alibi_mode="shifted",
                  segment_ids=seg, key_padding_mask=pad)
    layout = layout_of(cand_pos, six[0].size(2), **kwargs)
    with torch.no_grad():
        for layer_seed in (0, 1):  # two "layers": new q/k/v, same batch layout
            layer = case(seed=layer_seed)[0]
            got = paired_attention(*layer, layout, backend="flex")
            want = paired_attention(*layer, layout_of(cand_pos, six[0].size(2), **kwargs),
                                    backend="reference")
            for x, y in zip(got, want):
                torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
        assert len(built) == 1
        paired_attention(*six, layout_of(cand_pos, six[0].size(2), **kwargs), backend="flex")
    assert len(built) == 2
