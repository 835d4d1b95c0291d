"""`paired_attention`: one attention call for a data stream and its candidates.

The public function validates its inputs and dispatches to a backend. Backends share
this signature and these semantics (docs/methods.md section 6); `reference` is the exact
PyTorch implementation in `energy_lm.kernels.reference`; `triton` the fused kernel of
`energy_lm.kernels.triton_paired`; `flex` PyTorch FlexAttention. `auto` is `_auto_backend`.
"""

import importlib.util
import logging
from typing import Callable, Dict, Optional, Set, Tuple

import torch
from torch import Tensor

from energy_lm.kernels import self_check
from energy_lm.kernels.alibi import ALIBI_MODES
from energy_lm.kernels.reference import candidate_attention_reference, paired_attention_reference

logger = logging.getLogger("energy_lm.kernels")


def _triton_backend(*args, **kwargs) -> Tuple[Tensor, Tensor]:
    # imported on first use: Triton reads TRITON_INTERPRET (the CPU interpreter) when
    # the kernels are decorated, so importing it with the package would fix that choice
    from energy_lm.kernels.triton_paired import paired_attention_triton

    return paired_attention_triton(*args, **kwargs)


def _triton_candidates(*args, **kwargs) -> Tensor:
    from energy_lm.kernels.triton_paired import candidate_attention_triton

    return candidate_attention_triton(*args, **kwargs)


def _flex_backend(*args, **kwargs) -> Tuple[Tensor, Tensor]:
    from energy_lm.kernels.flex_paired import paired_attention_flex

    return paired_attention_flex(*args, **kwargs)


_BACKENDS: Dict[str, Callable[..., Tuple[Tensor, Tensor]]] = {
    "reference": paired_attention_reference,
    "triton": _triton_backend,
    "flex": _flex_backend,  # FlexAttention: forward only on the CPU (torch 2.13)
}
# backends that can serve the candidates alone (need_data_out=False): (q_c, k_c, v_c, k,
# v, cand_pos, **same keywords) -> out_c. Others run in full and drop the data output.
_CANDIDATE_BACKENDS: Dict[str, Callable[..., Tensor]] = {
    "reference": candidate_attention_reference,
    "triton": _triton_candidates,
}
# backends that keep a per-batch mask in `mask_cache` (the full call; the candidates-only
# call of those in _CANDIDATE_CACHING)
_CACHING_BACKENDS = {"flex"}
_CANDIDATE_CACHING = {"reference"}
_logged_choices: Set[Tuple[str, str]] = set()


_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _auto_backend(device_type: str, dtype: torch.dtype, dropout_p: float) -> Tuple[str, str]:
    """(backend, why) that "auto" stands for: the fused Triton kernel for CUDA tensors it
    supports, else the exact reference (CPU, float64, attention dropout, no triton)."""
    if device_type != "cuda":
        return "reference", f"{device_type} tensors"
    if dtype not in _TRITON_DTYPES:
        return "reference", f"{dtype} is not a Triton kernel dtype"
    if dropout_p > 0.0:
        return "reference", "attention dropout (the Triton kernel has none)"
    if importlib.util.find_spec("triton") is None:
        return "reference", "triton is not installed"
    return "triton", "CUDA tensors"


def _resolve_backend(backend: str, q: Tensor, dropout_p: float) -> str:
    if backend != "auto" and backend not in _BACKENDS:
        known = ", ".join(["auto", *_BACKENDS])
        raise ValueError(f"paired_attention: unknown backend {backend!r}; choose one of {known}")
    chosen, why = (_auto_backend(q.device.type, q.dtype, dropout_p) if backend == "auto"
                   else (backend, "asked for"))
    if backend == "auto" and chosen != "reference" and not self_check.backend_agrees(
            chosen, _BACKENDS[chosen], _CANDIDATE_BACKENDS.get(chosen), q.device, q.dtype,
            q.size(-1)):
        chosen, why = "reference", f"the {chosen} backend failed its self-check"
    if (backend, chosen) not in _logged_choices:
        _logged_choices.add((backend, chosen))
        logger.info("paired_attention: backend=%r runs %r (%s)", backend, chosen, why)
    return chosen


