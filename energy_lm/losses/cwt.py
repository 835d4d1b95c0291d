"""Contrastive weight tying (CWT, "headless" LMs; docs/methods.md section 3) as pure functions.

Each final state h_n must pick out the input embedding of its own target among the
embeddings of the batch's targets (in-batch negatives), with raw dot products, tau = 1:

    s_{n,k} = h_n . e_{c_k}          c: the candidate tokens
    loss_n  = -log softmax_k(s_{n,.})[label_n]

- Without de-duplication (the original) the candidates are the N targets themselves,
  repeats included (a repeated token is its own negative), and label_n = n.
- With de-duplication the candidates are the U distinct targets, label_n the index of
  t_n among them.

Only the U (or N) needed embedding rows are gathered: no (N, V) score matrix and no
V-sized matmul is ever formed, so the cost is O(N * U * d) instead of O(N * V * d).
The rows are not detached: gradients reach the embedding matrix (only its gathered
rows get a nonzero gradient). Computed as a cross-entropy over fp32 logits (stable,
never a raw exp); bf16/fp16 inputs are upcast, float64 stays float64. No host syncs
except `torch.unique` under `dedup=True` (its output size depends on the data).
"""

from typing import Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from energy_lm.losses.energy import compute_dtype

_REDUCTIONS = ("none", "sum")


def cwt_candidates(targets: Tensor, dedup: bool = False) -> Tuple[Tensor, Tensor]:
    """Candidate token ids and the label of each position among them.

    Args:
        targets: (N,) token ids.
    Returns:
        candidates (U,) (U = N without dedup: the targets themselves), labels (N,) long.
    """
    if dedup:
        return torch.unique(targets, return_inverse=True)  # (U,) sorted, (N,)
    return targets, torch.arange(targets.numel(), device=targets.device)


def cwt_loss_from_rows(hidden: Tensor, rows: Tensor, labels: Tensor,
                       reduction: str = "none") -> Tuple[Tensor, Tensor]:
    """CWT loss given the candidates' embedding rows already gathered.

        logits = h @ rows.T  (N, U), fp32;   loss_n = cross_entropy(logits_n, labels_n)

    Gradient (p = softmax(logits), y = one_hot(labels)):
        d loss_n / d h_n   = sum_k (p_{n,k} - y_{n,k}) rows_k
        d loss   / d rows_k = sum_n (p_{n,k} - y_{n,k}) h_n
    and the gather that produced `rows` adds the row gradients into the embedding
    matrix (summed over repeated tokens).

    Args:
        hidden: (N, d) final states; rows: (U, d) candidate embeddings; labels: (N,)
            index of each position's own candidate in [0, U).
        reduction: "none" (per position) or "sum".
    Returns:
        loss: (N,) or () fp32 (float64 for float64 input);
        correct: (N,) bool or () long count: the own candidate scores highest. Ties count
            as correct, so a repeated token (identical rows) is not marked wrong.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if hidden.dim() != 2 or rows.dim() != 2 or hidden.size(1) != rows.size(1):
        raise ValueError(f"expected hidden (N, d) and rows (U, d), got {tuple(hidden.shape)} "
                         f"and {tuple(rows.shape)}")
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"expected labels ({hidden.size(0)},), got {tuple(labels.shape)}")
    dtype = compute_dtype(hidden, rows)
    logits = hidden.to(dtype) @ rows.to(dtype).T  # (N, U)
    loss = F.cross_entropy(logits, labels, reduction=reduction)
    with torch.no_grad():
        own = logits.gather(1, labels.unsqueeze(1)).squeeze(1)  # (N,)
        correct = own >= logits.amax(dim=1) if logits.size(1) else own.bool()
    if reduction == "sum":
        correct = correct.sum()
    return loss, correct


def cwt_loss(hidden: Tensor, targets: Tensor, embedding_weight: Tensor, dedup: bool = False,
             reduction: str = "none",
             return_correct: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """CWT loss against the input embedding matrix.

        loss_n = -log [ exp(h_n . E[t_n]) / sum_k exp(h_n . E[c_k]) ]

    Args:
        hidden: (N, d) final states at the trained positions.
        targets: (N,) their target token ids.
        embedding_weight: (V, d) the input embedding matrix, not detached.
        dedup: candidates are the distinct targets instead of all N targets.
        reduction: "none" -> (N,), "sum" -> ().
        return_correct: also return `correct` as in `cwt_loss_from_rows`.
    Returns:
        loss, or (loss, correct) with `return_correct`.
    """
    if targets.dim() != 1 or embedding_weight.dim() != 2:
        raise ValueError(f"expected targets (N,) and embedding_weight (V, d), got "
                         f"{tuple(targets.shape)} and {tuple(embedding_weight.shape)}")
    candidates, labels = cwt_candidates(targets, dedup)
    rows = embedding_weight.index_select(0, candidates)  # (U, d): gather, no V-sized op
    loss, correct = cwt_loss_from_rows(hidden, rows, labels, reduction)
    return (loss, correct) if return_correct else loss
