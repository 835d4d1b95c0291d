"""Which key a query may see, and at what ALiBi distance: the rules every attention path
shares, written once as small elementwise functions in the manner of FlexAttention's
`mask_mod` / `score_mod` (they broadcast, and they run eagerly as well as inside
`flex_attention`). Used by the reference (`kernels.reference`), the flex backend, the
models' self-attention (`modules.attention`) and `alibi_bias`; the Triton kernel mirrors
them in `_tile_scores` and `_query_segment` (kernels.triton_paired), where a comment
points back here.

Positions are data positions. A candidate stands at p in place of the data token there:
it never sees key p itself (its own key replaces it, at distance 0), and a causal
candidate belongs to the document of row p - 1 (`candidate_document`).
"""

import torch
from torch import Tensor


def position_visible(q_pos: Tensor, k_pos: Tensor, is_candidate, causal: bool) -> Tensor:
    """May a query at q_pos see the data key at k_pos? (bool, broadcast)

    data query i:  j <= i (causal) or any j
    candidate p:   j < p  (causal) or any j != p
    is_candidate: a bool tensor (broadcast) or a Python bool for all queries.
    """
    if isinstance(is_candidate, bool):
        if causal:
            return k_pos < q_pos if is_candidate else k_pos <= q_pos
        return k_pos != q_pos if is_candidate else torch.ones_like(k_pos != q_pos)
    if causal:
        return (k_pos < q_pos) | ((k_pos == q_pos) & ~is_candidate)
    return (k_pos != q_pos) | ~is_candidate


def candidate_document(pos: Tensor, n: int) -> Tensor:
    """The data position whose document (segment id) a causal candidate at pos belongs to:
    row p - 1, which proposes it, so a `</s>` that closes a document is scored inside it
    although as an input it opens the next one; p = n (the target after a block's last
    token) needs no position n; position 0, which has no context, keeps its own."""
    return (pos - 1).clamp(min=0, max=n - 1)


def alibi_distance(q_pos: Tensor, k_pos: Tensor, mode: str) -> Tensor:
    """The distance ALiBi multiplies by each head's slope (float, broadcast):

    causal:    i - j                        (keys j > i are masked by the caller)
    symmetric: |i - j|
    shifted:   i - j for j <= i, j - i - 0.5 for j > i (looking ahead costs half a slope less)
    """
    i, j = q_pos.to(torch.float32), k_pos.to(torch.float32)
    if mode == "causal":
        return i - j
    if mode == "symmetric":
        return (i - j).abs()
    return torch.where(j <= i, i - j, j - i - 0.5)
