"""Who sees whom in one paired-attention problem, as one validated, immutable value.

A `PairedLayout` holds everything about a batch (or a candidate stage) that is not a
query, key or value: the data length N, the data position of every candidate, causal or
bidirectional, ALiBi, packed documents and key padding. It is checked once when built
(`PairedLayout.build`, one ValueError line per bad field); a model builds it once per
candidate stage and hands the same object to every layer, and what a backend derives
from it (the reference's masks, flex's BlockMask) is kept on it (`derived`), so the
masks are built by the first layer and reused by the others, with no key to get wrong:
a new batch is a new layout. The rules themselves are written once in
`energy_lm.kernels.visibility`.

This follows FlexAttention's split of a mask (`mask_mod`, a `BlockMask` built once per
batch) from a score modification (`score_mod`): `Alibi` is the score modification.
"""

from dataclasses import dataclass, field
from typing import Callable, Optional, TypeVar

import torch
from torch import Tensor

from energy_lm.kernels.alibi import ALIBI_MODES, alibi_bias
from energy_lm.kernels.visibility import alibi_distance

T = TypeVar("T")


class LayoutError(ValueError):
    """A paired-attention input that does not fit its layout (one line)."""

    def __init__(self, message: str):
        super().__init__(f"paired_attention: {message}")


@dataclass(frozen=True, eq=False)
class Alibi:
    """ALiBi as one value: per-head slopes (H,) and the distance rule of `mode`."""
    slopes: Tensor
    mode: str

    def __post_init__(self):
        if self.mode not in ALIBI_MODES:
            raise LayoutError(f"unknown alibi_mode {self.mode!r}; choose one of "
                              f"{', '.join(ALIBI_MODES)}")
        if self.slopes.dim() != 1:
            raise LayoutError(f"alibi slopes must have shape (H,), got "
                              f"{tuple(self.slopes.shape)}")

    @property
    def num_heads(self) -> int:
        return self.slopes.numel()

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """(H, Tq, Tk) fp32 additive bias of queries at q_pos (Tq,) on keys at k_pos (Tk,)."""
        return alibi_bias(self.slopes, q_pos, k_pos, self.mode)

    def score_mod(self, row_pos: Tensor, num_data: int, device: torch.device) -> Callable:
        """FlexAttention's score_mod over rows `[data; candidates]` standing at row_pos
        (B, L): the bias of the row's position on data keys, 0 on a candidate's own key."""
        slopes = self.slopes.to(device=device, dtype=torch.float32)
        mode = self.mode

        def score_mod(score, bi, hi, qi, ki):
            dist = alibi_distance(row_pos[bi, qi], ki, mode)
            return score - torch.where(ki >= num_data, torch.zeros_like(dist), slopes[hi] * dist)

        return score_mod


def _is_integer(t: Tensor) -> bool:
    return not (t.dtype.is_floating_point or t.is_complex() or t.dtype == torch.bool)


@dataclass(frozen=True, eq=False)
class PairedLayout:
    """One paired-attention problem's visibility (see the module docstring).

    cand_pos (B, M) int: the data position of each candidate, 0 <= p < N (causal:
    p <= N; p = N scores the target that follows the block's last token).
    segment_ids (B, N) int: packed documents; key_padding_mask (B, N) bool, True = pad.
    Build it with `PairedLayout.build` (validated); fields are read-only.
    """
    cand_pos: Tensor
    num_data: int
    causal: bool
    alibi: Optional[Alibi] = None
    segment_ids: Optional[Tensor] = None
    key_padding_mask: Optional[Tensor] = None
    # what backends derive from the layout (masks), built on first use: see `derived`
    _derived: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, cand_pos: Tensor, num_data: int, *, causal: bool,
              alibi: Optional[Alibi] = None, segment_ids: Optional[Tensor] = None,
              key_padding_mask: Optional[Tensor] = None) -> "PairedLayout":
        """The layout, checked: one LayoutError line per bad field."""
        if cand_pos.dim() != 2 or not _is_integer(cand_pos):
            raise LayoutError(f"cand_pos must be a (B, M) integer tensor, got "
                              f"{tuple(cand_pos.shape)} {cand_pos.dtype}")
        b, n = cand_pos.size(0), int(num_data)
        for name, t in (("segment_ids", segment_ids), ("key_padding_mask", key_padding_mask)):
            if t is not None and t.shape != (b, n):
                raise LayoutError(f"{name} must have shape (B, N) = {(b, n)}, got "
                                  f"{tuple(t.shape)}")
        # the range check reads values: free on the CPU (one line), a host sync on an
        # accelerator, where training must not wait for it: there a device-side assert
        # that fails the next synchronising call (a kernel would otherwise read out of
        # bounds silently); once per layout, not once per layer
        top = n + 1 if causal else n  # causal: p = N scores the target after the last token
        if cand_pos.numel() > 0 and cand_pos.device.type == "cpu":
            lo, hi = int(cand_pos.min()), int(cand_pos.max())
            if lo < 0 or hi >= top:
                raise LayoutError(f"cand_pos must lie in [0, {top}) "
                                  f"({'causal: p <= N' if causal else 'p < N'}), got values "
                                  f"in [{lo}, {hi}]")
        elif cand_pos.numel() > 0 and cand_pos.device.type != "meta":
            torch._assert_async(((cand_pos >= 0) & (cand_pos < top)).all(),
                                f"cand_pos must lie in [0, {top})")
        return cls(cand_pos, n, bool(causal), alibi, segment_ids, key_padding_mask)

    @property
    def batch(self) -> int:
        return self.cand_pos.size(0)

    @property
    def num_candidates(self) -> int:
        return self.cand_pos.size(1)

    def derived(self, name: str, build: Callable[[], T]) -> T:
        """What is derived from this layout (a backend's mask, the backend `auto` chose),
        built once and kept here: every layer handed the same layout reuses it."""
        if name not in self._derived:
            self._derived[name] = build()
        return self._derived[name]

    def check_tensors(self, q: Tensor, q_c: Tensor) -> None:
        """The data stream (B, H, N, D) and the candidates (B, H, M, D) fit the layout."""
        b, m, n = self.batch, self.num_candidates, self.num_data
        if q.size(0) != b or q.size(2) != n:
            raise LayoutError(f"the data stream {tuple(q.shape)} must be (B, H, N, D) with "
                              f"(B, N) = {(b, n)} of the layout")
        if q_c.size(0) != b or q_c.size(2) != m:
            raise LayoutError(f"the candidates {tuple(q_c.shape)} must be (B, H, M, D) with "
                              f"(B, M) = {(b, m)} of the layout (cand_pos)")
        if self.alibi is not None and self.alibi.num_heads != q.size(1):
            raise LayoutError(f"alibi_slopes must have shape (H,) = ({q.size(1)},), got "
                              f"({self.alibi.num_heads},)")
