"""Fused paired-token attention in Triton, forward and backward (docs/methods.md section 6).

`paired_attention_triton` has the signature and the semantics of
`energy_lm.kernels.reference.paired_attention_reference`: data query i sees data keys j
(j <= i when causal, else every j) in its segment and not padding; candidate m at
p = cand_pos[b, m] sees the data keys a data query at p would see, minus key p itself
(causal: j < p; bidirectional: j != p), plus its OWN key k_c[m], v_c[m] with bias 0,
and never another candidate. A causal candidate belongs to the document of row p - 1
(the row whose proposal it stands in for) and may stand at p = N. A query that sees no
key returns 0 with zero gradient.

Supports: causal and bidirectional attention; grouped-query attention (k, v, k_c, v_c
with Hk heads, Hk dividing the H query heads: query head h reads key/value head h // G,
G = H / Hk, through the key/value tensors' own strides, so the repeated heads are never
stored and the K/V of a layer (and the candidates' own keys and values) stay H / Hk
times smaller than repeated heads would be); ALiBi in the modes "causal", "symmetric"
and "shifted", computed in the kernel from the per-query-head (H,) slopes and the
positions (no bias tensor in memory); packed documents (`segment_ids`); key padding; any
M >= 0 (several candidates may share a position); any N >= 0; head dims D up to 256 (the
tile is padded to the next power of two, at least 16, and masked; wider heads are
refused: they would not fit a GPU's shared memory); fp32, bf16 and fp16 inputs
with fp32 scores, softmax and accumulation; gradients for q, k, v, q_c, k_c, v_c (none
for the ALiBi slopes, which are not parameters). The backward is deterministic (no
atomics).

Not supported: attention dropout (`dropout_p > 0` raises NotImplementedError: use the
reference backend); float64 (raises ValueError: use the reference backend).

Design: one query index space [data queries (N); candidate queries (M)] cut into tiles
of BLOCK_M rows (a tile holds one stream only). The forward runs one program per (query
tile, query head, batch row), reading its key/value head; it starts the online softmax of a
candidate row from its own-key score (max = that score, sum = 1, accumulator = v_c),
then streams the data key tiles, so the own key is the one extra score of the row;
causal programs stop after the last key tile any of their rows can see. It stores the
output and the base-2 log-sum-exp of each row (+inf for a row that sees no key, so that
its recomputed probabilities are all 0). The backward recomputes the probabilities and
runs one program per (tile, key/value head, batch row), which loops over the H / Hk query
heads that read that head (one head when Hk = H), so each sum over a group is owned by
one program (no atomics): one kernel per data key tile accumulates dK, dV over the data
query tiles and then over the candidate query tiles of every query head of the group
(one K/V load serves both streams and the whole group); one kernel per query tile
accumulates dQ of each query head of the group over the key tiles and, for candidate
rows, adds the own-key terms, summing dk_c, dv_c over the group before it writes them.
delta = rowsum(dO * O) is one fp32 PyTorch reduction. The kernels read four stride sets,
data queries (q, out, dq), data keys and values (k, v, dk, dv), candidate queries and
candidate keys and values, each through its batch, head and row strides (unit stride
along the head dim), so the layers' (T, B, H, D) projections permuted to (B, H, T, D)
are not copied; a tensor laid out unlike the first dense one of its set (e.g. an
incoming gradient, or a slice of a fused projection) is. `candidate_attention_triton` is
the same kernels started at the first candidate tile (and the dK/dV kernel without its
data-query loop): a model's candidate pass, whose data stream ran already, pays only for
the M candidate rows.

Tested: only under the Triton CPU interpreter (TRITON_INTERPRET=1, Triton 3.9), against
the reference in fp32, bf16 and fp16, forward and all six gradients, with equal heads
and with 6 query heads on 2 or 1 key/value heads (tests/kernels/test_paired_triton.py).
It has NOT been run on a GPU yet: every launch the host code makes compiles for sm_80
and sm_90 (`make kernel-compile-check`, tools/kernel_compile_check.py: shared memory,
spills and tensor cores per kernel, dtype, head dim and grouping; docs/kernels-compile.md),
but GPU results and speed are unmeasured.

Caveats:
- CPU tensors run only under the interpreter, and Triton reads TRITON_INTERPRET when a
  function is decorated (its own `tl.max`, `tl.cdiv` too): set it before triton is first
  imported.
- The interpreter cannot multiply bf16 tiles (it treats them as raw uint16), so there
  every tl.dot operand is first rounded to the input dtype and then widened to fp32 for
  an IEEE fp32 product; on a GPU the operands go to tl.dot in the input dtype (fp32
  inputs use input_precision="ieee", not TF32). The two agree up to summation order.
- As in flash-attention, probabilities and dS are rounded to the input dtype before
  their matrix products (bf16/fp16), and delta uses the rounded output.
- With grouped heads the backward has H / Hk times fewer programs than the forward
  (each loops over its group), and the dQ kernel reloads each K/V tile per query head
  of the group; unmeasured on a GPU.
- Candidate query tiles are not sorted by position: the causal dK/dV kernel skips a
  candidate tile only when all of its positions lie at or before the key tile; callers
  with candidates sorted by position (K per position, in order) get the most skipping.
"""

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from energy_lm.kernels.layout import PairedLayout

_ALIBI_CODES = {None: 0, "causal": 1, "symmetric": 2, "shifted": 3}
_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# --------------------------------------------------------------------------- kernels


