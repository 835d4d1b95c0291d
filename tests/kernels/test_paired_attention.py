"""paired_attention (docs/methods.md section 6) against a deliberately naive float64 version:
forward and the gradients of all six inputs, on awkward shapes, every mask and ALiBi mode."""

import importlib
import logging

import pytest
import torch

from conftest import PAIRED_MODE_IDS, PAIRED_MODES, layout_of, paired_tensors
from energy_lm.kernels import paired_attention
from energy_lm.kernels.reference import paired_mask
from energy_lm.kernels.alibi import alibi_bias, alibi_slopes

HEADS = 3  # not a power of two: the ALiBi slopes interleave
MODES, MODE_IDS = PAIRED_MODES, PAIRED_MODE_IDS
pytestmark = pytest.mark.usefixtures("single_thread")


def positions(name: str) -> torch.Tensor:
    """cand_pos presets: (B, N, D) follow from the name; see SHAPES."""
    if name == "n1":  # N = 1, two candidates at the only position
        return torch.zeros(1, 2, dtype=torch.long)
    if name == "k2":  # K = 2 candidates per position, M = 2N
        return torch.arange(7).repeat_interleave(2).expand(3, 14).clone()
    if name == "m5":  # M = 5 != N at random positions, with the ends and a repeat
        return torch.tensor([[0, 12, 5, 5, 3], [7, 0, 1, 12, 2], [12, 11, 4, 9, 0]])
    return torch.zeros(1, 0, dtype=torch.long)  # "m0": no candidates


SHAPES = {"n1": (1, 1, 8), "k2": (3, 7, 6), "m5": (3, 13, 8), "m0": (1, 13, 6)}  # (B, N, D)
MASKS = ["none", "padding", "segments", "both"]


def make_case(shape: str, masks: str = "none", dtype=torch.float32, seed: int = 0,
              causal: bool = False, heads: int = HEADS, kv_heads: int = 0):
    """Six random (B, H, ., D) tensors (keys and values with kv_heads heads when given),
    cand_pos, and the optional masks. Causal "m5" puts its last candidates at p = N (the
    target after a block's last token)."""
    b, n, d = SHAPES[shape]
    cand_pos = positions(shape)
    if causal and shape == "m5":
        cand_pos[:, -1] = n
    six, seg, pad = paired_tensors(b, heads, n, d, cand_pos, masks, dtype, seed,
                                   kv_heads=kv_heads)
    return six, cand_pos, seg, pad


def naive_paired(q, k, v, q_c, k_c, v_c, cand_pos, causal, mode, seg, pad):
    """float64, one query at a time over a hand-listed set of keys (H vectorised); grouped
    key/value heads are repeated here (query head h reads key head h // group)."""
    q, k, v, q_c, k_c, v_c = (t.double() for t in (q, k, v, q_c, k_c, v_c))
    group = q.size(1) // k.size(1)
    k, v, k_c, v_c = (t.repeat_interleave(group, dim=1) for t in (k, v, k_c, v_c))
    b_size, h, n, d = q.shape
    slopes = alibi_slopes(h).double()

    def bias(i, j):  # (H,)
        if mode is None:
            return torch.zeros(h, dtype=torch.float64)
        dist = {"causal": i - j, "symmetric": abs(i - j),
                "shifted": i - j if j <= i else j - i - 0.5}[mode]
        return -slopes * dist

    def sees(b, i, j, candidate):
        if causal:
            ok = j < i or (j == i and not candidate)
        else:
            ok = j != i or not candidate
        if seg is not None:  # a causal candidate at i belongs to row i - 1's document
            home = max(i - 1, 0) if (causal and candidate) else i
            ok = ok and bool(seg[b, home] == seg[b, j])
        if pad is not None:
            ok = ok and not bool(pad[b, j])
        return ok

    def attend(qi, keys, values, biases):  # (H, D), (H, K, D), (H, K, D), (H, K)
        if keys.size(1) == 0:
            return torch.zeros(h, d, dtype=torch.float64)
        scores = torch.einsum("hd,hkd->hk", qi, keys) / d ** 0.5 + biases
        return torch.einsum("hk,hkd->hd", scores.softmax(-1), values)

    def data_keys(b, i, candidate):
        js = [j for j in range(n) if sees(b, i, j, candidate)]
        biases = torch.stack([bias(i, j) for j in js], 1) if js else torch.zeros(h, 0)
        return k[b][:, js], v[b][:, js], biases.double()

    out, out_c = [], []
    for b in range(b_size):
        out.append(torch.stack([attend(q[b, :, i], *data_keys(b, i, False)) for i in range(n)], 1))
        rows = []
        for m in range(q_c.size(2)):
            keys, values, biases = data_keys(b, int(cand_pos[b, m]), True)
            keys = torch.cat([keys, k_c[b, :, m:m + 1]], 1)  # + own key, bias 0
            values = torch.cat([values, v_c[b, :, m:m + 1]], 1)
            biases = torch.cat([biases, torch.zeros(h, 1, dtype=torch.float64)], 1)
            rows.append(attend(q_c[b, :, m], keys, values, biases))
        out_c.append(torch.stack(rows, 1) if rows else q_c.new_zeros(h, 0, d))
    return torch.stack(out), torch.stack(out_c)


