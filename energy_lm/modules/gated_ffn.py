"""The gated feed-forward input of Llama-family models (SwiGLU with a SiLU gate):
act(gate(x)) * up(x), in place of fairseq's fc1 followed by its activation.

fairseq's decoder layer computes fc2(dropout(activation(fc1(x)))); a `GatedProjection`
as fc1, with the layer's activation set to the identity, gives
fc2(dropout(act(gate(x)) * up(x))) without copying the layer's forward. The parameters
are fc1.gate and fc1.up (gate_proj and up_proj of transformers' Llama); fc2 is
down_proj.
"""

from typing import Callable

from torch import Tensor, nn


class GatedProjection(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, activation: Callable[[Tensor], Tensor],
                 bias: bool = False):
        super().__init__()
        self.gate = nn.Linear(in_dim, out_dim, bias=bias)
        self.up = nn.Linear(in_dim, out_dim, bias=bias)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.gate(x)) * self.up(x)


def identity(x: Tensor) -> Tensor:
    return x
