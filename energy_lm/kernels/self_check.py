"""A fused backend checks itself before `auto` relies on it.

The first time `auto` would run a fused backend (per process, for one device, dtype and
head-dim class), a small problem runs through it and through the exact reference:
causal with causal ALiBi and candidates at p = N, and bidirectional with symmetric
ALiBi, both with packed documents and key padding, with 2 query heads on 2 key/value
heads and, for a backend that declares grouped heads, again with 4 query heads on 2
(every call then runs on a checked kernel, whichever heads it has); the forward outputs
and the gradients of all six inputs, of the full call and of the candidates-only call a
model makes. The backend is used only if all of them agree within the kernel tests'
tolerances (tests/kernels/test_paired_triton.py):
  fp32:       |x - exact| <= 2e-5 + 1e-4 |exact| elementwise, exact = the reference in fp64;
  bf16, fp16: max |x - exact| <= 2 x the reference's own max error in that precision
              + eps / 4 x max |exact| + 1e-6.
Otherwise `auto` logs one warning with the measured error and runs the reference for
that class from then on. ENERGY_LM_SKIP_KERNEL_CHECK=1 trusts the backend unchecked.
"""

import itertools
import logging
import os
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor

from energy_lm.kernels import backends
from energy_lm.kernels.alibi import alibi_slopes
from energy_lm.kernels.layout import Alibi, PairedLayout
from energy_lm.kernels.reference import candidate_attention_reference, paired_attention_reference

logger = logging.getLogger("energy_lm.kernels")

SKIP_ENV = "ENERGY_LM_SKIP_KERNEL_CHECK"
_NAMES = ["out", "out_c", "dq", "dk", "dv", "dq_c", "dk_c", "dv_c"]
_verdicts: Dict[tuple, bool] = {}


def head_dim_class(head_dim: int) -> int:
    """Kernels tile the head dimension by powers of two: D is checked as its class."""
    return 1 << max(head_dim - 1, 0).bit_length()


def _case(causal: bool, head_dim: int, device: torch.device, heads: int = 2,
          kv_heads: int = 2):
    """A check problem: heads query heads reading kv_heads key/value heads."""
    g = torch.Generator().manual_seed(20261130)
    b, h, n, m = 2, heads, 19, 11
    cand_pos = torch.randint(0, n, (b, m), generator=g)
    cand_pos[:, 0], cand_pos[:, -1] = 0, n if causal else n - 1
    six = [torch.randn(b, hh, length, head_dim, generator=g)
           for hh, length in ((h, n), (kv_heads, n), (kv_heads, n), (h, m), (kv_heads, m),
                              (kv_heads, m))]
    upstream = (torch.randn(b, h, n, head_dim, generator=g),
                torch.randn(b, h, m, head_dim, generator=g))
    layout = PairedLayout.build(
        cand_pos.to(device), n, causal=causal,
        alibi=Alibi(alibi_slopes(h).to(device), "causal" if causal else "symmetric"),
        segment_ids=(torch.rand(b, n, generator=g) < 0.2).cumsum(1).to(device),
        key_padding_mask=(torch.rand(b, n, generator=g) < 0.2).to(device))
    return six, layout, upstream


def _run(fn: Callable, candidates_only: bool, six, layout: PairedLayout, upstream,
         dtype: torch.dtype) -> List[Tensor]:
    """Outputs and gradients (the 8 of `_NAMES`; the candidates-only call has no data
    output and no data-query gradient, so those are returned as zeros)."""
    leaves = [t.to(device=layout.cand_pos.device, dtype=dtype).requires_grad_() for t in six]
    if candidates_only:
        q, k, v, q_c, k_c, v_c = leaves
        out, out_c = None, fn(q_c, k_c, v_c, k, v, layout)
    else:
        out, out_c = fn(*leaves, layout)
    loss = (out_c.double() * upstream[1].to(out_c.device).double()).sum()
    if out is not None:
        loss = loss + (out.double() * upstream[0].to(out.device).double()).sum()
    grads = torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
    if out is None:
        out = torch.zeros_like(leaves[0])
    return [x.detach().double() for x in (out, out_c, *grads)]