def outputs_and_grads(fn, tensors, upstream):
    """fn(*tensors) -> (out, out_c); returns them and d<upstream, outputs>/d tensors."""
    leaves = [t.detach().requires_grad_() for t in tensors]
    out, out_c = fn(*leaves)
    loss = (out.double() * upstream[0]).sum() + (out_c.double() * upstream[1]).sum()
    grads = torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
    return (out, out_c), grads


def compare_with_naive(tensors, cand_pos, causal, mode, seg, pad, atol, rtol,
                       candidates_only: bool = False):
    slopes = alibi_slopes(tensors[0].size(1)) if mode is not None else None
    g = torch.Generator().manual_seed(1)
    upstream = (torch.randn(tensors[0].shape, generator=g, dtype=torch.float64),
                torch.randn(tensors[3].shape, generator=g, dtype=torch.float64))
    if candidates_only:  # the data output is not asked for: compare it as zeros
        upstream = (torch.zeros_like(upstream[0]), upstream[1])

    def ours(*six):
        layout = layout_of(cand_pos, six[0].size(2), causal=causal, alibi_slopes=slopes,
                           alibi_mode=mode or "causal", segment_ids=seg, key_padding_mask=pad)
        out, out_c = paired_attention(*six, layout, backend="reference",
                                      need_data_out=not candidates_only)
        return (torch.zeros_like(six[0]) if out is None else out), out_c

    def naive(*six):
        out, out_c = naive_paired(*six, cand_pos, causal, mode, seg, pad)
        return (out * 0 if candidates_only else out), out_c

    got, got_grads = outputs_and_grads(ours, tensors, upstream)
    want, want_grads = outputs_and_grads(naive, [t.double() for t in tensors], upstream)
    names = ["out", "out_c", "dq", "dk", "dv", "dq_c", "dk_c", "dv_c"]
    for name, x, y in zip(names, [*got, *got_grads], [*want, *want_grads]):
        assert x.dtype == tensors[0].dtype and x.shape == y.shape, name
        torch.testing.assert_close(x.double(), y, atol=atol, rtol=rtol,
                                   msg=lambda s, name=name: f"{name}: {s}")


@pytest.mark.parametrize("masks", MASKS)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("causal,mode", MODES, ids=MODE_IDS)
def test_fp32_matches_naive_forward_and_grads(causal, mode, shape, masks):
    tensors, cand_pos, seg, pad = make_case(shape, masks, causal=causal)
    compare_with_naive(tensors, cand_pos, causal, mode, seg, pad, atol=1e-5, rtol=1e-5)


