"""What one energy pass returns, for either family."""

from dataclasses import dataclass

from torch import Tensor


@dataclass
class EnergyOutput:
    """One energy pass of either family, in the layout of its scored slots S: a causal
    pass scores the same positions p in every row (`causal_energy_pass`), a masked pass
    each row's masked positions, left-aligned (`masked_energy_pass`)."""
    positions: Tensor    # (B, S) int64: the input position each slot scores
    scored: Tensor       # (B, S) bool: a real token (not padding, not an empty slot)
    tokens: Tensor       # (B, S) the data token scored there (pad where not scored)
    logits: Tensor       # (B, S, V) the LM's proposal for that token (causal position 0,
                         # which has none: zeros, a uniform q)
    logsumexp: Tensor    # (B, S) fp32 logsumexp of logits, with its graph: log q(y) =
                         # logits[y] - logsumexp (the LM's cross-entropy reads it)
    energy: Tensor       # (B, S) fp32: E(x | its context)
    cand_tokens: Tensor  # (B, K, S)
    cand_energy: Tensor  # (B, K, S) fp32: E(y | the same context)