@triton.jit
def _mm(a, b, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """a @ b with an fp32 result; see the module docstring for UPCAST."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _cast(x, DTYPE: tl.constexpr, UPCAST: tl.constexpr):
    """fp32 x rounded to DTYPE, to nearest even. The interpreter's own fp32 -> bf16 cast
    truncates, so there the rounding is done on the bits (finite values only)."""
    if UPCAST and DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        return ((bits >> 16) << 16).to(tl.float32, bitcast=True).to(DTYPE)
    else:
        return x.to(DTYPE)


@triton.jit
def _query_rows(pid_m, b, N, M, CP, BLOCK_M: tl.constexpr):
    """The rows of query tile pid_m in [data; candidates].

    Returns (is_cand 0/1, local row index in its stream (BLOCK_M,), row_ok, position).
    """
    n_data_tiles = tl.cdiv(N, BLOCK_M)
    offs = tl.arange(0, BLOCK_M)
    if pid_m >= n_data_tiles:
        is_cand = 1
        local = (pid_m - n_data_tiles) * BLOCK_M + offs
        row_ok = local < M
        pos = tl.load(CP + b.to(tl.int64) * M + local, mask=row_ok, other=0)
    else:
        is_cand = 0
        local = pid_m * BLOCK_M + offs
        row_ok = local < N
        pos = local
    return is_cand, local, row_ok, pos


@triton.jit
def _query_segment(SEG, b, N, pos, row_ok, is_cand, CAUSAL: tl.constexpr, HAS_SEG: tl.constexpr):
    """The document id of query rows at positions `pos`: a causal candidate at p belongs
    to row p - 1's document, any other row to its own (`visibility.candidate_document`,
    the rule's one statement: a kernel cannot call it)."""
    if HAS_SEG:
        if CAUSAL:
            at = tl.minimum(tl.maximum(pos - is_cand, 0), N - 1)
        else:
            at = pos
        return tl.load(SEG + b.to(tl.int64) * N + at, mask=row_ok, other=-2)
    else:
        return pos


@triton.jit
def _query_tile(pid_m, b, N, M, D, CP, SEG, CAUSAL: tl.constexpr, HAS_SEG: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """What the forward and the dq kernels know of query tile pid_m of batch row b, alike
    for every head: (is_cand, local, row_ok, pos) of `_query_rows`, the head-dim offsets
    and masks, and each row's document."""
    is_cand, local, row_ok, pos = _query_rows(pid_m, b, N, M, CP, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d[None, :] < D
    row_mask = row_ok[:, None] & d_ok
    seg_q = _query_segment(SEG, b, N, pos, row_ok, is_cand, CAUSAL, HAS_SEG)
    return is_cand, local, row_ok, pos, offs_d, d_ok, row_mask, seg_q


@triton.jit
def _offsets(b, h, rows, offs_d, R_B, R_H, R_T):
    """Element offsets (len(rows), BLOCK_D) of rows `rows` of head h of batch row b in a
    tensor with batch, head and row strides R_B, R_H, R_T (unit stride along D)."""
    return (b * R_B + h * R_H + rows.to(tl.int64) * R_T)[:, None] + offs_d[None, :]


@triton.jit
def _tile_scores(q, k, pos, row_ok, seg_q, offs_n, b, is_cand, N, SEG, PAD, slope, sm_scale,
                 CAUSAL: tl.constexpr, ALIBI: tl.constexpr, HAS_SEG: tl.constexpr,
                 HAS_PAD: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """Scores of query rows (BLOCK_M,) at positions `pos` on data keys offs_n (BLOCK_N,).

    Base-2 units ((q.k * scale + ALiBi bias) * log2(e)), -inf where a key is not visible.
    is_cand (0 or 1) says whether the rows are candidates.
    """
    # the visibility rule and the ALiBi distance mirror energy_lm.kernels.visibility
    s = _mm(q, tl.trans(k), UPCAST, PREC) * sm_scale  # (BLOCK_M, BLOCK_N) fp32
    p = pos[:, None]
    j = offs_n[None, :]
    ok = row_ok[:, None] & (j < N)
    if CAUSAL:
        ok = ok & (j <= p - is_cand)  # data: j <= p; candidate: j < p
    else:  # candidate: every key but its position; data: every key (j < N <= p + N)
        ok = ok & (j != p + (1 - is_cand) * N)
    if HAS_SEG:
        seg_k = tl.load(SEG + b.to(tl.int64) * N + offs_n, mask=offs_n < N, other=-1)
        ok = ok & (seg_q[:, None] == seg_k[None, :])
    if HAS_PAD:
        pad_k = tl.load(PAD + b.to(tl.int64) * N + offs_n, mask=offs_n < N, other=1)
        ok = ok & (pad_k[None, :] == 0)
    if ALIBI != 0:
        dist = p.to(tl.float32) - j.to(tl.float32)  # i - j
        if ALIBI == 2:  # symmetric: |i - j|
            dist = tl.abs(dist)
        if ALIBI == 3:  # shifted: i - j for j <= i, j - i - 0.5 for j > i
            dist = tl.where(dist >= 0.0, dist, -dist - 0.5)
        s = s - slope * dist
    s = s * 1.4426950408889634  # log2(e)
    return tl.where(ok, s, float("-inf"))


@triton.jit
def _fwd_kernel(Q, K, V, QC, KC, VC, CP, SEG, PAD, SLOPES, O, OC, LSE,
                H, GROUP, N, M, D, S_B, S_H, S_T, SK_B, SK_H, SK_T, SC_B, SC_H, SC_T,
                SKC_B, SKC_H, SKC_T, sm_scale, first_tile,
                CAUSAL: tl.constexpr, ALIBI: tl.constexpr, HAS_SEG: tl.constexpr,
                HAS_PAD: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m = tl.program_id(0) + first_tile  # first_tile > 0: candidate tiles only
    # heads and batch rows on axes 1 and 2 (each may hold 65,535 on a GPU; their product,
    # one axis before, could not)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    bh = b * H + h  # (batch row, query head)
    hk = h // GROUP  # the key/value head it reads
    is_cand, local, row_ok, pos, offs_d, d_ok, row_mask, seg_q = _query_tile(
        pid_m, b, N, M, D, CP, SEG, CAUSAL, HAS_SEG, BLOCK_M, BLOCK_D)
    if ALIBI != 0:
        slope = tl.load(SLOPES + h)
    else:
        slope = 0.0

    # initial online-softmax state: a candidate row holds its own key (bias 0)
    if is_cand == 1:
        rows = _offsets(b, h, local, offs_d, SC_B, SC_H, SC_T)
        own = _offsets(b, hk, local, offs_d, SKC_B, SKC_H, SKC_T)
        q = tl.load(QC + rows, mask=row_mask, other=0.0)
        kc = tl.load(KC + own, mask=row_mask, other=0.0).to(tl.float32)
        vc = tl.load(VC + own, mask=row_mask, other=0.0).to(tl.float32)
        m_i = tl.sum(q.to(tl.float32) * kc, 1) * (sm_scale * 1.4426950408889634)
        l_i = tl.full([BLOCK_M], 1.0, tl.float32)
        acc = vc
        out_ptrs = OC + rows
        lse_ptrs = LSE + bh * (N + M) + N + local
    else:
        rows = _offsets(b, h, local, offs_d, S_B, S_H, S_T)
        q = tl.load(Q + rows, mask=row_mask, other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        out_ptrs = O + rows
        lse_ptrs = LSE + bh * (N + M) + local

    if CAUSAL:  # no row of the tile sees a key beyond its largest position
        hi = tl.minimum(tl.max(tl.where(row_ok, pos, 0), 0) + 1, N)
    else:
        hi = N
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_rows = _offsets(b, hk, offs_n, offs_d, SK_B, SK_H, SK_T)
        kv_mask = (offs_n[:, None] < N) & d_ok
        k = tl.load(K + kv_rows, mask=kv_mask, other=0.0)
        v = tl.load(V + kv_rows, mask=kv_mask, other=0.0)
        s = _tile_scores(q, k, pos, row_ok, seg_q, offs_n, b, is_cand, N, SEG, PAD, slope,
                         sm_scale, CAUSAL, ALIBI, HAS_SEG, HAS_PAD, UPCAST, PREC)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # all masked so far: no NaN
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _mm(_cast(p, v.dtype, UPCAST), v, UPCAST, PREC)
        m_i = m_new

    live = l_i > 0.0
    out = acc / tl.where(live, l_i, 1.0)[:, None]  # a dead row has acc = 0
    lse = tl.where(live, m_i + tl.log2(tl.where(live, l_i, 1.0)), float("inf"))
    tl.store(out_ptrs, _cast(out, O.dtype.element_ty, UPCAST), mask=row_mask)
    tl.store(lse_ptrs, lse, mask=row_ok)


# Gradient derivation. For one query row (data or candidate) with base-e scores
# s_j = scale * q.k_j + bias_j over its visible keys (a candidate row's keys include its
# own key, s_own = scale * q_c.k_c, bias 0), P_j = exp(s_j - lse) and O = sum_j P_j v_j:
#   dV_j   += P_j dO                                 (for every row that sees key j)
#   dP_j    = dO . v_j
#   dS_j    = P_j (dP_j - sum_l P_l dP_l) = P_j (dP_j - delta),
#             delta = sum_l P_l (dO . v_l) = dO . O  (one number per row)
#   dQ     += scale * sum_j dS_j k_j
#   dK_j   += scale * dS_j q                         (for every row that sees key j)
# The bias does not depend on q, k, v, so it only enters through P. The own key of a
# candidate m belongs to that row alone, so dk_c[m] = scale * dS_own q_c[m],
# dv_c[m] = P_own dO_c[m], and dq_c[m] gains scale * dS_own k_c[m]: all row-local, done
# by the dQ kernel. A dead row (no key) has lse = +inf, so every recomputed P_j = 0 and
# it contributes nothing (its output, hence delta, is 0 as well). The kernels recompute P
# from the saved base-2 lse: P = exp2(s * log2(e) - lse2).
# Grouped heads: key/value head g is read by query heads g * G .. g * G + G - 1
# (G = H / Hk), so its dK, dV (and dk_c, dv_c) are the sums of the terms above over
# those G heads. One program owns one key/value head's tile and loops over its G query
# heads (the dK/dV kernel per key tile, the dQ kernel per query tile for the own-key
# terms), so the sums need no atomics and keep one fixed order.


@triton.jit
def _bwd_dkdv_stream(dk, dv, k, v, start_n, offs_n, QS, DOS, LSE, DELTA, CP, SEG, PAD,
                     b, h, lse_off, n_rows, start, N, M, D, R_B, R_H, R_T, slope, sm_scale,
                     IS_CAND: tl.constexpr, CAUSAL: tl.constexpr, ALIBI: tl.constexpr,
                     HAS_SEG: tl.constexpr, HAS_PAD: tl.constexpr, UPCAST: tl.constexpr,
                     PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Add to dk, dv (BLOCK_N, BLOCK_D) the terms of query rows [start, n_rows) of one
    stream (data or candidates, whose tensors have strides R_B, R_H, R_T) on the key tile
    offs_n = start_n + [0, BLOCK_N)."""
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d[None, :] < D
    for start_m in range(start, n_rows, BLOCK_M):
        local = start_m + tl.arange(0, BLOCK_M)
        row_ok = local < n_rows
        if IS_CAND:
            pos = tl.load(CP + b * M + local, mask=row_ok, other=0)
        else:
            pos = local
        if CAUSAL:  # skip a tile none of whose rows sees a key >= start_n
            visit = tl.max(tl.where(row_ok, pos, -1), 0) >= start_n + IS_CAND
        else:
            visit = start_m < n_rows
        if visit:
            seg_q = _query_segment(SEG, b, N, pos, row_ok, IS_CAND, CAUSAL, HAS_SEG)
            rows = (b * R_B + h * R_H + local.to(tl.int64) * R_T)[:, None] + offs_d[None, :]
            row_mask = row_ok[:, None] & d_ok
            q = tl.load(QS + rows, mask=row_mask, other=0.0)
            do = tl.load(DOS + rows, mask=row_mask, other=0.0)
            lse = tl.load(LSE + lse_off + local, mask=row_ok, other=0.0)
            delta = tl.load(DELTA + lse_off + local, mask=row_ok, other=0.0)
            s = _tile_scores(q, k, pos, row_ok, seg_q, offs_n, b, IS_CAND, N, SEG, PAD, slope,
                             sm_scale, CAUSAL, ALIBI, HAS_SEG, HAS_PAD, UPCAST, PREC)
            p = tl.exp2(s - lse[:, None])  # (BLOCK_M, BLOCK_N)
            dv += _mm(tl.trans(_cast(p, do.dtype, UPCAST)), do, UPCAST, PREC)
            dp = _mm(do, tl.trans(v), UPCAST, PREC)
            ds = p * (dp - delta[:, None])
            dk += _mm(tl.trans(_cast(ds, q.dtype, UPCAST)), q, UPCAST, PREC)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, QC, DO, DOC, LSE, DELTA, CP, SEG, PAD, SLOPES, DK, DV,
                     H, GROUP, N, M, D, S_B, S_H, S_T, SK_B, SK_H, SK_T, SC_B, SC_H, SC_T,
                     sm_scale,
                     CAUSAL: tl.constexpr, ALIBI: tl.constexpr, HAS_SEG: tl.constexpr,
                     HAS_PAD: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                     WITH_DATA: tl.constexpr):
    pid_n = tl.program_id(0)
    hk = tl.program_id(1).to(tl.int64)  # the key/value head
    b = tl.program_id(2).to(tl.int64)  # the batch row
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_rows = _offsets(b, hk, offs_n, offs_d, SK_B, SK_H, SK_T)
    kv_mask = (offs_n[:, None] < N) & (offs_d[None, :] < D)
    k = tl.load(K + kv_rows, mask=kv_mask, other=0.0)
    v = tl.load(V + kv_rows, mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    if CAUSAL:  # data rows i < start_n see none of these keys
        start = (start_n // BLOCK_M) * BLOCK_M
    else:
        start = 0
    for g in range(0, GROUP):  # the query heads that read this key/value head
        h = hk * GROUP + g
        if ALIBI != 0:
            slope = tl.load(SLOPES + h)
        else:
            slope = 0.0
        lse_off = (b * H + h) * (N + M)
        if WITH_DATA:  # else the candidates alone (a model's candidate pass)
            dk, dv = _bwd_dkdv_stream(dk, dv, k, v, start_n, offs_n, Q, DO, LSE, DELTA, CP,
                                      SEG, PAD, b, h, lse_off, N, start, N, M, D, S_B, S_H,
                                      S_T, slope, sm_scale,
                                      0, CAUSAL, ALIBI, HAS_SEG, HAS_PAD, UPCAST, PREC,
                                      BLOCK_M, BLOCK_D)
        dk, dv = _bwd_dkdv_stream(dk, dv, k, v, start_n, offs_n, QC, DOC, LSE, DELTA, CP, SEG,
                                  PAD, b, h, lse_off + N, M, 0, N, M, D, SC_B, SC_H, SC_T,
                                  slope, sm_scale,
                                  1, CAUSAL, ALIBI, HAS_SEG, HAS_PAD, UPCAST, PREC,
                                  BLOCK_M, BLOCK_D)
    tl.store(DK + kv_rows, _cast(dk * sm_scale, DK.dtype.element_ty, UPCAST), mask=kv_mask)
    tl.store(DV + kv_rows, _cast(dv, DV.dtype.element_ty, UPCAST), mask=kv_mask)


@triton.jit
def _bwd_dq_kernel(Q, K, V, QC, KC, VC, DO, DOC, LSE, DELTA, CP, SEG, PAD, SLOPES,
                   DQ, DQC, DKC, DVC,
                   H, GROUP, N, M, D, S_B, S_H, S_T, SK_B, SK_H, SK_T, SC_B, SC_H, SC_T,
                   SKC_B, SKC_H, SKC_T, sm_scale, first_tile,
                   CAUSAL: tl.constexpr, ALIBI: tl.constexpr, HAS_SEG: tl.constexpr,
                   HAS_PAD: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m = tl.program_id(0) + first_tile  # first_tile > 0: candidate tiles only
    hk = tl.program_id(1).to(tl.int64)  # the key/value head
    b = tl.program_id(2).to(tl.int64)  # the batch row
    is_cand, local, row_ok, pos, offs_d, d_ok, row_mask, seg_q = _query_tile(
        pid_m, b, N, M, D, CP, SEG, CAUSAL, HAS_SEG, BLOCK_M, BLOCK_D)
    own = _offsets(b, hk, local, offs_d, SKC_B, SKC_H, SKC_T)  # candidate rows' own keys
    if is_cand == 1:
        kc = tl.load(KC + own, mask=row_mask, other=0.0).to(tl.float32)
        vc = tl.load(VC + own, mask=row_mask, other=0.0).to(tl.float32)
    else:
        kc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        vc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dkc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)  # own-key terms summed over the group
    dvc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if CAUSAL:
        hi = tl.minimum(tl.max(tl.where(row_ok, pos, 0), 0) + 1, N)
    else:
        hi = N

    for g in range(0, GROUP):  # the query heads that read this key/value head
        h = hk * GROUP + g
        bh = b * H + h
        if ALIBI != 0:
            slope = tl.load(SLOPES + h)
        else:
            slope = 0.0
        if is_cand == 1:
            rows = _offsets(b, h, local, offs_d, SC_B, SC_H, SC_T)
            q = tl.load(QC + rows, mask=row_mask, other=0.0)
            do = tl.load(DOC + rows, mask=row_mask, other=0.0)
            row_off = bh * (N + M) + N + local
        else:
            rows = _offsets(b, h, local, offs_d, S_B, S_H, S_T)
            q = tl.load(Q + rows, mask=row_mask, other=0.0)
            do = tl.load(DO + rows, mask=row_mask, other=0.0)
            row_off = bh * (N + M) + local
        lse = tl.load(LSE + row_off, mask=row_ok, other=0.0)
        delta = tl.load(DELTA + row_off, mask=row_ok, other=0.0)

        dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start_n in range(0, hi, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            kv_rows = _offsets(b, hk, offs_n, offs_d, SK_B, SK_H, SK_T)
            kv_mask = (offs_n[:, None] < N) & d_ok
            k = tl.load(K + kv_rows, mask=kv_mask, other=0.0)
            v = tl.load(V + kv_rows, mask=kv_mask, other=0.0)
            s = _tile_scores(q, k, pos, row_ok, seg_q, offs_n, b, is_cand, N, SEG, PAD, slope,
                             sm_scale, CAUSAL, ALIBI, HAS_SEG, HAS_PAD, UPCAST, PREC)
            p = tl.exp2(s - lse[:, None])
            dp = _mm(do, tl.trans(v), UPCAST, PREC)
            ds = p * (dp - delta[:, None])
            dq += _mm(_cast(ds, k.dtype, UPCAST), k, UPCAST, PREC)

        if is_cand == 1:  # the own key: row-local terms (see the derivation above)
            qf = q.to(tl.float32)
            dof = do.to(tl.float32)
            s_own = tl.sum(qf * kc, 1) * (sm_scale * 1.4426950408889634)
            p_own = tl.where(row_ok, tl.exp2(s_own - lse), 0.0)
            ds_own = p_own * (tl.sum(dof * vc, 1) - delta)
            dq += ds_own[:, None] * kc
            dkc += ds_own[:, None] * qf
            dvc += p_own[:, None] * dof
            tl.store(DQC + rows, _cast(dq * sm_scale, DQC.dtype.element_ty, UPCAST),
                     mask=row_mask)
        else:
            tl.store(DQ + rows, _cast(dq * sm_scale, DQ.dtype.element_ty, UPCAST), mask=row_mask)

    if is_cand == 1:
        tl.store(DKC + own, _cast(dkc * sm_scale, DKC.dtype.element_ty, UPCAST), mask=row_mask)
        tl.store(DVC + own, _cast(dvc, DVC.dtype.element_ty, UPCAST), mask=row_mask)


# --------------------------------------------------------------------------- launcher


def _interpreting() -> bool:
    """Whether the kernels, and Triton's own jit functions, run in the CPU interpreter
    (decided when they were decorated)."""
    from triton.runtime.interpreter import InterpretedFunction

    return all(isinstance(f, InterpretedFunction) for f in (_fwd_kernel, tl.cdiv))


# GPU tiles (BLOCK_M, BLOCK_N, warps, stages) of 16-bit inputs, per target and kernel, for
# D <= 64 and for 64 < D <= 128, chosen from ptxas reports (tools/kernel_compile_check.py;
# docs/kernels-compile.md) as the largest tiles that spill no register with the heaviest
# flag set (causal, ALiBi, segments, padding), with grouped heads or not. The forward
# keeps 64 x 64 on 8 warps; the backward kernels hold two (BLOCK, D) fp32 accumulators (dk
# and dv, or dq and the candidates' own-key terms) and spilled at 64 x 64 (dkdv 1,008 B
# and dq 24-816 B on sm_80, dq 200-2,960 B on sm_90), so their tiles are narrower.
_GPU_TILES = {
    90: {"fwd": ((64, 64, 8, 3), (64, 64, 8, 3)), "dkdv": ((32, 64, 8, 3), (32, 64, 8, 3)),
         "dq": ((32, 64, 8, 3), (32, 32, 8, 3))},
    80: {"fwd": ((64, 64, 8, 3), (64, 64, 8, 3)), "dkdv": ((64, 32, 8, 3), (64, 32, 8, 3)),
         "dq": ((32, 64, 8, 3), (16, 64, 8, 3))},
}


def _target_arch(device: torch.device) -> int:
    """The GPU's compute capability as 80, 90, ...; the compile check stands in for it."""
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def _gpu_tiles(dtype: torch.dtype, block_d: int, arch: int, kernel: str) -> tuple:
    """(BLOCK_M, BLOCK_N, warps, stages) of one kernel on a GPU of compute capability
    `arch`: 16-bit inputs with D <= 128 take the tiles of `_GPU_TILES` (sm_90 and later:
    the sm_90 row; earlier: the sm_80 row); fp32 (IEEE products, for checking rather than
    speed) and D > 128 narrower tiles on two stages (docs/kernels-compile.md has what each
    spills)."""
    if dtype != torch.float32 and block_d <= 128:
        narrow, wide = _GPU_TILES[90 if arch >= 90 else 80][kernel]
        return narrow if block_d <= 64 else wide
    if arch >= 90 and block_d <= 64:  # fp32: 32 x 32 spills nothing on sm_90 up to D = 64
        return 32, 32, 8, 2
    return 16, 32, 8, 2  # fp32 wider heads, any D > 128: the narrowest tiles, two stages


def _config(q: Tensor, kernel: str = "fwd") -> dict:
    """Compile-time switches, tile sizes and launch options of one kernel ("fwd", "dkdv"
    or "dq") for q's device and dtype: on the CPU (the interpreter) 32 x 32 tiles with
    upcast products (see the module docstring), on a GPU those of `_gpu_tiles`."""
    d = q.size(-1)
    block_d = max(16, triton.next_power_of_2(d))
    upcast = q.device.type == "cpu"  # the interpreter: see the module docstring
    cfg = dict(UPCAST=upcast, PREC="ieee" if q.dtype == torch.float32 else "tf32",
               BLOCK_D=block_d)
    if upcast:
        return dict(cfg, BLOCK_M=32, BLOCK_N=32)
    block_m, block_n, warps, stages = _gpu_tiles(q.dtype, block_d, _target_arch(q.device),
                                                 kernel)
    # fused multiply-adds stated, not left to Triton's default (on in 3.9, off from 3.10):
    # the kernels were compiled and checked with them (tools/kernel_compile_check.py)
    return dict(cfg, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages,
                enable_fp_fusion=True)


def _is_dense(t: Tensor) -> bool:
    """Whether t's elements fill its storage span without gaps or overlaps: its strides,
    sorted, are those of some order of its dims laid out contiguously."""
    span = 1
    for stride, size in sorted((st, n) for st, n in zip(t.stride(), t.shape) if n != 1):
        if stride != span:
            return False
        span *= size
    return True


def _like(t: Tensor, ref: Tensor) -> Tensor:
    """t with ref's strides: the kernels take one set of strides per stride set (see
    `_strides`), so a tensor laid out otherwise (e.g. an incoming gradient) is copied;
    usually none is."""
    if t.stride() == ref.stride():
        return t
    return torch.empty_like(ref).copy_(t)


def _stride_set(*tensors: Tensor):
    """Tensors of one shape read through one set of strides: the first that is a dense
    (B, H, T, D) layout with unit stride along D (a permutation of a contiguous tensor,
    as the layers' split heads are) as it is, and every other laid out as it; when none
    is, the first is copied contiguous. `empty_like` of any of them has their strides."""
    ref = next((t for t in tensors if t.stride(-1) == 1 and _is_dense(t)), None)
    if ref is None:
        tensors = (tensors[0].contiguous(), *tensors[1:])
        ref = tensors[0]
    return [_like(t, ref) for t in tensors]


def _strides(q: Tensor, k: Tensor, q_c: Tensor, k_c: Tensor) -> Tuple[int, ...]:
    """(S_B, S_H, S_T, SK_B, SK_H, SK_T, SC_B, SC_H, SC_T, SKC_B, SKC_H, SKC_T): batch, head
    and row strides of the four stride sets, data queries (q, out, d_out, dq), data keys
    and values (k, v, dk, dv), candidate queries (q_c, out_c, d_out_c, dq_c) and
    candidate keys and values (k_c, v_c, dk_c, dv_c); the head dim is unit-stride in all.
    Keys and values have their own strides because they may have fewer heads."""
    return (*q.stride()[:3], *k.stride()[:3], *q_c.stride()[:3], *k_c.stride()[:3])


def _heads(q_c: Tensor, k: Tensor) -> Tuple[int, int]:
    """(H, G): query heads, and how many of them read each of the H / G key/value heads."""
    return q_c.size(1), q_c.size(1) // k.size(1)


def _forward(q, k, v, q_c, k_c, v_c, aux, flags, with_data: bool,
             head_dim: Optional[int] = None):
    """Run the forward kernel, one program per (query tile, batch row, query head).
    with_data=False serves the candidate rows alone (q is then only a donor of k's
    strides: no data query is read and no data output written).

    Returns (out or None, out_c, lse (B, H, N + M) base 2; data rows unset without data).
    """
    b, _, n, d = k.shape
    h, group = _heads(q_c, k)
    m = q_c.size(2)
    out = torch.empty_like(q) if with_data else None  # (B, H, N, D)
    out_c = torch.empty_like(q_c)  # (B, H, M, D)
    lse = torch.empty(b, h, n + m, device=k.device, dtype=torch.float32)
    cfg = _config(k, "fwd")
    data_tiles = triton.cdiv(n, cfg["BLOCK_M"])
    first = 0 if with_data else data_tiles
    tiles = (data_tiles - first) + triton.cdiv(m, cfg["BLOCK_M"])
    if n > 0 and tiles > 0:
        _fwd_kernel[(tiles, h, b)](q, k, v, q_c, k_c, v_c, *aux,
                                    out if with_data else out_c, out_c, lse,
                                    h, group, n, m, d, *_strides(q, k, q_c, k_c),
                                    (head_dim or d) ** -0.5,
                                    first, **flags, **cfg)
    elif n == 0:  # no data key: every candidate sees its own key alone
        out_c.unflatten(1, (h // group, group)).copy_(v_c.unsqueeze(2))  # (B, Hk, G, M, D)
    return out, out_c, lse


def _backward(q, k, v, q_c, k_c, v_c, out, out_c, lse, aux, flags, d_out, d_out_c,
              with_data: bool, head_dim: Optional[int] = None):
    """The six gradients (dq None without data); see the derivation above the kernels.
    Both kernels run one program per (tile, batch row, key/value head), looping over the
    group's query heads."""
    b, hk, n, d = k.shape
    h, group = _heads(q_c, k)
    m = q_c.size(2)
    d_out_c = _like(d_out_c, q_c)
    # delta = rowsum(dO * O) per query row, fp32, rows [data; candidates]
    delta_c = (d_out_c.float() * out_c.float()).sum(-1)  # (B, H, M)
    if with_data:
        d_out = _like(d_out, q)
        delta = torch.cat([(d_out.float() * out.float()).sum(-1), delta_c], dim=2)
    else:
        delta = torch.cat([delta_c.new_zeros(b, h, n), delta_c], dim=2)  # (B, H, N + M)
        d_out = d_out_c  # a placeholder the kernels never read
    dq = torch.empty_like(q) if with_data else None
    dk, dv = torch.empty_like(k), torch.empty_like(v)  # (B, Hk, N, D)
    dq_c, dk_c, dv_c = (torch.empty_like(t) for t in (q_c, k_c, v_c))
    scale = (head_dim or d) ** -0.5  # the true head dim's, whatever columns were padded
    strides = _strides(q, k, q_c, k_c)
    if n > 0:
        cfg = _config(k, "dkdv")
        _bwd_dkdv_kernel[(triton.cdiv(n, cfg["BLOCK_N"]), hk, b)](
            q, k, v, q_c, d_out, d_out_c, lse, delta, *aux, dk, dv, h, group, n, m, d,
            *strides[:9], scale,
            **flags, **cfg, WITH_DATA=with_data)
        cfg = _config(k, "dq")
        data_tiles = triton.cdiv(n, cfg["BLOCK_M"])
        first = 0 if with_data else data_tiles
        tiles = (data_tiles - first) + triton.cdiv(m, cfg["BLOCK_M"])
        if tiles > 0:
            _bwd_dq_kernel[(tiles, hk, b)](
                q, k, v, q_c, k_c, v_c, d_out, d_out_c, lse, delta, *aux,
                dq if with_data else dq_c, dq_c, dk_c, dv_c, h, group, n, m, d, *strides,
                scale, first, **flags, **cfg)
    else:  # no data key: every candidate sees its own key alone, out_c = v_c
        dq_c.zero_(), dk_c.zero_()
        # dv_c sums d_out_c over each key/value head's query heads
        dv_c.copy_(d_out_c.unflatten(1, (hk, group)).sum(2))
        if dq is not None:
            dq.zero_()
    return dq, dk, dv, dq_c, dk_c, dv_c


class _PairedAttentionTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, q_c, k_c, v_c, cand_pos, causal, slopes, alibi_code, seg, pad,
                head_dim):
        # one set of strides per stride set: q; k, v; q_c; k_c, v_c (no copy when the
        # layers' permuted views already agree, as they do)
        (q,), (k, v), (q_c,), (k_c, v_c) = (_stride_set(*ts) for ts in
                                             ((q,), (k, v), (q_c,), (k_c, v_c)))
        flags = dict(CAUSAL=causal, ALIBI=alibi_code, HAS_SEG=seg is not None,
                     HAS_PAD=pad is not None)
        aux = _aux_tensors(k, cand_pos, slopes, seg, pad)
        out, out_c, lse = _forward(q, k, v, q_c, k_c, v_c, aux, flags, with_data=True,
                                   head_dim=head_dim)
        ctx.save_for_backward(q, k, v, q_c, k_c, v_c, out, out_c, lse, *aux)
        ctx.flags, ctx.head_dim = flags, head_dim
        return out, out_c

    @staticmethod
    def backward(ctx, d_out, d_out_c):
        q, k, v, q_c, k_c, v_c, out, out_c, lse, *aux = ctx.saved_tensors
        grads = _backward(q, k, v, q_c, k_c, v_c, out, out_c, lse, aux, ctx.flags,
                          d_out, d_out_c, with_data=True, head_dim=ctx.head_dim)
        return (*grads, None, None, None, None, None, None, None)


class _CandidateAttentionTriton(torch.autograd.Function):
    """The candidate rows alone: the data query tiles are neither run nor stored."""

    @staticmethod
    def forward(ctx, q_c, k_c, v_c, k, v, cand_pos, causal, slopes, alibi_code, seg, pad,
                head_dim):
        (k, v), (q_c,), (k_c, v_c) = (_stride_set(*ts) for ts in ((k, v), (q_c,), (k_c, v_c)))
        flags = dict(CAUSAL=causal, ALIBI=alibi_code, HAS_SEG=seg is not None,
                     HAS_PAD=pad is not None)
        aux = _aux_tensors(k, cand_pos, slopes, seg, pad)
        _, out_c, lse = _forward(k, k, v, q_c, k_c, v_c, aux, flags, with_data=False,
                                 head_dim=head_dim)
        ctx.save_for_backward(q_c, k_c, v_c, k, v, out_c, lse, *aux)
        ctx.flags, ctx.head_dim = flags, head_dim
        return out_c

    @staticmethod
    def backward(ctx, d_out_c):
        q_c, k_c, v_c, k, v, out_c, lse, *aux = ctx.saved_tensors
        _, dk, dv, dq_c, dk_c, dv_c = _backward(k, k, v, q_c, k_c, v_c, None, out_c, lse, aux,
                                                ctx.flags, None, d_out_c, with_data=False,
                                                head_dim=ctx.head_dim)
        return dq_c, dk_c, dv_c, dk, dv, None, None, None, None, None, None, None


def _head_padding(d: int, device: torch.device) -> int:
    """Zero columns that make a GPU head dim a multiple of 16: at other head dims every
    kernel spills registers (D = 72: 24-1,304 B, while D = 80 spills none;
    docs/kernels-compile.md). Zero columns add nothing to q . k and give zero output
    columns, which are cut off; the scale stays that of the true D. The CPU interpreter
    takes D as it is."""
    return 0 if device.type == "cpu" or d % 16 == 0 else 16 - d % 16


def _padded(tensors, extra: int) -> List[Tensor]:
    """The tensors with `extra` zero columns on the head dim (differentiable: the
    gradients of the real columns pass through)."""
    return [F.pad(t, (0, extra)) for t in tensors] if extra else list(tensors)


def _aux_tensors(q: Tensor, cand_pos: Tensor, slopes, seg, pad) -> Tuple[Tensor, ...]:
    """(cand_pos, segment_ids, padding, slopes) as the kernels read them; a 1-element
    placeholder where a tensor is absent or empty (the kernel never reads it)."""
    dummy = torch.zeros(1, device=q.device, dtype=torch.int32)
    cp = cand_pos.to(torch.int32).contiguous() if cand_pos.numel() > 0 else dummy
    seg_t = seg.to(torch.int32).contiguous() if seg is not None and seg.numel() > 0 else dummy
    pad_t = pad.to(torch.int8).contiguous() if pad is not None and pad.numel() > 0 else dummy
    slopes_t = (slopes.to(device=q.device, dtype=torch.float32).contiguous()
                if slopes is not None else dummy.float())
    return cp, seg_t, pad_t, slopes_t


# --------------------------------------------------------------------------- public


_GRID_AXIS_LIMIT = 65_535  # CUDA's grid axes 1 and 2 (heads, batch rows)


def _check(q: Tensor, layout: PairedLayout, dropout_p: float) -> int:
    """Refuse what the kernels do not do; return the ALiBi code."""
    if dropout_p > 0.0:
        raise NotImplementedError("paired_attention_triton: attention dropout is not "
                                  "implemented; use backend='reference' for dropout_p > 0")
    if q.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"paired_attention_triton: dtype {q.dtype} is not supported "
                         f"(float32, bfloat16, float16); use backend='reference'")
    if q.size(0) > _GRID_AXIS_LIMIT or q.size(1) > _GRID_AXIS_LIMIT:
        raise ValueError(f"paired_attention_triton: {q.size(0)} batch rows x {q.size(1)} heads: "
                         f"a GPU grid axis holds {_GRID_AXIS_LIMIT} of each; split the batch")
    if q.device.type == "cpu" and not _interpreting():
        raise ValueError("paired_attention_triton: CPU tensors need the Triton interpreter "
                         "(TRITON_INTERPRET=1 set before triton is first imported)")
    return _ALIBI_CODES[layout.alibi.mode] if layout.alibi is not None else 0


def _layout_args(layout: PairedLayout) -> tuple:
    slopes = layout.alibi.slopes if layout.alibi is not None else None
    return (layout.cand_pos, layout.causal, slopes, layout.segment_ids,
            layout.key_padding_mask)


def paired_attention_triton(q: Tensor, k: Tensor, v: Tensor, q_c: Tensor, k_c: Tensor,
                            v_c: Tensor, layout: PairedLayout,
                            dropout_p: float = 0.0) -> Tuple[Tensor, Tensor]:
    """(B, H, N, D) data and (B, H, M, D) candidates, keys and values with H or Hk heads
    -> (out, out_c), as `paired_attention_reference` (inputs assumed checked by
    `paired_attention`)."""
    code = _check(q, layout, dropout_p)
    cand_pos, causal, slopes, seg, pad = _layout_args(layout)
    d = q.size(-1)
    extra = _head_padding(d, q.device)
    q, k, v, q_c, k_c, v_c = _padded((q, k, v, q_c, k_c, v_c), extra)
    out, out_c = _PairedAttentionTriton.apply(q, k, v, q_c, k_c, v_c, cand_pos, causal,
                                              slopes, code, seg, pad, d)
    return (out[..., :d], out_c[..., :d]) if extra else (out, out_c)


def candidate_attention_triton(q_c: Tensor, k_c: Tensor, v_c: Tensor, k: Tensor, v: Tensor,
                               layout: PairedLayout, dropout_p: float = 0.0) -> Tensor:
    """The candidate rows of `paired_attention_triton` alone: (B, H, M, D), with
    gradients to q_c, k_c, v_c, k, v (as `candidate_attention_reference`; k_c, v_c, k, v
    with H or Hk heads)."""
    code = _check(k, layout, dropout_p)
    cand_pos, causal, slopes, seg, pad = _layout_args(layout)
    d = q_c.size(-1)
    extra = _head_padding(d, q_c.device)
    q_c, k_c, v_c, k, v = _padded((q_c, k_c, v_c, k, v), extra)
    out_c = _CandidateAttentionTriton.apply(q_c, k_c, v_c, k, v, cand_pos, causal, slopes,
                                            code, seg, pad, d)
    return out_c[..., :d] if extra else out_c
