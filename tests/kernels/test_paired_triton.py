"""The Triton paired-attention backend against `paired_attention_reference`: forward and
the gradients of all six inputs, on awkward shapes, every mask and ALiBi mode.

Without CUDA the kernels run on CPU tensors under the Triton interpreter, which this
module switches on (TRITON_INTERPRET=1) when it is not set. The interpreter is slow, so
the cases are few and small, chosen to cover each feature rather than their product;
the larger sweep runs only with CUDA.

Tolerances: fp32 against the reference run in fp64, atol 2e-5 and rtol 1e-4. bf16 and
fp16 (flash-attention style): the kernel's max error against the reference run in fp32
is at most 2x the max error of the reference run in the same low precision, plus a
floor of a quarter of the low-precision epsilon times the largest reference value plus
1e-6 (for gradients that are exactly 0 in exact arithmetic).
"""

import os

import pytest
import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # read by Triton when the kernels are decorated

triton = pytest.importorskip("triton")

from conftest import layout_of, paired_tensors  # noqa: E402
from energy_lm.kernels import triton_paired  # noqa: E402
from energy_lm.kernels.reference import paired_attention_reference  # noqa: E402
from energy_lm.kernels.alibi import alibi_slopes  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not triton_paired._interpreting():
    pytest.skip("no CUDA, and the Triton interpreter is off: set TRITON_INTERPRET=1 before "
                "triton is first imported", allow_module_level=True)

NAMES = ["out", "out_c", "dq", "dk", "dv", "dq_c", "dk_c", "dv_c"]


pytestmark = pytest.mark.usefixtures("single_thread")


def make_case(b, h, n, d, cand, masks="none", dtype=torch.float32, seed=0, causal=False,
              kv_heads=0):
    """Six random (B, H, ., D) tensors (keys and values with kv_heads heads when given),
    cand_pos (B, M) and the optional masks.

    cand: "m0" no candidates; "kK" K candidates at every position (M = K * N); an int M:
    M random positions, with repeats, always including positions 0 and N - 1 (causal: N,
    the energy position of a block's last target).
    """
    g = torch.Generator().manual_seed(seed)
    if cand == "m0":
        cand_pos = torch.zeros(b, 0, dtype=torch.long)
    elif isinstance(cand, str):
        cand_pos = torch.arange(n).repeat_interleave(int(cand[1:])).expand(b, -1).clone()
    else:
        cand_pos = torch.randint(0, n, (b, cand), generator=g)
        cand_pos[:, 0], cand_pos[:, -1] = 0, n if causal else n - 1
    six, seg, pad = paired_tensors(b, h, n, d, cand_pos, masks, dtype, segment_rate=0.15,
                                   generator=g, kv_heads=kv_heads)
    return six, cand_pos, seg, pad


def run(fn, six, cand_pos, upstream, **kwargs):
    """fn's (out, out_c) and the gradients of sum(out * u) + sum(out_c * u_c) for the six."""
    leaves = [t.detach().to(DEVICE).requires_grad_() for t in six]
    extra = {key: (val.to(DEVICE) if torch.is_tensor(val) else val) for key, val in kwargs.items()}
    out, out_c = fn(*leaves, layout_of(cand_pos.to(DEVICE), leaves[0].size(2), **extra))
    loss = ((out.float() * upstream[0].to(DEVICE)).sum()
            + (out_c.float() * upstream[1].to(DEVICE)).sum())
    grads = torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
    return [x.detach().cpu() for x in (out, out_c, *grads)]


def upstream_for(six, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(six[0].shape, generator=g), torch.randn(six[3].shape, generator=g))


def keywords(h, causal, mode, seg, pad):
    return dict(causal=causal, alibi_slopes=alibi_slopes(h) if mode else None,
                alibi_mode=mode or "causal", segment_ids=seg, key_padding_mask=pad)


def max_err(x, y):
    return (x.double() - y.double()).abs().max().item() if x.numel() else 0.0