# grouped-query attention: 6 query heads reading 2 (or 1) key/value heads, never repeated
# in the reference; the naive version repeats them. Same tolerances as above.
@pytest.mark.parametrize("kv_heads", [2, 1])
@pytest.mark.parametrize("candidates_only", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("causal,mode", MODES, ids=MODE_IDS)
def test_grouped_heads_match_naive_forward_and_grads(causal, mode, dtype, tol, candidates_only,
                                                      kv_heads):
    tensors, cand_pos, seg, pad = make_case("m5", "both", dtype=dtype, causal=causal, heads=6,
                                            kv_heads=kv_heads)
    compare_with_naive(tensors, cand_pos, causal, mode, seg, pad, atol=tol, rtol=tol,
                       candidates_only=candidates_only)


def test_a_backend_without_grouped_heads_refuses_them_in_one_line(monkeypatch):
    """Every shipped backend takes grouped heads; one that does not declare them (a fake
    "plain" one, which auto may pick for CPU float32) is refused in one line when asked
    for by name, and auto passes over it to the reference, for grouped heads only."""
    from energy_lm.kernels import backends
    from energy_lm.kernels.reference import paired_attention_reference

    assert all(backends.get(name).grouped_heads for name in ("reference", "triton", "flex"))
    monkeypatch.setitem(backends.BACKENDS, "plain", backends.Backend(
        "plain", paired_attention_reference, auto_device_types=("cpu",),
        auto_dtypes=(torch.float32,)))
    tensors, cand_pos, seg, pad = make_case("m5", "none", heads=6, kv_heads=2)
    layout = layout_of(cand_pos, tensors[0].size(2), causal=False)
    with pytest.raises(ValueError, match="the plain backend has no grouped key/value heads") \
            as info:
        paired_attention(*tensors, layout, backend="plain")
    assert "\n" not in str(info.value)
    assert backends.auto_choice("cpu", torch.float32, 0.0, grouped=False)[0] == "plain"
    assert backends.auto_choice("cpu", torch.float32, 0.0, grouped=True) == (
        "reference", "grouped key/value heads (the Plain kernel has none)")
    equal = make_case("m5", "none", heads=6)[0]  # the same call with equal heads runs
    out, out_c = paired_attention(*equal, layout_of(cand_pos, 13, causal=False), backend="plain")
    assert out.shape == equal[0].shape and out_c.shape == equal[3].shape


# bf16 inputs: the reference keeps scores and softmax in fp32 only on the ALiBi path
# (attention_math); the stated tolerance covers bf16 rounding of q, k, v, probabilities
# and outputs, which is what plain bf16 PyTorch attention achieves.
@pytest.mark.parametrize("causal,mode", MODES, ids=MODE_IDS)
def test_bf16_matches_naive_within_loose_tolerance(causal, mode):
    tensors, cand_pos, seg, pad = make_case("m5", "both", dtype=torch.bfloat16, causal=causal)
    compare_with_naive(tensors, cand_pos, causal, mode, seg, pad, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("causal,mode", [(True, "causal"), (False, "shifted"), (False, None)])
def test_gradcheck_float64(causal, mode):
    g = torch.Generator().manual_seed(2)
    b, n, m, d = 2, 5, 4, 3
    six = [torch.randn(b, 2, length, d, generator=g, dtype=torch.float64, requires_grad=True)
           for length in (n, n, n, m, m, m)]
    cand_pos = torch.tensor([[0, 4, 2, 2], [3, 1, 1, 5 if causal else 4]])
    pad = torch.tensor([[False] * 4 + [True], [False] * 5])
    seg = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]])
    slopes = alibi_slopes(2) if mode else None

    def fn(*x):
        return paired_attention(*x,
                                layout_of(cand_pos, x[0].size(2), causal=causal,
                                          alibi_slopes=slopes, alibi_mode=mode or "causal",
                                          segment_ids=seg, key_padding_mask=pad))

    assert torch.autograd.gradcheck(fn, six)


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("causal,mode", MODES, ids=MODE_IDS)
def test_candidate_copy_of_data_gets_the_data_output(causal, mode, dtype, atol):
    """A candidate equal to data token p (q, k, v at p) is data query p, exactly, except
    (causal) at a document's first position: there the candidate belongs to the document
    of p - 1 (it stands in for the token row p - 1 proposes), the data query to its own."""
    (q, k, v, *_), _, seg, pad = make_case("m5", "both", dtype=dtype, seed=3)
    b, h, n, d = q.shape
    g = torch.Generator().manual_seed(4)
    # candidates stand at real (non-pad) positions, each up to twice, in random order
    usable = ~pad
    if causal:
        usable[:, 1:] &= seg[:, 1:] == seg[:, :-1]
    real = [torch.nonzero(usable[i])[:, 0] for i in range(b)]
    cand_pos = torch.stack([r.repeat(2)[torch.randperm(2 * len(r), generator=g)][:8]
                            for r in real])  # (B, 8)
    index = cand_pos[:, None, :, None].expand(b, h, cand_pos.size(1), d)  # (B, H, M, D)
    q_c, k_c, v_c = (x.gather(2, index).clone() for x in (q, k, v))
    out, out_c = paired_attention(q, k, v, q_c, k_c, v_c,
                                  layout_of(cand_pos, q.size(2), causal=causal,
                                            alibi_slopes=alibi_slopes(h) if mode else None,
                                            alibi_mode=mode or "causal", segment_ids=seg,
                                            key_padding_mask=pad))
    torch.testing.assert_close(out_c, out.gather(2, index), atol=atol, rtol=0)


