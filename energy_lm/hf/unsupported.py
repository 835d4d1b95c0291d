"""What a Hugging Face config asks for that energy_lm's architectures cannot represent,
named by its config field: one line, before anything is written."""

from typing import List

from energy_lm.hf.errors import BridgeError

SUPPORTED = {"GPT2LMHeadModel": "gpt2", "RobertaForMaskedLM": "roberta",
             "RobertaModel": "roberta"}


def _get(config, name, default=None):
    return getattr(config, name, default)


def missing_features(config) -> List[str]:
    """Features of today's architectures that energy_lm lacks (issue 39 brings them),
    each with the field that asks for it."""
    found = []
    for name in ("rope_parameters", "rope_theta", "rope_scaling", "rotary_pct", "rotary_dim",
                 "rotary_emb_base"):
        if _get(config, name) is not None:
            found.append(f"rotary positions (config.{name})")
            break
    else:
        if _get(config, "position_embedding_type") == "rotary":
            found.append("rotary positions (config.position_embedding_type='rotary')")
    if _get(config, "rms_norm_eps") is not None:
        found.append("RMSNorm (config.rms_norm_eps)")
    if _get(config, "hidden_act") in ("silu", "swish", "swiglu", "geglu"):
        found.append(f"a gated feed-forward (config.hidden_act={_get(config, 'hidden_act')!r})")
    heads, kv = _get(config, "num_attention_heads"), _get(config, "num_key_value_heads")
    if isinstance(kv, int) and isinstance(heads, int) and kv < heads:
        found.append(f"grouped-query attention (config.num_key_value_heads={kv} < "
                     f"num_attention_heads={heads})")
    for name in ("use_parallel_residual", "parallel_attn", "parallel_residual"):
        if _get(config, name):
            found.append(f"a parallel residual (config.{name})")
            break
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