def assert_within_low_precision_error(got, ref32, ref_low, eps, factor=2.0):
    """Kernel error (vs fp32) <= factor * error of the low-precision reference + a floor
    of eps / 4 times the largest reference value + 1e-6; for each output and gradient."""
    report = []
    for name, x, y, z in zip(NAMES, got, ref32, ref_low):
        assert x.shape == y.shape and x.dtype == z.dtype, name
        err, ref_err = max_err(x, y), max_err(z, y)
        floor = eps / 4 * (y.abs().max().item() if y.numel() else 0.0) + 1e-6
        report.append(f"{name}: {err:.2e} vs {ref_err:.2e}")
        assert torch.isfinite(x).all(), name
        assert err <= factor * ref_err + floor, f"{name}: kernel error {err:.3e} > " \
            f"{factor} x reference error {ref_err:.3e} + floor {floor:.1e} ({'; '.join(report)})"


# (name, B, H, N, D, candidates, causal, ALiBi mode, masks): "causal" ALiBi only with
# causal attention, "symmetric" and "shifted" only bidirectional, as the models use them
CASES = [
    ("n1-causal", 1, 1, 1, 24, "k2", True, None, "none"),
    ("n1-bidir-symmetric", 1, 2, 1, 24, "k2", False, "symmetric", "padding"),
    ("n7-k2-causal-alibi-both", 3, 2, 7, 24, "k2", True, "causal", "both"),
    ("n7-k3-bidir-shifted-padding", 1, 2, 7, 24, "k3", False, "shifted", "padding"),
    ("n7-m0-bidir-symmetric-segments", 3, 2, 7, 24, "m0", False, "symmetric", "segments"),
    ("n7-m5-bidir-both", 3, 1, 7, 24, 5, False, None, "both"),
    ("n97-m40-causal-segments-d72", 1, 2, 97, 72, 40, True, None, "segments"),
    ("n97-m40-causal-alibi-both-d72", 1, 2, 97, 72, 40, True, "causal", "both"),
    ("n97-m23-bidir-shifted-padding", 1, 2, 97, 24, 23, False, "shifted", "padding"),
    ("n97-k1-bidir-symmetric-both", 1, 1, 97, 24, "k1", False, "symmetric", "both"),
    ("n97-k2-causal-both", 1, 1, 97, 24, "k2", True, None, "both"),  # sorted: tiles skipped
    ("n33-m50-causal-alibi-both-d64", 3, 1, 33, 64, 50, True, "causal", "both"),
    ("n33-m9-bidir-padding-d64", 1, 1, 33, 64, 9, False, None, "padding"),
    ("n257-m30-causal-alibi-both", 1, 1, 257, 24, 30, True, "causal", "both"),
    ("n257-m11-bidir-symmetric-segments-b3", 3, 1, 257, 24, 11, False, "symmetric", "segments"),
]


def tiered(cases):
    """The cases as pytest params; the N = 257 ones (most of the interpreter's time: they
    cross several key tiles) run in the slow tier, which CI runs too."""
    return [pytest.param(*c, id=c[0], marks=[pytest.mark.slow] if c[3] > 200 else [])
            for c in cases]


@pytest.mark.parametrize("name,b,h,n,d,cand,causal,mode,masks", tiered(CASES))
def test_fp32_matches_reference_forward_and_all_grads(name, b, h, n, d, cand, causal, mode, masks):
    six, cand_pos, seg, pad = make_case(b, h, n, d, cand, masks, causal=causal)
    upstream = upstream_for(six)
    kwargs = keywords(h, causal, mode, seg, pad)
    got = run(triton_paired.paired_attention_triton, six, cand_pos, upstream, **kwargs)
    want = run(paired_attention_reference, [t.double() for t in six], cand_pos, upstream, **kwargs)
    for label, x, y in zip(NAMES, got, want):
        assert x.dtype == torch.float32 and x.shape == y.shape, label
        torch.testing.assert_close(x.double(), y, atol=2e-5, rtol=1e-4,
                                   msg=lambda s, label=label: f"{label}: {s}")


LOW_CASES = CASES


@pytest.mark.parametrize("name,b,h,n,d,cand,causal,mode,masks", tiered(LOW_CASES))
def test_bf16_error_at_most_twice_the_reference_in_bf16(name, b, h, n, d, cand, causal, mode,
                                                       masks):
    six, cand_pos, seg, pad = make_case(b, h, n, d, cand, masks, dtype=torch.bfloat16, causal=causal)
    upstream = upstream_for(six)
    kwargs = keywords(h, causal, mode, seg, pad)
    got = run(triton_paired.paired_attention_triton, six, cand_pos, upstream, **kwargs)
    ref32 = run(paired_attention_reference, [t.float() for t in six], cand_pos, upstream, **kwargs)
    ref_low = run(paired_attention_reference, six, cand_pos, upstream, **kwargs)
    assert_within_low_precision_error(got, ref32, ref_low, eps=torch.finfo(torch.bfloat16).eps)