def _check_inputs(q, k, v, q_c, k_c, v_c, cand_pos, causal, alibi_slopes, alibi_mode,
                  segment_ids, key_padding_mask, dropout_p) -> None:
    """One ValueError line per bad input (shapes, dtypes, modes, candidate positions)."""
    def fail(msg: str) -> None:
        raise ValueError(f"paired_attention: {msg}")

    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        fail(f"q, k, v must share one (B, H, N, D) shape, got {tuple(q.shape)}, "
             f"{tuple(k.shape)}, {tuple(v.shape)}")
    b, h, n, d = q.shape
    if q_c.dim() != 4 or k_c.shape != q_c.shape or v_c.shape != q_c.shape:
        fail(f"q_c, k_c, v_c must share one (B, H, M, D) shape, got {tuple(q_c.shape)}, "
             f"{tuple(k_c.shape)}, {tuple(v_c.shape)}")
    if (q_c.size(0), q_c.size(1), q_c.size(3)) != (b, h, d):
        fail(f"candidates {tuple(q_c.shape)} must match the data stream {tuple(q.shape)} "
             f"in B, H and D")
    m = q_c.size(2)
    tensors = (k, v, q_c, k_c, v_c)
    if any(t.dtype != q.dtype or t.device != q.device for t in tensors):
        fail("q, k, v, q_c, k_c, v_c must share one dtype and device, got "
             + ", ".join(f"{t.dtype}@{t.device}" for t in (q, *tensors)))
    integer = not (cand_pos.dtype.is_floating_point or cand_pos.is_complex()
                   or cand_pos.dtype == torch.bool)
    if cand_pos.shape != (b, m) or not integer:
        fail(f"cand_pos must be a (B, M) = {(b, m)} integer tensor, got "
             f"{tuple(cand_pos.shape)} {cand_pos.dtype}")
    if alibi_mode not in ALIBI_MODES:
        fail(f"unknown alibi_mode {alibi_mode!r}; choose one of {', '.join(ALIBI_MODES)}")
    if alibi_slopes is not None and alibi_slopes.shape != (h,):
        fail(f"alibi_slopes must have shape (H,) = ({h},), got {tuple(alibi_slopes.shape)}")
    if segment_ids is not None and segment_ids.shape != (b, n):
        fail(f"segment_ids must have shape (B, N) = {(b, n)}, got {tuple(segment_ids.shape)}")
    if key_padding_mask is not None and key_padding_mask.shape != (b, n):
        fail(f"key_padding_mask must have shape (B, N) = {(b, n)}, "
             f"got {tuple(key_padding_mask.shape)}")
    if not 0.0 <= dropout_p < 1.0:
        fail(f"dropout_p must be in [0, 1), got {dropout_p}")
    # the range check reads values: free on the CPU, a host sync on an accelerator, where
    # training must not wait for it (there an out-of-range index fails in the kernel)
    if m > 0 and cand_pos.device.type == "cpu":
        lo, hi = int(cand_pos.min()), int(cand_pos.max())
        top = n + 1 if causal else n  # causal: p = N scores the target after the last token
        if lo < 0 or hi >= top:
            fail(f"cand_pos must lie in [0, {top}) ({'causal: p <= N' if causal else 'p < N'}),"
                 f" got values in [{lo}, {hi}]")


def paired_attention(
    q: Tensor, k: Tensor, v: Tensor,
    q_c: Tensor, k_c: Tensor, v_c: Tensor,
    cand_pos: Tensor,
    *,
    causal: bool,
    alibi_slopes: Optional[Tensor] = None,
    alibi_mode: str = "causal",
    segment_ids: Optional[Tensor] = None,
    key_padding_mask: Optional[Tensor] = None,
    backend: str = "auto",
    dropout_p: float = 0.0,
    need_data_out: bool = True,
    mask_cache: Optional[dict] = None,
) -> Tuple[Optional[Tensor], Tensor]:
    """Attention of a data stream and of candidates standing at data positions.

    q, k, v: (B, H, N, D) data stream; q_c, k_c, v_c: (B, H, M, D) candidates;
    cand_pos: (B, M) int, the data position p of each candidate, 0 <= p < N (causal:
    0 <= p <= N; p = N scores the target that follows the block's last token).
    Scores are q.k * D ** -0.5, plus `alibi_bias(alibi_slopes, i, j, alibi_mode)` when
    alibi_slopes (H,) is given.

    - data query i sees data keys j with j <= i (causal) or any j, in the same segment
      (segment_ids (B, N)), not padding (key_padding_mask (B, N), True = pad); never a
      candidate key;
    - candidate m at p sees data keys j with j < p (causal) or j != p, not padding, with
      the ALiBi bias of a data query at p, in the segment of p (bidirectional) or of p - 1
      (causal: the candidate stands in for the token data query p - 1 proposes, so a
      `</s>` closing a document is scored in that document); plus its own key
      (k_c, v_c at m) at distance 0 (bias 0); never another candidate's key.
    So a candidate that is a copy of data token p (at a real, non-pad position) gets
    exactly data query p's output. A query that sees no key returns 0.

    Returns (out, out_c): (B, H, N, D), (B, H, M, D); with need_data_out=False (a model's
    candidate pass, whose data stream ran already) out is None and backends that can
    skip the data queries do.
    mask_cache: an optional dict that lives for one batch (same cand_pos, segment_ids and
    key_padding_mask on every call, e.g. one per layer): backends that build a mask per
    batch (flex's BlockMask) keep it there and reuse it.
    backend: "auto" (the Triton kernel for CUDA tensors without attention dropout, once it
    has passed its self-check against the reference (`energy_lm.kernels.self_check`),
    else the reference; the choice is logged once) or one of `_BACKENDS` (unchecked).
    """
    chosen = _resolve_backend(backend, q, dropout_p)
    _check_inputs(q, k, v, q_c, k_c, v_c, cand_pos, causal, alibi_slopes, alibi_mode,
                  segment_ids, key_padding_mask, dropout_p)
    keywords = dict(causal=causal, alibi_slopes=alibi_slopes, alibi_mode=alibi_mode,
                    segment_ids=segment_ids, key_padding_mask=key_padding_mask,
                    dropout_p=dropout_p)
    if chosen in _CACHING_BACKENDS:
        keywords["mask_cache"] = mask_cache
    if not need_data_out:
        if chosen in _CANDIDATE_BACKENDS:
            extra = {"mask_cache": mask_cache} if chosen in _CANDIDATE_CACHING else {}
            return None, _CANDIDATE_BACKENDS[chosen](q_c, k_c, v_c, k, v, cand_pos, **keywords,
                                                     **extra)
        return None, _BACKENDS[chosen](q, k, v, q_c, k_c, v_c, cand_pos, **keywords)[1]
    return _BACKENDS[chosen](q, k, v, q_c, k_c, v_c, cand_pos, **keywords)
