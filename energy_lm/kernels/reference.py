"""Exact paired-token attention in plain PyTorch (docs/methods.md section 6).

Supports: causal and bidirectional data streams; any number M >= 0 of candidates per
batch row, at any data positions (several candidates may share one position); ALiBi in
the modes of `energy_lm.kernels.alibi` (bias built in fp32); packed documents
(`segment_ids`); key padding; attention dropout; fp32/fp64/bf16/fp16 inputs; autograd
to all six of q, k, v, q_c, k_c, v_c. Runs on any device SDPA runs on.

How: keys and values are concatenated as `[data; candidates]` and ONE explicit mask is
built for the queries `[data; candidates]` (`paired_mask`), then the model's ordinary
`energy_lm.kernels.sdpa.attention` runs once over the (N + M) x (N + M) problem.

Caveats:
- memory is O(B * H * (N + M)^2) for the mask with ALiBi (O(B * (N + M)^2) without),
  and most of the candidate-key block is masked: this is the readable reference, not
  the fast path (the fused kernel reads each data K/V tile once for both streams).
- a query row that sees no key at all (only possible for data queries, e.g. a padded
  position whose visible keys are all padding) is opened to every key so the softmax
  stays finite, and its output is then multiplied by 0: it returns 0 and its gradient
  is 0, with no NaN.
- with dropout, the candidate's own-key probability is dropped like any other.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from energy_lm.kernels.layout import Alibi, PairedLayout
from energy_lm.kernels.sdpa import attention
from energy_lm.kernels.visibility import candidate_document, position_visible


def row_positions(cand_pos: Tensor, n: int) -> Tensor:
    """(B, N + M) long: the data position of every row of `[data; candidates]` (data row
    i stands at i, candidate m at cand_pos[:, m]); the reference and flex share it."""
    b = cand_pos.size(0)
    return torch.cat([torch.arange(n, device=cand_pos.device).expand(b, n), cand_pos.long()], 1)


def segment_positions(row_pos: Tensor, n: int, num_data_rows: int, causal: bool) -> Tensor:
    """(B, R) long: the data position whose document (segment id) each query row belongs to.

    row_pos (B, R): positions of rows whose first `num_data_rows` are data rows. A data row
    and a bidirectional candidate belong to the document of their own position; a causal
    candidate to row p - 1's (`visibility.candidate_document`).
    """
    if not causal:
        return row_pos
    is_cand = torch.arange(row_pos.size(1), device=row_pos.device) >= num_data_rows
    return torch.where(is_cand[None, :], candidate_document(row_pos, n), row_pos.clamp(max=n - 1))


def data_keys_visible(q_pos: Tensor, layout: PairedLayout, num_data_rows: int,
                      is_cand) -> Tensor:
    """(B, R) query rows at positions q_pos -> (B, R, N) bool: which data keys each sees.

    A data query at i sees j <= i (causal) or every j; a candidate (is_cand) at p sees
    j < p (causal) or every j != p (its own key replaces key p); in its document
    (`segment_positions`), never padding. Shared by `paired_mask` and `candidate_mask`."""
    n, causal = layout.num_data, layout.causal
    j = torch.arange(n, device=q_pos.device)  # (N,) data key positions
    see = position_visible(q_pos[:, :, None], j, is_cand, causal)  # (B, R, N)
    if layout.segment_ids is not None:
        seg = layout.segment_ids
        seg_q = seg.gather(1, segment_positions(q_pos, n, num_data_rows, causal))
        see = see & (seg_q[:, :, None] == seg[:, None, :])
    if layout.key_padding_mask is not None:
        see = see & ~layout.key_padding_mask.bool()[:, None, :]
    return see


def data_keys_bias(alibi: Alibi, q_pos: Tensor, n: int) -> Tensor:
    """(B, R) query positions -> (B, H, R, N) fp32 ALiBi bias on the data keys, exactly
    as a data query at each position gets it."""
    b, rows = q_pos.shape
    bias = alibi.bias(q_pos.reshape(-1), torch.arange(n, device=q_pos.device))  # (H, B*R, N)
    return bias.view(-1, b, rows, n).transpose(0, 1)


def paired_mask(layout: PairedLayout) -> Tuple[Tensor, Tensor]:
    """The mask of queries `[data; candidates]` on keys `[data; candidates]`.

    Returns (mask, live), with L = N + M:
      - mask: (B, 1, L, L) bool (True = may attend) without ALiBi, or (B, H, L, L) fp32
        additive (ALiBi bias, -inf = may not attend) with it;
      - live: (B, L) bool, False for a query row that sees no key. Such rows are left
        open to every key, so that their softmax stays finite; the caller must zero
        their output.
    """
    cand_pos, n = layout.cand_pos, layout.num_data
    b, m = cand_pos.shape
    device = cand_pos.device
    length = n + m
    q_pos = row_positions(cand_pos, n)  # (B, L)
    is_cand = (torch.arange(length, device=device) >= n)[None, :, None]  # (1, L, 1)
    see_data = data_keys_visible(q_pos, layout, n, is_cand)  # (B, L, N)

    # candidate keys: candidate m (query row N + m) sees key N + m only
    rows = torch.arange(length, device=device)[:, None]  # (L, 1)
    see_cand = (rows == torch.arange(n, length, device=device)[None, :]).expand(b, length, m)

    visible = torch.cat([see_data, see_cand], dim=2)  # (B, L, L)
    live = visible.any(dim=2)  # (B, L)
    visible = visible | ~live[:, :, None]  # open the dead rows (outputs zeroed by the caller)

    if layout.alibi is None:
        return visible[:, None], live  # (B, 1, L, L) bool
    data_bias = data_keys_bias(layout.alibi, q_pos, n)  # (B, H, L, N)
    own_bias = data_bias.new_zeros(b, data_bias.size(1), length, m)  # own key at distance 0
    bias = torch.cat([data_bias, own_bias], dim=3)  # (B, H, L, L) fp32
    return bias.masked_fill(~visible[:, None], float("-inf")), live


def paired_attention_reference(q: Tensor, k: Tensor, v: Tensor, q_c: Tensor, k_c: Tensor,
                               v_c: Tensor, layout: PairedLayout,
                               dropout_p: float = 0.0) -> Tuple[Tensor, Tensor]:
    """(B, H, N, D) data and (B, H, M, D) candidates -> (out, out_c) of the same shapes
    (the backend signature of `energy_lm.kernels.backends`; inputs assumed checked by
    `energy_lm.kernels.paired_attention`). The mask is kept on the layout."""
    n = q.size(2)
    mask, live = layout.derived(f"reference-full-{q.device}",
                                lambda: paired_mask(layout))
    q_all = torch.cat([q, q_c], dim=2)  # (B, H, N+M, D)
    k_all = torch.cat([k, k_c], dim=2)
    v_all = torch.cat([v, v_c], dim=2)
    out_all = attention(q_all, k_all, v_all, mask, False, dropout_p)  # (B, H, N+M, D)
    out_all = out_all * live[:, None, :, None].to(out_all.dtype)  # zero rows with no key
    return out_all[:, :, :n], out_all[:, :, n:]


_CANDIDATE_CHUNK = 512


def candidate_mask(layout: PairedLayout, start: int = 0, stop: Optional[int] = None) -> Tensor:
    """The candidate rows start..stop of `paired_mask`, each on keys `[data; candidates
    start..stop]`: (B, 1, C, N + C) bool without ALiBi, (B, H, C, N + C) fp32 additive
    with it. Every row sees its own key, so no row is dead."""
    cand_pos = layout.cand_pos[:, start:stop].long()
    b, c = cand_pos.shape
    n = layout.num_data
    see = data_keys_visible(cand_pos, layout, 0, True)  # (B, C, N)
    own = torch.eye(c, dtype=torch.bool, device=cand_pos.device).expand(b, c, c)  # (B, C, C)
    visible = torch.cat([see, own], dim=2)  # (B, C, N + C)
    if layout.alibi is None:
        return visible[:, None]
    bias = data_keys_bias(layout.alibi, cand_pos, n)  # (B, H, C, N)
    bias = torch.cat([bias, bias.new_zeros(b, bias.size(1), c, c)], dim=3)  # own key: 0
    return bias.masked_fill(~visible[:, None], float("-inf"))


def candidate_attention_reference(q_c: Tensor, k_c: Tensor, v_c: Tensor, k: Tensor,
                                  v: Tensor, layout: PairedLayout,
                                  dropout_p: float = 0.0) -> Tensor:
    """The candidate rows of `paired_attention_reference` alone: (B, H, M, D).

    What a model's candidate pass needs (its data stream ran already): the candidate
    queries attend over keys `[data; candidates]` through the same `attention` call as
    the full reference, with the candidate rows of its mask, so no data query is
    recomputed and SDPA's fused CPU kernel never materialises the scores (the explicit
    scores, bias and softmax of every layer made the MonArc step 2.3x the LM step,
    benchmarks/ratios.py). Candidates go in chunks of at most 512 rows (of 128, 256, 512
    and 1024, the fastest MonArc step at 12 x 768, N = 1024), each with only its own
    candidate keys, so the cost stays O(M * N) for K > 1. The chunks' masks are kept on
    the layout: a model hands one layout to all its layers, which build them once.
    """
    m = q_c.size(2)
    # candidates in chunks of at most 512 rows: keys [data; chunk], so the own-key
    # block adds at most 512 keys to the N data keys, and the cost stays O(M * N)
    # however many candidates a position has (K > 1)
    chunk = max(1, min(m, _CANDIDATE_CHUNK))
    outs = []
    for start in range(0, m, chunk):
        stop = min(m, start + chunk)
        mask = layout.derived(f"reference-candidates-{start}-{q_c.device}",
                              lambda start=start, stop=stop: candidate_mask(layout, start, stop))
        keys = torch.cat([k, k_c[:, :, start:stop]], dim=2)  # (B, H, N + c, D)
        values = torch.cat([v, v_c[:, :, start:stop]], dim=2)
        outs.append(attention(q_c[:, :, start:stop], keys, values, mask, False, dropout_p))
    if not outs:  # M = 0
        return q_c.new_zeros(q_c.shape)
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)  # (B, H, M, D)