def test_candidate_at_position_zero_in_causal_mode_returns_its_own_value():
    tensors, _, seg, pad = make_case("k2", "both")
    q, k, v, q_c, k_c, v_c = tensors
    cand_pos = torch.zeros(3, q_c.size(2), dtype=torch.long)
    for slopes in (None, alibi_slopes(HEADS)):
        _, out_c = paired_attention(q, k, v, q_c, k_c, v_c,
                                    layout_of(cand_pos, q.size(2), causal=True,
                                              alibi_slopes=slopes, segment_ids=seg,
                                              key_padding_mask=pad))
        assert torch.equal(out_c, v_c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal,mode", MODES, ids=MODE_IDS)
def test_query_with_no_visible_key_returns_zero_without_nan(causal, mode, dtype):
    tensors, cand_pos, _, _ = make_case("k2", dtype=dtype)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[0, :2] = True  # left padding: causal data rows 0 and 1 see only padding
    pad[1] = True  # a fully padded row: no data query sees anything
    slopes = alibi_slopes(HEADS) if mode else None
    leaves = [t.detach().requires_grad_() for t in tensors]
    out, out_c = paired_attention(*leaves,
                                  layout_of(cand_pos, leaves[0].size(2), causal=causal,
                                            alibi_slopes=slopes, alibi_mode=mode or "causal",
                                            key_padding_mask=pad))
    grads = torch.autograd.grad((out.float().sum() + out_c.float().sum()), leaves)
    assert all(torch.isfinite(x).all() for x in (out, out_c, *grads))
    assert (out[1] == 0).all()
    assert (out_c[1] == tensors[5][1]).all()  # a candidate still sees its own key
    if causal:
        assert (out[0, :, :2] == 0).all()
    for grad in grads[:3]:  # padded keys and dead queries get no gradient
        assert (grad[1] == 0).all()


def test_paired_mask_by_hand():
    """N = 3 data tokens, candidates at positions 2 and 0 (rows/columns 3 and 4)."""
    cand_pos = torch.tensor([[2, 0]])
    causal, live = paired_mask(layout_of(cand_pos, 3, causal=True))
    expected_causal = torch.tensor([
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 0, 1, 0],  # candidate at 2: keys 0, 1 and its own
        [0, 0, 0, 0, 1],  # candidate at 0: its own key only
    ], dtype=torch.bool)
    assert causal.shape == (1, 1, 5, 5) and causal.dtype == torch.bool
    assert torch.equal(causal[0, 0], expected_causal) and live.all()

    bidir, _ = paired_mask(layout_of(cand_pos, 3, causal=False))
    expected_bidir = torch.tensor([
        [1, 1, 1, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 0, 1, 0],
        [0, 1, 1, 0, 1],
    ], dtype=torch.bool)
    assert torch.equal(bidir[0, 0], expected_bidir)


