"""The energy head of a residual energy-based LM (docs/methods.md section 4).

    E(token, context) = w . h_token + b                                   (linear, default)
                      + a * log q(token) + h_context . (W h_token)          (rich, a flag)

`h_token` is the final (normed) state at the position where the scored token is the
input; `h_context` the state whose LM head proposed it; `log q(token)` the detached
LM log-probability of the scored token. Every parameter starts at zero, so a model that
never trains its energy head has E = 0 and its ELM equals its LM. Energies are fp32
(float64 in a float64 model).
"""

from typing import Optional

import torch
from torch import Tensor, nn

ENERGY_HEAD_CHOICES = ("linear", "rich")


class EnergyHead(nn.Module):
    def __init__(self, dim: int, kind: str = "linear"):
        super().__init__()
        if kind not in ENERGY_HEAD_CHOICES:
            raise ValueError(f"unknown energy head {kind!r}; choose one of "
                             f"{', '.join(ENERGY_HEAD_CHOICES)}")
        self.kind = kind
        self.proj = nn.Linear(dim, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        if kind == "rich":
            self.log_q_weight = nn.Parameter(torch.zeros(()))
            self.bilinear = nn.Linear(dim, dim, bias=False)
            nn.init.zeros_(self.bilinear.weight)

    @property
    def needs_context(self) -> bool:
        return self.kind == "rich"

    def forward(self, state: Tensor, context: Optional[Tensor] = None,
                log_q: Optional[Tensor] = None) -> Tensor:
        """state, context: (..., d); log_q: (...). Returns E: (...) fp32 (float64 for a
        float64 model, so that exactness tests see exact arithmetic)."""
        acc = torch.promote_types(state.dtype, torch.float32)
        energy = self.proj(state).squeeze(-1).to(acc)
        if self.kind == "rich":
            if context is None or log_q is None:
                raise ValueError("the rich energy head needs the context state and log q")
            energy = energy + self.log_q_weight.to(acc) * log_q.detach().to(acc)
            energy = energy + (context * self.bilinear(state)).sum(-1).to(acc)
        return energy

    def extra_repr(self) -> str:
        return f"kind={self.kind}"