@pytest.mark.parametrize("name,b,h,n,d,cand,causal,mode,masks", [CASES[i] for i in (1, 2, 8)],
                         ids=[CASES[i][0] for i in (1, 2, 8)])
def test_fp16_error_at_most_twice_the_reference_in_fp16(name, b, h, n, d, cand, causal, mode,
                                                       masks):
    six, cand_pos, seg, pad = make_case(b, h, n, d, cand, masks, dtype=torch.float16, causal=causal)
    upstream = upstream_for(six)
    kwargs = keywords(h, causal, mode, seg, pad)
    got = run(triton_paired.paired_attention_triton, six, cand_pos, upstream, **kwargs)
    ref32 = run(paired_attention_reference, [t.float() for t in six], cand_pos, upstream, **kwargs)
    ref_low = run(paired_attention_reference, six, cand_pos, upstream, **kwargs)
    assert_within_low_precision_error(got, ref32, ref_low, eps=torch.finfo(torch.float16).eps)


# Grouped-query attention: H = 6 query heads read Hk = 2 or 1 key/value heads (query head
# h reads h // (6 / Hk)), never repeated in memory. The ALiBi slopes are per query head,
# and the dk, dv (and own-key dk_c, dv_c) of a key/value head sum the terms of its
# group's query heads, so a wrong head mapping or a lost group member fails.
# (name, B, H, Hk, N, D, candidates, causal, ALiBi mode, masks); N = 37 and 35 cross two
# key and query tiles.
GQA_CASES = [
    ("h6-kv2-n37-m19-causal-alibi-both", 2, 6, 2, 37, 24, 19, True, "causal", "both"),
    ("h6-kv1-n37-m19-causal-segments", 1, 6, 1, 37, 24, 19, True, None, "segments"),
    ("h6-kv2-n35-m21-bidir-shifted-padding", 1, 6, 2, 35, 24, 21, False, "shifted", "padding"),
    ("h6-kv1-n7-k2-bidir-symmetric-both", 3, 6, 1, 7, 24, "k2", False, "symmetric", "both"),
    ("h6-kv2-n5-m0-bidir-both", 1, 6, 2, 5, 24, "m0", False, None, "both"),
]
GQA_ARGS = "name,b,h,kv,n,d,cand,causal,mode,masks"
GQA_IDS = [c[0] for c in GQA_CASES]


@pytest.mark.parametrize(GQA_ARGS, GQA_CASES, ids=GQA_IDS)
def test_grouped_heads_fp32_match_reference_forward_and_all_grads(name, b, h, kv, n, d, cand,
                                                                  causal, mode, masks):
    six, cand_pos, seg, pad = make_case(b, h, n, d, cand, masks, causal=causal, kv_heads=kv)
    upstream = upstream_for(six)
    kwargs = keywords(h, causal, mode, seg, pad)
    got = run(triton_paired.paired_attention_triton, six, cand_pos, upstream, **kwargs)
    want = run(paired_attention_reference, [t.double() for t in six], cand_pos, upstream, **kwargs)
    for label, x, y, t in zip(NAMES, got, want, [six[0], six[3], *six]):
        assert x.dtype == torch.float32 and x.shape == y.shape == t.shape, label
        torch.testing.assert_close(x.double(), y, atol=2e-5, rtol=1e-4,
                                   msg=lambda s, label=label: f"{label}: {s}")


@pytest.mark.parametrize(GQA_ARGS, [GQA_CASES[i] for i in (0, 2, 3)],
                         ids=[GQA_IDS[i] for i in (0, 2, 3)])
def test_grouped_heads_bf16_error_at_most_twice_the_reference_in_bf16(name, b, h, kv, n, d,
                                                                      cand, causal, mode, masks):
    six, cand_pos, seg, pad = make_case(b, h, n, d, cand, masks, dtype=torch.bfloat16,
                                        causal=causal, kv_heads=kv)
    upstream = upstream_for(six)
    kwargs = keywords(h, causal, mode, seg, pad)
    got = run(triton_paired.paired_attention_triton, six, cand_pos, upstream, **kwargs)
    ref32 = run(paired_attention_reference, [t.float() for t in six], cand_pos, upstream, **kwargs)
    ref_low = run(paired_attention_reference, six, cand_pos, upstream, **kwargs)
    assert_within_low_precision_error(got, ref32, ref_low, eps=torch.finfo(torch.bfloat16).eps)


