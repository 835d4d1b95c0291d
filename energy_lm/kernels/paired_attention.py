"""`paired_attention`: one attention call for a data stream and its candidates.

The public function checks its tensors against their `PairedLayout` (who sees whom,
validated when it was built) and dispatches to a backend of the registry
(`energy_lm.kernels.backends`): `reference` is the exact PyTorch implementation in
`energy_lm.kernels.reference`, `triton` the fused kernel of `energy_lm.kernels.
triton_paired`, `flex` PyTorch FlexAttention; `auto` is `backends.auto_choice`, once the
chosen kernel has passed its self-check against the reference.
"""

import logging
from typing import Optional, Set, Tuple

from torch import Tensor

from energy_lm.kernels import backends, self_check
from energy_lm.kernels.layout import LayoutError, PairedLayout

logger = logging.getLogger("energy_lm.kernels")
_logged_choices: Set[Tuple[str, str]] = set()


def resolve_backend(backend: str, q: Tensor, dropout_p: float,
                    grouped: bool = False) -> backends.Backend:
    """The backend a call runs: the one asked for (unchecked but for grouped heads and its
    widest head), or what "auto" stands for on q's device and dtype (the choice is logged
    once)."""
    if backend != "auto":
        chosen, why = backends.get(backend).name, "asked for"
        if grouped and not backends.get(backend).grouped_heads:
            raise LayoutError(f"the {backend} backend has no grouped key/value heads "
                              f"(--kv-heads); use the reference (auto picks it)")
        limit = backends.get(backend).max_head_dim
        if limit is not None and q.size(-1) > limit:
            raise LayoutError(f"the {backend} backend: head dim {q.size(-1)} > {limit}, its "
                              f"tiles would not fit a GPU's shared memory; use the reference "
                              f"(auto picks it)")
    else:
        chosen, why = backends.auto_choice(q.device.type, q.dtype, dropout_p, grouped,
                                           q.size(-1))
        if chosen != "reference":
            entry = backends.get(chosen)
            if not self_check.backend_agrees(chosen, entry.full, entry.candidates, q.device,
                                             q.dtype, q.size(-1)):
                chosen, why = "reference", f"the {chosen} backend failed its self-check"
    if (backend, chosen) not in _logged_choices:
        _logged_choices.add((backend, chosen))
        logger.info("paired_attention: backend=%r runs %r (%s)", backend, chosen, why)
    return backends.get(chosen)


def _check_tensors(q, k, v, q_c, k_c, v_c, layout: PairedLayout, dropout_p: float) -> None:
    """One LayoutError line per bad tensor (shapes, dtypes, devices, dropout)."""
    def grouped(q_shape, kv_shape) -> bool:  # (B, Hk, ., D) with Hk dividing H
        return (kv_shape[0] == q_shape[0] and kv_shape[3] == q_shape[3] and kv_shape[1] > 0
                and q_shape[1] % kv_shape[1] == 0)

    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape or k.size(2) != q.size(2) or \
            not grouped(q.shape, k.shape):
        raise LayoutError(f"q, k, v must be (B, H, N, D), (B, Hk, N, D), (B, Hk, N, D) with "
                          f"Hk dividing H, got {tuple(q.shape)}, {tuple(k.shape)}, "
                          f"{tuple(v.shape)}")
    if q_c.dim() != 4 or k_c.dim() != 4 or v_c.shape != k_c.shape or \
            k_c.size(2) != q_c.size(2) or not grouped(q_c.shape, k_c.shape):
        raise LayoutError(f"q_c, k_c, v_c must be (B, H, M, D), (B, Hk, M, D), (B, Hk, M, D), "
                          f"got {tuple(q_c.shape)}, {tuple(k_c.shape)}, {tuple(v_c.shape)}")
    b, h, _, d = q.shape
    if (q_c.size(0), q_c.size(1), q_c.size(3), k_c.size(1)) != (b, h, d, k.size(1)):
        raise LayoutError(f"candidates {tuple(q_c.shape)}, keys {tuple(k_c.shape)} must match "
                          f"the data stream {tuple(q.shape)}, keys {tuple(k.shape)} in B, H, "
                          f"Hk and D")
    tensors = (k, v, q_c, k_c, v_c)
    if any(t.dtype != q.dtype or t.device != q.device for t in tensors):
        raise LayoutError("q, k, v, q_c, k_c, v_c must share one dtype and device, got "
                          + ", ".join(f"{t.dtype}@{t.device}" for t in (q, *tensors)))
    layout.check_tensors(q, q_c)
    if not 0.0 <= dropout_p < 1.0:
        raise LayoutError(f"dropout_p must be in [0, 1), got {dropout_p}")


def paired_attention(
    q: Tensor, k: Tensor, v: Tensor,
    q_c: Tensor, k_c: Tensor, v_c: Tensor,
    layout: PairedLayout,
    *,
    backend: str = "auto",
    dropout_p: float = 0.0,
    need_data_out: bool = True,
) -> Tuple[Optional[Tensor], Tensor]:
    """Attention of a data stream and of candidates standing at data positions.

    q, k, v: (B, H, N, D) data stream; q_c, k_c, v_c: (B, H, M, D) candidates (keys and
    values may have Hk heads, Hk dividing H: grouped-query attention, query head h reading
    key head h // (H / Hk), never repeated in memory); layout:
    the `PairedLayout` of the batch (cand_pos (B, M), causal, ALiBi, segments, padding).
    Scores are q.k * D ** -0.5, plus the layout's ALiBi bias when it has one.

    - data query i sees data keys j with j <= i (causal) or any j, in the same segment,
      not padding; never a candidate key;
    - candidate m at p sees data keys j with j < p (causal) or j != p, not padding, with
      the ALiBi bias of a data query at p, in the segment of p (bidirectional) or of p - 1
      (causal: the candidate stands in for the token data query p - 1 proposes, so a
      `</s>` closing a document is scored in that document); plus its own key
      (k_c, v_c at m) at distance 0 (bias 0); never another candidate's key.
    So a candidate that is a copy of data token p (at a real, non-pad position) gets
    exactly data query p's output. A query that sees no key returns 0.

    Returns (out, out_c): (B, H, N, D), (B, H, M, D); with need_data_out=False (a model's
    candidate pass, whose data stream ran already) out is None and backends that can
    skip the data queries do. Masks a backend builds are kept on the layout: handing the
    same layout to every layer builds them once.
    backend: "auto" (the Triton kernel for CUDA tensors without attention dropout, once it
    has passed its self-check against the reference (`energy_lm.kernels.self_check`),
    else the reference; the choice is logged once) or a name of `backends.names()`.
    """
    _check_tensors(q, k, v, q_c, k_c, v_c, layout, dropout_p)
    grouped = k.size(1) != q.size(1)
    # once per layout: every layer of a candidate stage runs the backend the first chose
    chosen = layout.derived(f"backend {backend} {q.device} {q.dtype} {q.size(-1)} "
                            f"{dropout_p > 0} {grouped}",
                            lambda: resolve_backend(backend, q, dropout_p, grouped))
    if not need_data_out:
        if chosen.candidates is not None:
            return None, chosen.candidates(q_c, k_c, v_c, k, v, layout, dropout_p)
        return None, chosen.full(q, k, v, q_c, k_c, v_c, layout, dropout_p)[1]
    return chosen.full(q, k, v, q_c, k_c, v_c, layout, dropout_p)