@pytest.mark.parametrize("causal,mode", MODES[1:2] + MODES[3:], ids=MODE_IDS[1:2] + MODE_IDS[3:])
def test_paired_mask_alibi_bias_and_dead_rows(causal, mode):
    """With ALiBi: fp32 (B, H, L, L); candidate rows carry the bias of their position,
    0 on their own key; rows with no visible key are open and reported dead."""
    _, cand_pos, seg, _ = make_case("m5", "segments")
    b, n, m = 3, 13, 5
    pad = torch.zeros(b, n, dtype=torch.bool)
    pad[2] = True  # batch row 2: every data query is dead
    slopes = alibi_slopes(HEADS)
    plain, live = paired_mask(layout_of(cand_pos, n, causal=causal, segment_ids=seg,
                                        key_padding_mask=pad))
    mask, live_too = paired_mask(layout_of(cand_pos, n, causal=causal, alibi_slopes=slopes,
                                           alibi_mode=mode, segment_ids=seg, key_padding_mask=pad))
    assert mask.shape == (b, HEADS, n + m, n + m) and mask.dtype == torch.float32
    assert torch.equal(live, live_too)
    assert torch.equal(live[2], torch.arange(n + m) >= n)
    assert torch.isfinite(mask[2, :, :n]).all()  # dead rows: open to every key
    assert torch.equal(torch.isfinite(mask), plain.expand_as(mask))
    q_pos = torch.cat([torch.arange(n).expand(b, n), cand_pos], 1)  # (B, L)
    for i in range(b):
        want = alibi_bias(slopes, q_pos[i], torch.arange(n), mode)  # (H, L, N)
        seen = plain[i, 0, :, :n] & live[i][:, None]  # (L, N) live rows on data keys
        assert torch.equal(mask[i, :, :, :n][:, seen], want[:, seen])
    own = mask[:, :, torch.arange(n, n + m), torch.arange(n, n + m)]  # (B, H, M)
    assert torch.equal(own, torch.zeros_like(own))


def test_auto_equals_reference_and_logs_its_choice_once(caplog, monkeypatch):
    # the package exports the function under its module's name: fetch the module itself
    module = importlib.import_module("energy_lm.kernels.paired_attention")
    monkeypatch.setattr(module, "_logged_choices", set())
    tensors, cand_pos, seg, pad = make_case("m5", "both")
    with caplog.at_level(logging.INFO, logger="energy_lm.kernels"):
        auto = paired_attention(*tensors, layout_of(cand_pos, tensors[0].size(2), causal=True),
                                backend="auto")
        paired_attention(*tensors, layout_of(cand_pos, tensors[0].size(2), causal=True),
                         backend="auto")
    records = [r.getMessage() for r in caplog.records if r.name == "energy_lm.kernels"]
    assert records == ["paired_attention: backend='auto' runs 'reference' (cpu tensors)"]
    ref = paired_attention(*tensors, layout_of(cand_pos, tensors[0].size(2), causal=True),
                           backend="reference")
    assert all(torch.equal(x, y) for x, y in zip(auto, ref))