def _worst(got: List[Tensor], exact: List[Tensor], lowp: Optional[List[Tensor]],
           dtype: torch.dtype) -> Optional[str]:
    """None when every tensor agrees, else what disagrees most (name, error, allowed)."""
    for name, x, ref in zip(_NAMES, got, exact):
        err = (x - ref).abs()
        if lowp is None:  # fp32
            bad = err > 2e-5 + 1e-4 * ref.abs()
            if bool(bad.any()):
                return f"{name}: max error {float(err.max()):.3g} (allowed 2e-5 + 1e-4 |x|)"
        else:
            own = float((lowp[_NAMES.index(name)] - ref).abs().max()) if ref.numel() else 0.0
            scale = float(ref.abs().max()) if ref.numel() else 0.0
            allowed = 2 * own + torch.finfo(dtype).eps / 4 * scale + 1e-6
            if ref.numel() and float(err.max()) > allowed:
                return f"{name}: max error {float(err.max()):.3g} (allowed {allowed:.3g})"
    return None


def measure(full_fn: Callable, candidates_fn: Optional[Callable], device: torch.device,
            dtype: torch.dtype, head_dim: int, grouped: bool = False) -> Optional[str]:
    """None if the backend agrees with the reference on the check problems (grouped:
    those with grouped heads too), else a description of its worst disagreement."""
    heads = [(2, 2), (4, 2)] if grouped else [(2, 2)]
    with torch.enable_grad(), torch.autocast(device.type, enabled=False):
        for (h, kv_heads), causal in itertools.product(heads, (True, False)):
            six, layout, upstream = _case(causal, head_dim, device, h, kv_heads)
            calls = [(full_fn, paired_attention_reference, False)]
            if candidates_fn is not None:
                calls.append((candidates_fn, candidate_attention_reference, True))
            for fn, reference, candidates_only in calls:
                exact = _run(reference, candidates_only, six, layout, upstream, torch.float64)
                lowp = (None if dtype == torch.float32 else
                        _run(reference, candidates_only, six, layout, upstream, dtype))
                got = _run(fn, candidates_only, six, layout, upstream, dtype)
                worst = _worst(got, exact, lowp, dtype)
                if worst:
                    kind = "candidates-only call" if candidates_only else "full call"
                    if h != kv_heads:
                        kind += f" ({h} query heads on {kv_heads} key/value heads)"
                    return f"{'causal' if causal else 'bidirectional'} {kind}, {worst}"
    return None


def backend_agrees(name: str, full_fn: Callable, candidates_fn: Optional[Callable],
                   device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """The verdict for (backend, device, dtype, head-dim class), measured once (with
    grouped heads too when the registered backend declares them)."""
    key = (name, device.type, device.index, dtype, head_dim_class(head_dim))
    if key not in _verdicts:
        if os.environ.get(SKIP_ENV) == "1":
            _verdicts[key] = True
        else:
            try:
                grouped = name in backends.BACKENDS and backends.get(name).grouped_heads
                problem = measure(full_fn, candidates_fn, device, dtype, head_dim, grouped)
            except Exception as err:  # a kernel that fails to compile or launch
                problem = f"it raised {type(err).__name__}: {err}"
            _verdicts[key] = problem is None
            if problem is None:
                logger.info("paired_attention: the %s backend agrees with the reference "
                            "(%s, %s, head dim class %d)", name, device, dtype, key[-1])
            else:
                logger.warning("paired_attention: the %s backend disagrees with the exact "
                               "reference on %s %s (head dim class %d): %s; running the "
                               "reference instead (%s=1 skips this check)", name, device,
                               dtype, key[-1], problem, SKIP_ENV)
    return _verdicts[key]
