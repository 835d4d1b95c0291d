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

from energy_lm.kernels.alibi import alibi_bias
from energy_lm.kernels.sdpa import attention
from energy_lm.kernels.visibility import position_visible


def row_positions(cand_pos: Tensor, n: int) -> Tensor:
    """(B, N + M) long: the data position of every row of `[data; candidates]` (data row
    i stands at i, candidate m at cand_pos[:, m]); the reference and flex share it."""
    b = cand_pos.size(0)
    return torch.cat([torch.arange(n, device=cand_pos.device).expand(b, n), cand_pos.long()], 1)


def segment_positions(row_pos: Tensor, n: int, num_data_rows: int, causal: bool) -> Tensor:
    """(B, R) long: the data position whose document (segment id) each query row belongs to.

    row_pos (B, R): positions of rows whose first `num_data_rows` are data rows. A data row
    and a bidirectional candidate belong to the document of their own position. A causal
    candidate at p stands in for the token that data row p - 1 proposes, so it belongs to
    row p - 1's document: a `</s>` that closes a document is scored inside it, although as
    an input it opens the next one; and p = N (the target after a block's last token)
    needs no position N. Position 0 has no context (it sees only its own key).
    """
    if not causal:
        return row_pos
    is_cand = torch.arange(row_pos.size(1), device=row_pos.device) >= num_data_rows
    return torch.where(is_cand[None, :], (row_pos - 1).clamp(min=0), row_pos).clamp(max=n - 1)


def data_keys_visible(q_pos: Tensor, n: int, num_data_rows: int, is_cand, causal: bool,
                      segment_ids: Optional[Tensor],
                      key_padding_mask: Optional[Tensor]) -> Tensor:
    """(B, R) query rows at positions q_pos -> (B, R, N) bool: which data keys each sees.

    A data query at i sees j <= i (causal) or every j; a candidate (is_cand) at p sees
    j < p (causal) or every j != p (its own key replaces key p); in its document
    (`segment_positions`), never padding. Shared by `paired_mask` and `candidate_mask`."""
    j = torch.arange(n, device=q_pos.device)  # (N,) data key positions
    see = position_visible(q_pos[:, :, None], j, is_cand, causal)  # (B, R, N)
    if segment_ids is not None:
        seg_q = segment_ids.gather(1, segment_positions(q_pos, n, num_data_rows, causal))
        see = see & (seg_q[:, :, None] == segment_ids[:, None, :])
    if key_padding_mask is not None:
        see = see & ~key_padding_mask.bool()[:, None, :]
    return see


def data_keys_bias(alibi_slopes: Tensor, q_pos: Tensor, n: int, alibi_mode: str) -> Tensor:
    """(B, R) query positions -> (B, H, R, N) fp32 ALiBi bias on the data keys, exactly
    as a data query at each position gets it."""
    b, rows = q_pos.shape
    j = torch.arange(n, device=q_pos.device)
    bias = alibi_bias(alibi_slopes, q_pos.reshape(-1), j, alibi_mode)  # (H, B*R, N)
    return bias.view(-1, b, rows, n).transpose(0, 1)


