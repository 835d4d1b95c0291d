"""What a Hugging Face config asks for that energy_lm's architectures cannot represent,
named by its config field: one line, before anything is written."""

from typing import List

from energy_lm.hf.errors import BridgeError

SUPPORTED = {"GPT2LMHeadModel": "gpt2", "LlamaForCausalLM": "llama",
             "Qwen2ForCausalLM": "llama", "StableLmForCausalLM": "llama",
             "GPTNeoXForCausalLM": "neox", "RobertaForMaskedLM": "roberta",
             "RobertaModel": "roberta"}


def _get(config, name, default=None):
    return getattr(config, name, default)


def missing_features(config) -> List[str]:
    """Features of an architecture that energy_lm lacks, each with the field that asks
    for it (rotary positions, RMSNorm, gated FFNs, grouped heads and parallel residuals
    it has: a class with those but no converter is named as such)."""
    found = []
    for name in ("num_local_experts", "num_experts", "moe_num_experts"):
        if (_get(config, name) or 0) > 1:
            found.append(f"mixture-of-experts FFNs (config.{name}={_get(config, name)})")
            break
    params = _get(config, "rope_parameters") or _get(config, "rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type", "default")) if isinstance(params, dict) \
        else "default"
    if rope_type not in ("default", None):
        found.append(f"scaled rotary frequencies (config.rope_parameters['rope_type']="
                     f"{rope_type!r})")
    if _get(config, "use_sliding_window") or (
            _get(config, "sliding_window") and _get(config, "model_type") in ("mistral", "mixtral")):
        found.append(f"sliding-window attention (config.sliding_window="
                     f"{_get(config, 'sliding_window')})")
    if _get(config, "qk_layernorm"):
        found.append("norms on queries and keys (config.qk_layernorm)")
    if _get(config, "alibi") or _get(config, "model_type") == "bloom":
        found.append("BLOOM's ALiBi with an embedding layer norm (config.model_type='bloom')")
    return found


def architecture_of(config) -> str:
    """The supported architecture class named in the config, or one line saying why not."""
    names = list(_get(config, "architectures", None) or [])
    for name in names:
        if name in SUPPORTED:
            return name
    model_type = _get(config, "model_type")
    shown = ", ".join(names) or f"model_type {model_type!r}"
    missing = missing_features(config)
    reason = (f"energy_lm's architectures lack {', '.join(missing)}" if missing else
              "energy_lm has no converter for it")
    raise BridgeError(f"{shown}: {reason}; energy-lm-from-hf converts "
                      f"{', '.join(SUPPORTED)} (config.architectures)")


def refuse(field: str, value, why: str) -> None:
    raise BridgeError(f"config.{field}={value!r}: {why}")
