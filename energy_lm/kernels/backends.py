"""The paired-attention backends, each one entry that declares what it supports.

Every backend computes the same thing (docs/methods.md section 6) through one
signature, written here once:

    full(q, k, v, q_c, k_c, v_c, layout, dropout_p) -> (out, out_c)
    candidates(q_c, k_c, v_c, k, v, layout, dropout_p) -> out_c     (optional)

q, k, v (B, H, N, D) data stream, q_c, k_c, v_c (B, H, M, D) candidates (a backend that
declares `grouped_heads` also takes keys and values with Hk heads, Hk dividing H: query
head h reads key/value head h // (H / Hk)), `layout` an
`energy_lm.kernels.layout.PairedLayout` (validated), inputs already checked against it by
`energy_lm.kernels.paired_attention`. `candidates` serves the candidate rows alone (a
model's candidate stage, whose data stream ran already); a backend without it runs in
full and drops the data output. A backend keeps what it derives from the layout (masks)
with `layout.derived`. A new backend is one `register(Backend(...))`.
"""

import importlib.util
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from energy_lm.kernels.layout import LayoutError, PairedLayout
from energy_lm.kernels.reference import candidate_attention_reference, paired_attention_reference


@dataclass(frozen=True)
class Backend:
    name: str
    full: Callable[..., Tuple[Tensor, Tensor]]
    candidates: Optional[Callable[..., Tensor]] = None
    # what "auto" may run it on (empty: auto never picks it) and what it cannot do
    auto_device_types: Tuple[str, ...] = ()
    auto_dtypes: Tuple[torch.dtype, ...] = ()
    dropout: bool = True
    grouped_heads: bool = False  # keys/values with fewer heads than the queries (GQA)
    max_head_dim: Optional[int] = None  # the widest head it holds (None: any)
    requires: Optional[str] = None  # a module that must be importable


BACKENDS: Dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    BACKENDS[backend.name] = backend
    return backend


def get(name: str) -> Backend:
    if name not in BACKENDS:
        raise LayoutError(f"unknown backend {name!r}; choose one of "
                          f"{', '.join(['auto', *BACKENDS])}")
    return BACKENDS[name]


def names() -> Tuple[str, ...]:
    """The backends one may ask for by name (besides "auto")."""
    return tuple(BACKENDS)


def check_name(name: str, flag: str) -> None:
    """One line when a flag names no backend (a criterion's --attention-backend,
    generation's --sir-attention-backend)."""
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"{flag} must be one of auto, {', '.join(BACKENDS)}; got {name!r}")


def auto_choice(device_type: str, dtype: torch.dtype, dropout_p: float,
                grouped: bool = False, head_dim: int = 0) -> Tuple[str, str]:
    """(backend, why) that "auto" stands for: the first backend that declares it runs
    these tensors, else the exact reference (CPU, float64, attention dropout, grouped
    heads a kernel lacks, a backend whose module is missing)."""
    why = f"{device_type} tensors"
    for backend in BACKENDS.values():
        if device_type not in backend.auto_device_types:
            continue
        if dtype not in backend.auto_dtypes:
            why = f"{dtype} is not a {backend.name.capitalize()} kernel dtype"
        elif dropout_p > 0.0 and not backend.dropout:
            why = f"attention dropout (the {backend.name.capitalize()} kernel has none)"
        elif backend.max_head_dim is not None and head_dim > backend.max_head_dim:
            why = (f"head dim {head_dim} > {backend.max_head_dim} (the {backend.name.capitalize()} "
                   f"kernel's widest)")
        elif grouped and not backend.grouped_heads:
            why = f"grouped key/value heads (the {backend.name.capitalize()} kernel has none)"
        elif backend.requires and importlib.util.find_spec(backend.requires) is None:
            why = f"{backend.requires} is not installed"
        else:
            return backend.name, f"{device_type.upper()} tensors"
    return "reference", why


# --- the shipped backends -----------------------------------------------------------

# Triton is imported on first use: it reads TRITON_INTERPRET (the CPU interpreter) when
# the kernels are decorated, so importing it with the package would fix that choice
def _triton(*args):
    from energy_lm.kernels.triton_paired import paired_attention_triton

    return paired_attention_triton(*args)


def _triton_candidates(*args):
    from energy_lm.kernels.triton_paired import candidate_attention_triton

    return candidate_attention_triton(*args)


def _flex(*args):
    from energy_lm.kernels.flex_paired import paired_attention_flex

    return paired_attention_flex(*args)


register(Backend("reference", paired_attention_reference, candidate_attention_reference,
                 grouped_heads=True))
# max_head_dim: wider heads exceed a GPU's shared memory (fp32 D = 320: 397,568 B on
# sm_80, limit 166,912; tools/kernel_compile_check.py)
register(Backend("triton", _triton, _triton_candidates, auto_device_types=("cuda",),
                 auto_dtypes=(torch.float32, torch.bfloat16, torch.float16), dropout=False,
                 grouped_heads=True, max_head_dim=256, requires="triton"))
# FlexAttention: forward only on the CPU (torch 2.13); not chosen by auto (not yet run
# on a GPU)
register(Backend("flex", _flex, dropout=False, grouped_heads=True))

__all__ = ["Backend", "BACKENDS", "PairedLayout", "auto_choice", "check_name", "get", "names",
           "register"]
