"""`auto` checks a fused backend against the reference before using it
(energy_lm.kernels.self_check): a deliberately broken kernel is caught, logged once with
its measured error, and the run continues on the reference; a correct one is used; the
environment variable skips the check."""

import importlib
import logging

import pytest
import torch

from conftest import layout_of, paired_tensors
from energy_lm.kernels import backends, self_check
from energy_lm.kernels.alibi import alibi_slopes
from energy_lm.kernels.reference import candidate_attention_reference, paired_attention_reference

# the module (the package re-exports the function under the same name)
pa = importlib.import_module("energy_lm.kernels.paired_attention")
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def fake_fused(monkeypatch):
    """A "fused" backend on the CPU that `auto` picks: the reference with an optional
    error in the candidates' output; counts its calls."""
    monkeypatch.setattr(self_check, "_verdicts", {})
    monkeypatch.setattr(pa, "_logged_choices", set())
    monkeypatch.setattr(backends, "auto_choice",
                        lambda *a: ("triton", "test: a fake fused kernel"))
    state = {"error": 0.0, "calls": 0}

    def full(*args):
        state["calls"] += 1
        out, out_c = paired_attention_reference(*args)
        return out, out_c * (1 + state["error"])

    def candidates(*args):
        state["calls"] += 1
        return candidate_attention_reference(*args) * (1 + state["error"])

    monkeypatch.setitem(backends.BACKENDS, "triton", backends.Backend("triton", full, candidates))
    return state


def problem(causal=True):
    last = 9 if causal else 8  # causal candidates may stand at p = N
    cand_pos = torch.tensor([[0, 3, last, last], [5, 1, 2, 8]])
    six, seg, pad = paired_tensors(2, 3, 9, 16, cand_pos, "both", seed=4)
    return six, cand_pos, dict(causal=causal, alibi_slopes=alibi_slopes(3), alibi_mode="causal",
                               segment_ids=seg, key_padding_mask=pad)


def layout(cand_pos, **kw):
    return layout_of(cand_pos, 9, **kw)


def test_a_broken_kernel_is_caught_and_the_reference_runs(fake_fused, caplog):
    fake_fused["error"] = 1e-3  # a 0.1% error in every candidate output
    six, cand_pos, kw = problem()
    with caplog.at_level(logging.INFO, logger="energy_lm.kernels"):
        out, out_c = pa.paired_attention(*six, layout(cand_pos, **kw), backend="auto")
        pa.paired_attention(*six, layout(cand_pos, **kw), backend="auto")
    want_out, want_c = paired_attention_reference(*six, layout(cand_pos, **kw))
    torch.testing.assert_close(out_c, want_c, rtol=0, atol=0)  # the reference's result
    torch.testing.assert_close(out, want_out, rtol=0, atol=0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # measured once per process and class
    assert "disagrees with the exact reference" in warnings[0]
    assert "out_c: max error" in warnings[0] and "ENERGY_LM_SKIP_KERNEL_CHECK" in warnings[0]
    calls_during_check = fake_fused["calls"]
    pa.paired_attention(*six, layout(cand_pos, **kw), backend="auto")
    assert fake_fused["calls"] == calls_during_check  # never used after failing


def test_a_candidates_only_call_of_a_model_falls_back_too(fake_fused):
    fake_fused["error"] = 1e-3
    six, cand_pos, kw = problem(causal=False)
    kw["alibi_mode"] = "symmetric"
    _, out_c = pa.paired_attention(*six, layout(cand_pos, **kw), backend="auto",
                                   need_data_out=False)
    q, k, v, q_c, k_c, v_c = six
    want = candidate_attention_reference(q_c, k_c, v_c, k, v, layout(cand_pos, **kw))
    torch.testing.assert_close(out_c, want, rtol=0, atol=0)


def test_a_correct_kernel_passes_and_is_used(fake_fused, caplog):
    six, cand_pos, kw = problem()
    with caplog.at_level(logging.INFO, logger="energy_lm.kernels"):
        pa.paired_attention(*six, layout(cand_pos, **kw), backend="auto")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("agrees with the reference" in r.getMessage() for r in caplog.records)
    before = fake_fused["calls"]
    pa.paired_attention(*six, layout(cand_pos, **kw), backend="auto")
    assert fake_fused["calls"] == before + 1


def test_another_dtype_or_head_dim_class_is_checked_again(fake_fused):
    six, cand_pos, kw = problem()
    pa.paired_attention(*six, layout(cand_pos, **kw), backend="auto")
    assert len(self_check._verdicts) == 1
    wide_kw = dict(kw, alibi_slopes=kw["alibi_slopes"].double())
    pa.paired_attention(*[t.double() for t in six], layout(cand_pos, **wide_kw), backend="auto")
    wide = [torch.cat([t, t], dim=-1) for t in six]  # D = 32: another class
    pa.paired_attention(*wide, layout(cand_pos, **kw), backend="auto")
    assert len(self_check._verdicts) == 3
    assert self_check.head_dim_class(48) == 64 and self_check.head_dim_class(64) == 64


def test_the_environment_variable_skips_the_check(fake_fused, monkeypatch):
    monkeypatch.setenv(self_check.SKIP_ENV, "1")
    fake_fused["error"] = 1e-3
    six, cand_pos, kw = problem()
    _, out_c = pa.paired_attention(*six, layout(cand_pos, **kw), backend="auto")
    _, want_c = paired_attention_reference(*six, layout(cand_pos, **kw))
    torch.testing.assert_close(out_c, want_c * (1 + 1e-3))  # the (broken) kernel ran


def test_an_explicit_backend_is_never_replaced(fake_fused):
    fake_fused["error"] = 1e-3
    six, cand_pos, kw = problem()
    _, out_c = pa.paired_attention(*six, layout(cand_pos, **kw), backend="triton")
    assert not self_check._verdicts and fake_fused["calls"] == 1


@pytest.mark.parametrize("declares", [True, False], ids=["declares-grouped", "equal-only"])
def test_a_kernel_wrong_only_for_grouped_heads_is_caught_when_it_declares_them(
        fake_fused, monkeypatch, caplog, declares):
    """A backend that declares grouped heads is checked with them too (4 query heads on 2
    key/value heads), on its first call whatever its heads: a kernel right for equal heads
    and wrong for grouped ones is caught there, and the reference runs. Not declaring
    them, the same kernel is checked (and used) with equal heads only."""
    def full(q, k, v, q_c, k_c, v_c, *rest):
        fake_fused["calls"] += 1
        out, out_c = paired_attention_reference(q, k, v, q_c, k_c, v_c, *rest)
        return out, out_c * (1 + 1e-3 * (k.size(1) != q.size(1)))

    monkeypatch.setitem(backends.BACKENDS, "triton",
                        backends.Backend("triton", full, grouped_heads=declares))
    six, cand_pos, kw = problem()  # equal heads
    with caplog.at_level(logging.INFO, logger="energy_lm.kernels"):
        out, out_c = pa.paired_attention(*six, layout(cand_pos, **kw), backend="auto")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    calls = fake_fused["calls"]
    pa.paired_attention(*six, layout(cand_pos, **kw), backend="auto")
    if declares:
        assert len(warnings) == 1, warnings
        assert "(4 query heads on 2 key/value heads), out_c: max error" in warnings[0]
        assert fake_fused["calls"] == calls  # the reference runs from then on
    else:
        assert not warnings
        assert fake_fused["calls"] == calls + 1  # the kernel runs

