"""The energy heads of a residual energy-based LM (docs/methods.md section 4).

    seed (default):    E = (F n(r_ctx) + log q(tok) a_f) . (B n(r_tok) + log q(tok) a_b) / sqrt(d)
    linear:            E = w . h_tok + b
    rich:              E = w . h_tok + b + a * log q(tok) + h_ctx . (W h_tok) / d

`h_tok` is the final (normed) state at the position where the scored token is the
input; `h_ctx` the state whose LM head proposed it; `log q(tok)` the detached LM
log-probability of the scored token. The seed head is the one the MonArc seed's code
computes (not the linear head its README describes): `r` are the trunk's final states
*before* the LM's final norm (the same as the final states in a post-norm model), `n` a
LayerNorm of the head's own, F and B d x d with biases, a_f, a_b in R^d.

Every head starts with E = 0, so a model that never trains its energy head has ELM = LM:
linear and rich start with all parameters zero; the seed head, as the seed's code, with
F's weight and bias and a_f zero (the context factor is 0) and B ~ N(0, 0.02), so that
F's first gradient is not zero. The rich head's bilinear term is scaled by 1/d: a
zero-started d x d term that Adam moves by about lr per entry per update changes E by up
to lr * d^2 * scale per update; unscaled it diverged (z 16 within 5 updates), and at
1/sqrt(d) it still swung z from 3.9 to 0.35 and lost the LM 0.13 bits in the first 15
updates of an adaptation at lr 1e-3 with no warmup; at 1/d, z stays in [0.92, 1.09] and
the LM loss never rises above its start (tests/e2e/test_energy_head_stability.py, issue 20).
Energies are fp32 (float64 in a float64 model).
"""

import math
from typing import Optional

import torch
from torch import Tensor, nn

ENERGY_HEAD_CHOICES = ("linear", "rich", "seed")
# log q of a token the LM cannot propose (padding in a scored slot, a symbol an imported
# model masks: `--output-mask specials`) is the dtype's lowest value; the heads that read
# log q floor it here, so that E stays finite (measured: an imported GPT-2's padded
# validation batch gave E = nan without it). Real log-probabilities are far above it.
LOG_Q_FLOOR = -1e4


class EnergyHead(nn.Module):
    def __init__(self, dim: int, kind: str = "linear"):
        super().__init__()
        if kind not in ENERGY_HEAD_CHOICES:
            raise ValueError(f"unknown energy head {kind!r}; choose one of "
                             f"{', '.join(ENERGY_HEAD_CHOICES)}")
        self.kind = kind
        self.dim = dim
        self.scale = 1.0 / math.sqrt(dim)  # the seed head's, as the seed's code
        self.bilinear_scale = 1.0 / dim      # the rich head's (see the module docstring)
        if kind in ("linear", "rich"):
            self.proj = nn.Linear(dim, 1)
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)
        if kind == "rich":
            self.log_q_weight = nn.Parameter(torch.zeros(()))
            self.bilinear = nn.Linear(dim, dim, bias=False)
            nn.init.zeros_(self.bilinear.weight)
        if kind == "seed":
            self.state_norm = nn.LayerNorm(dim)
            self.context_proj = nn.Linear(dim, dim)  # F
            self.token_proj = nn.Linear(dim, dim)    # B
            self.context_log_q = nn.Parameter(torch.zeros(dim))  # a_f
            self.token_log_q = nn.Parameter(torch.zeros(dim))    # a_b
            nn.init.zeros_(self.context_proj.weight)
            nn.init.zeros_(self.context_proj.bias)
            nn.init.normal_(self.token_proj.weight, std=0.02)
            nn.init.zeros_(self.token_proj.bias)

    @property
    def needs_context(self) -> bool:
        """The head reads the context state and log q of the scored token."""
        return self.kind in ("rich", "seed")

    @property
    def reads_pre_norm(self) -> bool:
        """The head reads the trunk's states before the LM's final norm."""
        return self.kind == "seed"

    def forward(self, state: Tensor, context: Optional[Tensor] = None,
                log_q: Optional[Tensor] = None) -> Tensor:
        """state, context: (..., d) (they broadcast); log_q: (...). Returns E: (...) fp32
        (float64 for a float64 model, so that exactness tests see exact arithmetic)."""
        acc = torch.promote_types(state.dtype, torch.float32)
        if self.needs_context and (context is None or log_q is None):
            raise ValueError(f"the {self.kind} energy head needs the context state and log q")
        if log_q is not None:
            log_q = log_q.detach().clamp_min(LOG_Q_FLOOR)
        if self.kind == "seed":
            lq = log_q.to(state.dtype).unsqueeze(-1)
            ctx = self.context_proj(self.state_norm(context)) + lq * self.context_log_q
            tok = self.token_proj(self.state_norm(state)) + lq * self.token_log_q
            return (ctx * tok).sum(-1).to(acc) * self.scale
        energy = self.proj(state).squeeze(-1).to(acc)
        if self.kind == "rich":
            energy = energy + self.log_q_weight.to(acc) * log_q.detach().to(acc)
            energy = energy + (context * self.bilinear(state)).sum(-1).to(acc) * \
                self.bilinear_scale
        return energy

    def initial_state(self) -> dict:
        """The state of a newly built head of this kind and size (E = 0): what a
        checkpoint without this head loads (whatever this instance holds now)."""
        fresh = EnergyHead(self.dim, self.kind)
        return {k: v.to(p.dtype) for (k, v), p in zip(fresh.state_dict().items(),
                                                      self.state_dict().values())}

    def extra_repr(self) -> str:
        return f"kind={self.kind}"