@pytest.mark.parametrize("device,dtype,dropout,want", [
    ("cuda", torch.bfloat16, 0.0, "triton"),
    ("cuda", torch.float32, 0.0, "triton"),
    ("cuda", torch.float64, 0.0, "reference"),
    ("cuda", torch.float16, 0.1, "reference"),
    ("cpu", torch.float32, 0.0, "reference"),
])
def test_auto_picks_triton_for_cuda_tensors_it_supports(device, dtype, dropout, want, monkeypatch):
    from energy_lm.kernels import backends

    monkeypatch.setattr(backends.importlib.util, "find_spec",
                        lambda name: object() if name == "triton" else None)
    assert backends.auto_choice(device, dtype, dropout)[0] == want
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: None)
    assert backends.auto_choice(device, dtype, dropout)[0] == "reference"


def _bad_inputs():
    tensors, cand_pos, _, _ = make_case("m5")
    q, k, v, q_c, k_c, v_c = tensors
    ok = dict(args=[q, k, v, q_c, k_c, v_c], cand_pos=cand_pos, layout=dict(causal=True))

    def with_arg(i, value):
        args = list(ok["args"])
        args[i] = value
        return dict(ok, args=args)

    def with_layout(**changes):
        return dict(ok, layout=dict(ok["layout"], **changes))

    return [
        ("data shapes", with_arg(1, k[:, :, :-1]), r"q, k, v must be"),
        ("data not 4-D", with_arg(0, q[0]), r"q, k, v must be"),
        ("key heads not dividing", dict(ok, args=[q, k[:, :2], v[:, :2], q_c, k_c, v_c]),
         r"Hk dividing H"),
        ("candidate shapes", with_arg(5, v_c[..., :-1]), r"q_c, k_c, v_c must be"),
        ("candidate head dim", dict(ok, args=[q, k, v, q_c[..., :-1], k_c[..., :-1],
                                              v_c[..., :-1]]), r"in B, H, Hk and D"),
        ("candidate batch", dict(ok, args=[q, k, v, q_c[:1], k_c[:1], v_c[:1]]),
         r"in B, H, Hk and D"),
        ("candidate key heads", dict(ok, args=[q, k, v, q_c, k_c[:, :1], v_c[:, :1]]),
         r"in B, H, Hk and D"),
        ("dtype", with_arg(2, v.double()), r"one dtype and device"),
        ("cand_pos shape", dict(ok, cand_pos=cand_pos[:, :-1]), r"of the layout \(cand_pos\)"),
        ("cand_pos 1-D", dict(ok, cand_pos=cand_pos[0]), r"cand_pos must be a \(B, M\)"),
        ("cand_pos float", dict(ok, cand_pos=cand_pos.float()), r"integer tensor"),
        ("cand_pos negative", dict(ok, cand_pos=cand_pos - 1), r"\[0, 14\) \(causal: p <= N\)"),
        ("cand_pos too large", dict(ok, cand_pos=cand_pos + 2), r"\[0, 14\) \(causal: p <= N\)"),
        ("alibi mode", with_layout(alibi_slopes=alibi_slopes(HEADS), alibi_mode="sinusoidal"),
         r"unknown alibi_mode 'sinusoidal'"),
        ("alibi slopes", with_layout(alibi_slopes=alibi_slopes(HEADS + 1)), r"alibi_slopes"),
        ("segment ids", with_layout(segment_ids=torch.zeros(3, 12, dtype=torch.long)),
         r"segment_ids"),
        ("padding", with_layout(key_padding_mask=torch.zeros(3, 14, dtype=torch.bool)),
         r"key_padding_mask"),
        ("dropout", dict(ok, dropout_p=1.0), r"dropout_p"),
        ("backend", dict(ok, backend="cuda"),
         r"unknown backend 'cuda'; choose one of auto, reference, triton, flex"),
    ]