@pytest.mark.parametrize("kv", [2, 1])
def test_grouped_heads_without_data_keys(kv):
    """N = 0 (causal candidates at p = 0 see only their own key): out_c of query head h is
    v_c of its key/value head, and dv_c sums the group's upstream gradients."""
    cand_pos = torch.zeros(2, 5, dtype=torch.long)
    six, _, _ = paired_tensors(2, 6, 0, 24, cand_pos, kv_heads=kv, seed=3)
    upstream = upstream_for(six)
    got = run(triton_paired.paired_attention_triton, six, cand_pos, upstream, causal=True)
    want = run(paired_attention_reference, [t.double() for t in six], cand_pos, upstream,
               causal=True)
    torch.testing.assert_close(got[1], six[5].repeat_interleave(6 // kv, dim=1))
    for label, x, y in zip(NAMES, got, want):
        assert x.shape == y.shape, label
        torch.testing.assert_close(x.double(), y, atol=2e-5, rtol=1e-4,
                                   msg=lambda s, label=label: f"{label}: {s}")


@pytest.mark.parametrize("causal,mode", [(True, "causal"), (False, None)], ids=["causal", "bidir"])
def test_query_with_no_visible_key_returns_zero_without_nan(causal, mode):
    six, cand_pos, _, _ = make_case(3, 2, 7, 24, "k2")
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[0, :2] = True  # left padding: causal data rows 0 and 1 see only padding
    pad[1] = True  # a fully padded row: no data query sees anything
    kwargs = keywords(2, causal, mode, None, pad)
    upstream = upstream_for(six)
    got = run(triton_paired.paired_attention_triton, six, cand_pos, upstream, **kwargs)
    want = run(paired_attention_reference, [t.double() for t in six], cand_pos, upstream, **kwargs)
    out, out_c, dq, dk, dv = got[:5]
    assert all(torch.isfinite(x).all() for x in got)
    assert (out[1] == 0).all() and (dq[1] == 0).all() and (dk[1] == 0).all() and (dv[1] == 0).all()
    torch.testing.assert_close(out_c[1], six[5][1])  # a candidate still sees its own key
    if causal:
        assert (out[0, :, :2] == 0).all() and (dq[0, :, :2] == 0).all()
    for label, x, y in zip(NAMES, got, want):
        torch.testing.assert_close(x.double(), y, atol=2e-5, rtol=1e-4,
                                   msg=lambda s, label=label: f"{label}: {s}")


@pytest.mark.parametrize("kv_heads", [0, 1], ids=["equal-heads", "grouped-heads"])
def test_strided_inputs_and_bf16_backward_are_deterministic(kv_heads):
    """Two runs give bitwise-equal outputs and gradients (no atomics in the backward: with
    grouped heads one program sums a key/value head's query heads in a fixed order); the
    inputs are non-contiguous views."""
    six, cand_pos, seg, pad = make_case(1, 2, 40, 24, 30, "both", dtype=torch.bfloat16,
                                        kv_heads=kv_heads)
    six = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in six]  # (B, H, ., D) views
    assert not six[0].is_contiguous()
    upstream = upstream_for(six)
    kwargs = keywords(2, True, "causal", seg, pad)
    first = run(triton_paired.paired_attention_triton, six, cand_pos, upstream, **kwargs)
    second = run(triton_paired.paired_attention_triton, six, cand_pos, upstream, **kwargs)
    for label, x, y in zip(NAMES, first, second):
        assert torch.equal(x, y), label


def _as_layers_hand_them(t, fused=False):
    """(B, H, T, D) -> the same values as a (T, B, H, D) tensor permuted to (B, H, T, D),
    the view the attention layers pass; fused: a slice of a (T, B, 2, H, D) projection
    (not dense: the kernels must copy it)."""
    b, h, n, d = t.shape
    base = t.permute(2, 0, 1, 3)  # (T, B, H, D)
    if fused:
        pair = torch.stack([base, torch.zeros_like(base)], dim=2).contiguous()
        return pair[:, :, 0].permute(1, 2, 0, 3)
    return base.contiguous().permute(1, 2, 0, 3)


@pytest.mark.parametrize("kv_heads", [0, 1], ids=["equal-heads", "grouped-heads"])
@pytest.mark.parametrize("fused", [False, True], ids=["layer-views", "fused-slice"])
def test_permuted_inputs_are_read_through_their_strides(fused, kv_heads):
    """The layers' permuted views go to the kernels as they are (no copy of any input:
    grouped keys and values are kept with their Hk heads, never repeated), a non-dense k
    is copied (with v's strides), and both match the reference (fp32 vs fp64), forward
    and all six gradients, with an upstream gradient laid out unlike the outputs."""
    six, cand_pos, seg, pad = make_case(2, 2, 37, 24, 19, "both", causal=True,
                                        kv_heads=kv_heads)
    six = [t.to(DEVICE) for t in six]  # the kernels' device (CUDA when there is one)
    cand_pos, seg, pad = (t.to(DEVICE) for t in (cand_pos, seg, pad))
    views = [_as_layers_hand_them(t, fused=fused and i == 1) for i, t in enumerate(six)]
    assert not any(t.is_contiguous() for t in views)
    leaves = [t.detach().requires_grad_() for t in views]
    layout = layout_of(cand_pos, 37, **keywords(2, True, "causal", seg, pad))
    out, out_c = triton_paired.paired_attention_triton(*leaves, layout)
    kept = out.grad_fn.saved_tensors[:6]  # the six inputs as the kernels read them
    copied = [i for i in range(6) if kept[i].data_ptr() != leaves[i].data_ptr()]
    assert copied == ([1] if fused else [])
    assert [t.shape for t in kept] == [t.shape for t in leaves]  # (B, Hk, ., D) kept so
    upstream = [u.transpose(0, 1).contiguous().transpose(0, 1) for u in upstream_for(six)]
    got = torch.autograd.grad((out * upstream[0]).sum() + (out_c * upstream[1]).sum(), leaves)
    want = run(paired_attention_reference, [t.double() for t in six], cand_pos, upstream_for(six),
               **keywords(2, True, "causal", seg, pad))
    for label, x, y in zip(NAMES, (out, out_c, *got), want):
        torch.testing.assert_close(x.detach().double(), y, atol=2e-5, rtol=1e-4,
                                   msg=lambda s, label=label: f"{label}: {s}")


def test_dropout_raises_not_implemented():
    six, cand_pos, _, _ = make_case(1, 1, 3, 16, "k1")
    with pytest.raises(NotImplementedError, match="dropout") as info:
        triton_paired.paired_attention_triton(*[t.to(DEVICE) for t in six],
                                              layout_of(cand_pos.to(DEVICE), 3, causal=True),
                                              dropout_p=0.1)
    assert "\n" not in str(info.value)


def test_float64_is_rejected_with_one_line():
    six, cand_pos, _, _ = make_case(1, 1, 3, 16, "k1", dtype=torch.float64)
    with pytest.raises(ValueError, match="float64 is not supported") as info:
        triton_paired.paired_attention_triton(*[t.to(DEVICE) for t in six],
                                              layout_of(cand_pos.to(DEVICE), 3, causal=True))
    assert "\n" not in str(info.value)


GPU_SWEEP = [
    # (B, H, N, D, candidates, causal, ALiBi mode, masks)
    (2, 4, 257, 64, "k2", True, "causal", "both"),
    (2, 4, 257, 59, 100, False, "shifted", "padding"),
    (1, 8, 1025, 128, 300, True, None, "segments"),
    (3, 2, 1025, 72, "k1", False, "symmetric", "both"),
    (2, 3, 513, 256, 64, True, "causal", "none"),
]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="larger sweep: needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b,h,n,d,cand,causal,mode,masks", GPU_SWEEP)
def test_gpu_sweep(b, h, n, d, cand, causal, mode, masks, dtype):
    six, cand_pos, seg, pad = make_case(b, h, n, d, cand, masks, dtype=dtype, causal=causal)
    upstream = upstream_for(six)
    kwargs = keywords(h, causal, mode, seg, pad)
    got = run(triton_paired.paired_attention_triton, six, cand_pos, upstream, **kwargs)
    if dtype == torch.float32:
        want = run(paired_attention_reference, [t.double() for t in six], cand_pos, upstream,
                   **kwargs)
        for label, x, y in zip(NAMES, got, want):
            torch.testing.assert_close(x.double(), y, atol=2e-5, rtol=1e-4,
                                       msg=lambda s, label=label: f"{label}: {s}")
    else:
        ref32 = run(paired_attention_reference, [t.float() for t in six], cand_pos, upstream,
                    **kwargs)
        ref_low = run(paired_attention_reference, six, cand_pos, upstream, **kwargs)
        assert_within_low_precision_error(got, ref32, ref_low, eps=torch.finfo(dtype).eps)