def paired_mask(
    cand_pos: Tensor,
    n: int,
    *,
    causal: bool,
    alibi_slopes: Optional[Tensor] = None,
    alibi_mode: str = "causal",
    segment_ids: Optional[Tensor] = None,
    key_padding_mask: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """The mask of queries `[data; candidates]` on keys `[data; candidates]`.

    cand_pos: (B, M) int, the data position of each candidate (0 <= p < N; causal: p <= N);
    n: the data length N.
    Returns (mask, live), with L = N + M:
      - mask: (B, 1, L, L) bool (True = may attend) without ALiBi, or (B, H, L, L) fp32
        additive (ALiBi bias, -inf = may not attend) with it;
      - live: (B, L) bool, False for a query row that sees no key. Such rows are left
        open to every key, so that their softmax stays finite; the caller must zero
        their output.
    """
    b, m = cand_pos.shape
    device = cand_pos.device
    length = n + m
    q_pos = row_positions(cand_pos, n)  # (B, L)
    is_cand = (torch.arange(length, device=device) >= n)[None, :, None]  # (1, L, 1)
    see_data = data_keys_visible(q_pos, n, n, is_cand, causal, segment_ids,
                                 key_padding_mask)  # (B, L, N)

    # candidate keys: candidate m (query row N + m) sees key N + m only
    rows = torch.arange(length, device=device)[:, None]  # (L, 1)
    see_cand = (rows == torch.arange(n, length, device=device)[None, :]).expand(b, length, m)

    visible = torch.cat([see_data, see_cand], dim=2)  # (B, L, L)
    live = visible.any(dim=2)  # (B, L)
    visible = visible | ~live[:, :, None]  # open the dead rows (outputs zeroed by the caller)

    if alibi_slopes is None:
        return visible[:, None], live  # (B, 1, L, L) bool
    h = alibi_slopes.numel()
    data_bias = data_keys_bias(alibi_slopes, q_pos, n, alibi_mode)  # (B, H, L, N)
    own_bias = data_bias.new_zeros(b, h, length, m)  # own key at distance 0
    bias = torch.cat([data_bias, own_bias], dim=3)  # (B, H, L, L) fp32
    return bias.masked_fill(~visible[:, None], float("-inf")), live


def paired_attention_reference(
    q: Tensor, k: Tensor, v: Tensor,
    q_c: Tensor, k_c: Tensor, v_c: Tensor,
    cand_pos: Tensor,
    *,
    causal: bool,
    alibi_slopes: Optional[Tensor] = None,
    alibi_mode: str = "causal",
    segment_ids: Optional[Tensor] = None,
    key_padding_mask: Optional[Tensor] = None,
    dropout_p: float = 0.0,
) -> Tuple[Tensor, Tensor]:
    """(B, H, N, D) data and (B, H, M, D) candidates -> (out, out_c) of the same shapes.

    Inputs are assumed validated by `energy_lm.kernels.paired_attention`.
    """
    n = q.size(2)
    mask, live = paired_mask(cand_pos, n, causal=causal, alibi_slopes=alibi_slopes,
                             alibi_mode=alibi_mode, segment_ids=segment_ids,
                             key_padding_mask=key_padding_mask)
    q_all = torch.cat([q, q_c], dim=2)  # (B, H, N+M, D)
    k_all = torch.cat([k, k_c], dim=2)
    v_all = torch.cat([v, v_c], dim=2)
    out_all = attention(q_all, k_all, v_all, mask, False, dropout_p)  # (B, H, N+M, D)
    out_all = out_all * live[:, None, :, None].to(out_all.dtype)  # zero rows with no key
    return out_all[:, :, :n], out_all[:, :, n:]


_CANDIDATE_CHUNK = 512


def candidate_mask(
    cand_pos: Tensor,
    n: int,
    *,
    causal: bool,
    alibi_slopes: Optional[Tensor] = None,
    alibi_mode: str = "causal",
    segment_ids: Optional[Tensor] = None,
    key_padding_mask: Optional[Tensor] = None,
) -> Tensor:
    """The candidate rows of `paired_mask`: queries `candidates` on keys `[data;
    candidates]`, (B, 1, M, N + M) bool without ALiBi, (B, H, M, N + M) fp32 additive
    with it. Every row sees its own key, so no row is dead."""
    b, m = cand_pos.shape
    see = data_keys_visible(cand_pos.long(), n, 0, True, causal, segment_ids,
                            key_padding_mask)  # (B, M, N)
    own = torch.eye(m, dtype=torch.bool, device=cand_pos.device).expand(b, m, m)  # (B, M, M)
    visible = torch.cat([see, own], dim=2)  # (B, M, N + M)
    if alibi_slopes is None:
        return visible[:, None]
    bias = data_keys_bias(alibi_slopes, cand_pos.long(), n, alibi_mode)  # (B, H, M, N)
    bias = torch.cat([bias, bias.new_zeros(b, bias.size(1), m, m)], dim=3)  # own key: 0
    return bias.masked_fill(~visible[:, None], float("-inf"))


def candidate_attention_reference(
    q_c: Tensor, k_c: Tensor, v_c: Tensor,
    k: Tensor, v: Tensor,
    cand_pos: Tensor,
    *,
    causal: bool,
    alibi_slopes: Optional[Tensor] = None,
    alibi_mode: str = "causal",
    segment_ids: Optional[Tensor] = None,
    key_padding_mask: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    mask_cache: Optional[dict] = None,
) -> Tensor:
    """The candidate rows of `paired_attention_reference` alone: (B, H, M, D).

    What a model's candidate pass needs (its data stream ran already): the candidate
    queries attend over keys `[data; candidates]` through the same `attention` call as
    the full reference, with the candidate rows of its mask, so no data query is
    recomputed and SDPA's fused CPU kernel never materialises the scores (the explicit
    scores, bias and softmax of every layer made the MonArc step 2.3x the LM step,
    benchmarks/ratios.py). Candidates go in chunks of at most 512 rows (of 128, 256, 512
    and 1024, the fastest MonArc step at 12 x 768, N = 1024), each with only its own
    candidate keys, so the cost stays O(M * N) for K > 1. The masks depend only on
    the batch: with a `mask_cache` (one per candidate stage of a model, shared by its
    layers) they are built once and reused by every layer.
    """
    n, m = k.size(2), q_c.size(2)
    # candidates in chunks of at most 512 rows: keys [data; chunk], so the own-key
    # block adds at most 512 keys to the N data keys, and the cost stays O(M * N)
    # however many candidates a position has (K > 1)
    chunk = max(1, min(m, _CANDIDATE_CHUNK))
    outs = []
    for start in range(0, m, chunk):
        stop = min(m, start + chunk)
        key = ("reference-candidates", n, m, start, bool(causal), alibi_mode,
               alibi_slopes is not None, q_c.device)
        mask = mask_cache.get(key) if mask_cache is not None else None
        if mask is None:
            mask = candidate_mask(cand_pos[:, start:stop], n, causal=causal,
                                  alibi_slopes=alibi_slopes, alibi_mode=alibi_mode,
                                  segment_ids=segment_ids, key_padding_mask=key_padding_mask)
            if mask_cache is not None:
                mask_cache[key] = mask
        keys = torch.cat([k, k_c[:, :, start:stop]], dim=2)  # (B, H, N + c, D)
        values = torch.cat([v, v_c[:, :, start:stop]], dim=2)
        outs.append(attention(q_c[:, :, start:stop], keys, values, mask, False, dropout_p))
    if not outs:  # M = 0
        return q_c.new_zeros(q_c.shape)
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)  # (B, H, M, D)