@pytest.mark.parametrize("name,call,match", _bad_inputs(), ids=[c[0] for c in _bad_inputs()])
def test_bad_input_raises_one_line_value_error(name, call, match):
    call = dict(call)
    args, cand_pos, layout = call.pop("args"), call.pop("cand_pos"), call.pop("layout")
    with pytest.raises(ValueError, match=match) as info:
        paired_attention(*args, layout_of(cand_pos, 13, **layout), **call)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("masks", ["none", "both"])
@pytest.mark.parametrize("shape", ["n1", "k2", "m5"])
@pytest.mark.parametrize("causal,mode", MODES, ids=MODE_IDS)
def test_candidates_only_path_equals_the_full_call(causal, mode, shape, masks):
    """need_data_out=False (the models' candidate pass) gives the same out_c and the same
    gradients for q_c, k_c, v_c, k, v, without computing the data queries."""
    tensors, cand_pos, seg, pad = make_case(shape, masks, dtype=torch.float64)
    slopes = alibi_slopes(HEADS) if mode is not None else None
    kwargs = dict(causal=causal, alibi_slopes=slopes, alibi_mode=mode or "causal",
                  segment_ids=seg, key_padding_mask=pad)
    upstream = torch.randn(tensors[3].shape, dtype=torch.float64)

    def run(need_data_out):
        leaves = [t.detach().requires_grad_() for t in tensors]
        out, out_c = paired_attention(*leaves, layout_of(cand_pos, leaves[0].size(2), **kwargs),
                                      backend="reference", need_data_out=need_data_out)
        assert (out is None) == (not need_data_out)
        grads = torch.autograd.grad((out_c * upstream).sum(), leaves, allow_unused=True,
                                    materialize_grads=True)
        return out_c, grads

    full, full_grads = run(True)
    alone, alone_grads = run(False)
    torch.testing.assert_close(alone, full, rtol=1e-12, atol=1e-12)
    for name, a, b in zip(["dq", "dk", "dv", "dq_c", "dk_c", "dv_c"], alone_grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("causal", [True, False])
def test_candidate_positions_out_of_range_fail_in_one_line(causal):
    """Causal candidates may stand at p = N (past the block); bidirectional ones may not."""
    tensors, _, _, _ = make_case("k2")
    n = tensors[0].size(2)
    too_far = torch.full((3, tensors[3].size(2)), n + (1 if causal else 0))
    with pytest.raises(ValueError, match=r"cand_pos must lie in \[0, " + str(n + causal)):
        paired_attention(*tensors, layout_of(too_far, tensors[0].size(2), causal=causal))


def test_a_causal_candidate_after_a_document_start_sees_the_previous_document():
    """Row 0 packs documents [0, 3) and [3, 6): a candidate at p = 3 stands in for the
    token proposed by row 2 (the `</s>` closing document 0) and sees keys 0..2 of it."""
    tensors, _, _, _ = make_case("k2")
    q, k, v, q_c, k_c, v_c = (t[:1, :, :6] for t in tensors)
    seg = torch.tensor([[0, 0, 0, 1, 1, 1]])
    cand_pos = torch.tensor([[3, 6]])
    _, out_c = paired_attention(q, k, v, q_c[:, :, :2], k_c[:, :, :2], v_c[:, :, :2],
                                layout_of(cand_pos, q.size(2), causal=True, segment_ids=seg))
    _, alone = paired_attention(q[:, :, :3], k[:, :, :3], v[:, :, :3], q_c[:, :, :1],
                                k_c[:, :, :1], v_c[:, :, :1],
                                layout_of(torch.tensor([[3]]), q[:, :, :3].size(2), causal=True))
    torch.testing.assert_close(out_c[:, :, :1], alone)
    _, second = paired_attention(q[:, :, 3:], k[:, :, 3:], v[:, :, 3:], q_c[:, :, 1:2],
                                 k_c[:, :, 1:2], v_c[:, :, 1:2],
                                 layout_of(torch.tensor([[3]]), q[:, :, 3:].size(2), causal=True))
    torch.testing.assert_close(out_c[:, :, 1:], second)  # p = N: inside the last document