def test_dispatcher_runs_the_triton_backend():
    from energy_lm.kernels import paired_attention

    g = torch.Generator().manual_seed(0)
    six = [torch.randn(2, 3, n, 16, generator=g, device=DEVICE) for n in (9, 9, 9, 5, 5, 5)]
    cand_pos = torch.tensor([[1, 4, 4, 8, 0], [2, 3, 5, 7, 6]], device=DEVICE)
    kwargs = dict(causal=True, alibi_slopes=alibi_slopes(3).to(DEVICE), alibi_mode="causal")
    got = paired_attention(*six, layout_of(cand_pos, six[0].size(2), **kwargs), backend="triton")
    want = paired_attention(*six, layout_of(cand_pos, six[0].size(2), **kwargs),
                            backend="reference")
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, atol=2e-5, rtol=1e-4)
    _, alone = paired_attention(*six, layout_of(cand_pos, six[0].size(2), **kwargs),
                                backend="triton", need_data_out=False)
    torch.testing.assert_close(alone, want[1], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("head,std", [("linear", 0.3), ("seed", 0.05)])
def test_monarc_loss_and_gradients_inside_a_model_equal_the_reference(data_bin, head, std):
    """A full tiny causal model: the MonArc training loss and every parameter gradient
    with the Triton backend equal those with the reference backend (fp32). Each head is
    randomised to energies of a few units (the seed head's bilinear form grows as std^2 d)."""
    from conftest import build_model
    from fairseq.criterions import CRITERION_DATACLASS_REGISTRY, build_criterion
    from omegaconf import OmegaConf

    model, task = build_model(data_bin, "transformer_lm_zero_clap_tiny", "--decoder-layers", "1",
                              "--energy-head", head, task="language_modeling")
    for p in model.energy_head.parameters():
        torch.nn.init.normal_(p, std=std)
    model = model.to(DEVICE).train()
    torch.manual_seed(0)
    src = torch.randint(4, 300, (2, 12), device=DEVICE)
    sample = {"net_input": {"src_tokens": src}, "target": torch.roll(src, -1, 1),
              "ntokens": 24, "nsentences": 2}
    results = {}
    for backend in ("reference", "triton"):
        cfg = OmegaConf.structured(CRITERION_DATACLASS_REGISTRY["monarc"])
        cfg._name, cfg.attention_backend = "monarc", backend
        crit = build_criterion(cfg, task)
        model.zero_grad()
        torch.manual_seed(1)  # the same samples (and dropout masks: none here)
        loss, _, log = crit(model, sample)
        loss.backward()
        results[backend] = (loss.detach(), log["ebm_loss"],
                            {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (ref_loss, ref_ebm, ref_grads), (tri_loss, tri_ebm, tri_grads) = results["reference"], results["triton"]
    torch.testing.assert_close(tri_loss, ref_loss, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(tri_ebm, ref_ebm, atol=1e-5, rtol=1e-4)
    assert ref_grads.keys() == tri_grads.keys()
    scale = max(float(g.abs().max()) for g in ref_grads.values())
    for name in ref_grads:
        if name.endswith("k_proj.bias"):
            # a key bias shifts every score of a query's row alike, so softmax cancels it:
            # its gradient is 0 and both backends give rounding noise around it
            for grads in (ref_grads, tri_grads):
                assert float(grads[name].abs().max()) <= 1e-6 * scale, name
            continue
        torch.testing.assert_close(tri_grads[name], ref_grads[name], atol=1e-5, rtol=1e-3, msg=name)


ENTRY_CASES = ([(*CASES[i][:3], 0, *CASES[i][3:]) for i in (2, 3, 7, 9)]
               + [GQA_CASES[i] for i in (0, 3)])


@pytest.mark.parametrize(GQA_ARGS, ENTRY_CASES, ids=[c[0] for c in ENTRY_CASES])
def test_candidates_only_entry_matches_the_reference(name, b, h, kv, n, d, cand, causal, mode,
                                                     masks):
    """`candidate_attention_triton` (data query tiles skipped): out_c and the gradients of
    q_c, k_c, v_c, k, v equal the full reference's candidate rows (fp32 vs fp64), with
    equal and with grouped key/value heads."""
    from energy_lm.kernels.reference import candidate_attention_reference

    six, cand_pos, seg, pad = make_case(b, h, n, d, cand, masks, causal=causal, kv_heads=kv)
    u_c = upstream_for(six)[1]
    kwargs = keywords(h, causal, mode, seg, pad)

    def grads(fn, five):
        leaves = [t.detach().to(DEVICE).requires_grad_() for t in five]
        extra = {key: (val.to(DEVICE) if torch.is_tensor(val) else val)
                 for key, val in kwargs.items()}
        out_c = fn(*leaves, layout_of(cand_pos.to(DEVICE), leaves[3].size(2), **extra))
        g = torch.autograd.grad((out_c.double() * u_c.to(DEVICE)).sum(), leaves,
                                materialize_grads=True)
        return [x.detach().cpu().double() for x in (out_c, *g)]

    order = [3, 4, 5, 1, 2]  # q_c, k_c, v_c, k, v
    got = grads(triton_paired.candidate_attention_triton, [six[i] for i in order])
    want = grads(candidate_attention_reference, [six[i].double() for i in order])
    for label, x, y in zip(["out_c", "dq_c", "dk_c", "dv_c", "dk", "dv"], got, want):
        assert x.shape == y.shape, label
        torch.testing.assert_close(x, y, atol=2e-5, rtol=1e-4, msg=lambda s, label=label: f"{label}: {s}")


def test_a_head_wider_than_the_kernels_hold_is_refused_in_one_line_and_auto_falls_back():
    """D > 256 would not fit a GPU's shared memory (tools/kernel_compile_check.py: fp32
    D = 320 needs 397,568 B on sm_80): asked for, one line; auto takes the reference."""
    from energy_lm.kernels import backends, paired_attention

    cand_pos = torch.tensor([[0, 3]])
    six, _, _ = paired_tensors(1, 2, 4, 264, cand_pos)
    with pytest.raises(ValueError, match="head dim 264 > 256"):
        paired_attention(*six, layout_of(cand_pos, 4, causal=False), backend="triton")
    choice, why = backends.auto_choice("cuda", torch.bfloat16, 0.0, False, 264)
    assert choice == "reference" and "head dim 264 > 256" in why
    assert backends.auto_choice("cuda", torch.bfloat16, 0.0, False, 256)[0] == "triton"


@pytest.mark.parametrize("candidates_only", [False, True])
def test_a_head_dim_off_sixteen_is_padded_as_on_a_gpu_and_stays_exact(monkeypatch, candidates_only):
    """On a GPU a head dim that is not a multiple of 16 runs with zero columns added (the
    kernels spill registers otherwise: docs/kernels-compile.md); here the CPU takes the
    GPU's path, and forward and all gradients still equal the reference's, the scale being
    the true D's."""
    calls = []

    def padding(d, device):
        calls.append(d)
        return 0 if d % 16 == 0 else 16 - d % 16

    monkeypatch.setattr(triton_paired, "_head_padding", padding)
    cand_pos = torch.tensor([[0, 5, 5, 9], [3, 1, 9, 2]])
    six, seg, pad = paired_tensors(2, 6, 9, 24, cand_pos, "both", kv_heads=2, seed=4)
    six, cand_pos, seg, pad = [t.to(DEVICE) for t in six], *(t.to(DEVICE) for t in (cand_pos, seg, pad))
    layout = layout_of(cand_pos, 9, causal=True, alibi_slopes=alibi_slopes(6).to(DEVICE),
                       segment_ids=seg, key_padding_mask=pad)
    g = torch.Generator().manual_seed(2)
    up = torch.randn(2, 6, 4, 24, generator=g).to(DEVICE)

    def run(fn):
        leaves = [t.detach().clone().requires_grad_() for t in six]
        if candidates_only:
            q, k, v, q_c, k_c, v_c = leaves
            out_c = fn(q_c, k_c, v_c, k, v)
        else:
            out_c = fn(*leaves)[1]
        (out_c * up).sum().backward()
        return out_c.detach(), [t.grad if t.grad is not None else torch.zeros_like(t)
                                for t in leaves]

    if candidates_only:
        from energy_lm.kernels.reference import candidate_attention_reference as ref_fn
        got = run(lambda *a: triton_paired.candidate_attention_triton(*a, layout))
        want = run(lambda *a: ref_fn(*a, layout))
    else:
        got = run(lambda *a: triton_paired.paired_attention_triton(*a, layout))
        want = run(lambda *a: paired_attention_reference(*a, layout))
    assert calls and calls[0] == 24  # the padded path ran (24 -> 32 columns)
    torch.testing.assert_close(got[0], want[0], atol=2e-5, rtol=1e-4)
    for a, b in zip(got[1], want[1]):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_a_batch_beyond_a_gpu_grid_axis_is_refused_in_one_line():
    """Heads and batch rows are grid axes 1 and 2 (B * H may exceed 65,535; each alone
    may not): a larger batch stops before any launch."""
    cand_pos = torch.zeros(65_536, 1, dtype=torch.long)
    six = [torch.zeros(65_536, 1, 1, 16) for _ in range(6)]
    layout = layout_of(cand_pos, 1, causal=False)
    with pytest.raises(ValueError, match="65536 batch rows x 1 heads: a GPU grid axis holds 65535"):
        triton_paired.paired_attention_triton(*six, layout)


GPU_CONFIGS = [(arch, dtype, d) for arch in (80, 90) for dtype in (torch.float32, torch.bfloat16)
               for d in (24, 128)]


@pytest.mark.parametrize("arch,dtype,d", GPU_CONFIGS,
                         ids=[f"sm{a}-{str(t)[6:]}-D{d}" for a, t, d in GPU_CONFIGS])
def test_the_gpu_tiles_run_here_and_match_the_reference(monkeypatch, arch, dtype, d):
    """Each GPU's tile sizes (per kernel: 64 x 64, 32 x 64, 64 x 32, 32 x 32, 16 x 64,
    16 x 32; `_gpu_tiles`) run in the interpreter, so their masks and tile boundaries
    (odd N and M, a partial last tile) have executed before a GPU sees them. fp32 runs
    the GPU's own products (no upcast); bf16 keeps the interpreter's upcast (it cannot
    multiply bf16 tiles). Against the float64 reference: fp32 2e-5, bf16 5e-2."""
    def gpu_config(q, kernel="fwd"):
        block_d = max(16, triton.next_power_of_2(q.size(-1)))
        block_m, block_n, _, _ = triton_paired._gpu_tiles(q.dtype, block_d, arch, kernel)
        return dict(UPCAST=q.dtype != torch.float32,
                    PREC="ieee" if q.dtype == torch.float32 else "tf32",
                    BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n)

    monkeypatch.setattr(triton_paired, "_config", gpu_config)
    cand_pos = torch.tensor([[0, 36, 5, 5, 37, 12, 1, 30, 9, 22, 37],
                             [3, 1, 9, 2, 37, 0, 0, 17, 33, 8, 4]])
    six, seg, pad = paired_tensors(2, 4, 37, d, cand_pos, "both", dtype=dtype, kv_heads=2, seed=6)
    six, cand_pos, seg, pad = [t.to(DEVICE) for t in six], *(t.to(DEVICE) for t in (cand_pos, seg, pad))
    layout = layout_of(cand_pos, 37, causal=True, alibi_slopes=alibi_slopes(4).to(DEVICE),
                       segment_ids=seg, key_padding_mask=pad)
    g = torch.Generator().manual_seed(3)
    ups = tuple(torch.randn(2, 4, n, d, generator=g).to(DEVICE) for n in (37, 11))

    def run(fn):
        leaves = [t.detach().clone().requires_grad_() for t in six]
        out, out_c = fn(*leaves)
        ((out.float() * ups[0]).sum() + (out_c.float() * ups[1]).sum()).backward()
        return [out.float(), out_c.float()] + [t.grad.float() for t in leaves]

    got = run(lambda *a: triton_paired.paired_attention_triton(*a, layout))
    want = run(lambda *a: paired_attention_reference(*[t.double() for t in a], layout))
    tol = 2e-5 if dtype == torch.float32 else 5e-2
    for name, a, b in zip(["out", "out_c", "dq", "dk", "dv", "dq_c", "dk_c", "dv_c"], got, want):
        torch.testing.assert_close(a, b.float(), atol=tol, rtol=tol, msg=lambda m, n=name: f"{n}: {m}")
