"""What scoring and generation need from a model, and the one check of it.

Both families (`energy_lm.models`: the causal `transformer_lm_energy` and the masked
`roberta_energy`) implement `EnergyLM`; every tool of this room takes any object that
does, and none imports a model class. `require` is the one capability check: the tools
(criterions, energy-lm-eval-elm, fill-mask, the harness, SIR generation) call it with
what they need and raise its one line.
"""

from typing import Optional, Protocol, runtime_checkable

from torch import Tensor

CAUSAL, MASKED = "causal", "masked"

NEEDS = ("energy", CAUSAL, MASKED)  # what a tool may ask for
ARCH_HINT = "an energy_lm arch such as transformer_lm_clap_tiny or roberta_clap_tiny"


@runtime_checkable
class EnergyLM(Protocol):
    """A residual energy-based LM as scoring and generation use it."""

    energy_family: str  # CAUSAL or MASKED

    @property
    def trunk(self):
        """The encoder/decoder: embed_tokens, padding_idx, layers, attention_pattern,
        max_positions(), candidate_features(), final_states()."""

    @property
    def energy_head(self):
        """The energy head: needs_context, reads_pre_norm, called as
        head(states, context, log_q) -> energies."""

    def output_layer(self, features: Tensor) -> Tensor:
        """The proposal's logits of final states."""

    def paired_pass(self, src_tokens: Tensor, segment_ids: Optional[Tensor] = None, *,
                    backend: str = "auto", sample_keys=None):
        """One batch's paired forward (energy_lm.modules.paired_pass.PairedPass)."""

    def candidate_features(self, paired, src_tokens: Tensor, cand_tokens: Tensor,
                           cand_pos: Tensor, pre_norm: bool = False) -> Tensor:
        """The candidate stream's states (B, M, C) after the data stream was recorded."""


def family(model) -> Optional[str]:
    """CAUSAL or MASKED for an energy LM (through fairseq's distributed wrapper too,
    which forwards attribute reads); None for any other model."""
    return getattr(model, "energy_family", None)


def is_masked_model(model) -> bool:
    """A masked (RoBERTa-family) model rather than a causal LM; stock fairseq RoBERTa
    included (its encoder has a sentence_encoder)."""
    return family(model) == MASKED or (
        family(model) is None and hasattr(getattr(model, "encoder", None), "sentence_encoder"))


def missing(model, *needs: str) -> Optional[str]:
    """Why model cannot serve needs (a phrase), or None when it can."""
    unknown = [n for n in needs if n not in NEEDS]
    if unknown:
        raise ValueError(f"unknown capability {unknown[0]!r}; one of {', '.join(NEEDS)}")
    name = type(model).__name__
    if "energy" in needs and family(model) is None:
        return f"{name} has no energy head (not an energy_lm model)"
    if CAUSAL in needs and is_masked_model(model):
        return f"{name} is a masked LM"
    if MASKED in needs and not is_masked_model(model):
        return f"{name} is not a masked LM"
    if "energy" in needs:
        return model.candidate_stream_problem()
    return None


def require(model, *needs: str, user: str, error=ValueError) -> None:
    """Raise error(one line) unless model serves every need; user names what asks
    (a flag, a tool), e.g. require(model, "energy", user="--criterion monarc")."""
    why = missing(model, *needs)
    if why is None:
        return
    kind = next((n for n in needs if n in (CAUSAL, MASKED)), None)
    if "energy" in needs:
        wanted = (f"a {kind + ' ' if kind else ''}model with a candidate stream and an "
                  f"energy head ({ARCH_HINT})")
    else:
        wanted = f"a {kind} LM"
    raise error(f"{user} needs {wanted}; {why}")
