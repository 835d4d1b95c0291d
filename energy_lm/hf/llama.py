"""Llama (`LlamaForCausalLM`), Qwen2 (`Qwen2ForCausalLM`) and StableLM 2
(`StableLmForCausalLM`) <-> `transformer_lm_energy` with rotary positions, a SwiGLU FFN
and grouped-query attention: the key map.

The three share one layout (Qwen2 is Llama with biases on q, k, v only; StableLM has
LayerNorms with biases, rotary on a fraction of each head and optional q, k, v biases);
what differs from ours, each checked by tests/hf on tiny random models:
- no position embeddings: rotary, rotate-half, base `rope_parameters["rope_theta"]` on
  every dim of a head (StableLM: `partial_rotary_factor` of them), as
  `--rotary-fraction --rotary-base` (the halves are those of q_proj's rows as
  transformers stores them: no permutation);
- no embedding scale (`--no-scale-embedding`); RMSNorm with `rms_norm_eps` (StableLM:
  LayerNorm with `layer_norm_eps`);
- the MLP is down(silu(gate x) * up x): our fc1.gate, fc1.up and fc2;
- the vocabulary as GPT-2's (energy_lm.hf.gpt2): the end-of-text token is `</s>`, the
  other specials of fairseq are masked (`--output-mask specials`).
Unsupported config fields (sliding windows, rope scaling, a head_dim that is not
hidden_size / heads, ...) stop in one line naming the field.
"""

from typing import Dict, List, Tuple

import torch
from torch import Tensor

from energy_lm.data.hf_vocabulary import VocabularyMap
from energy_lm.hf import gpt2
from energy_lm.hf.errors import BridgeError
from energy_lm.hf.fairseq_heads import input_rows, output_rows, trunk_refusals
from energy_lm.hf.unsupported import refuse

CLASSES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "StableLmForCausalLM")
# per layer, ours <-> theirs (weights; biases where the config has them)
ATTENTION = (("self_attn.q_proj", "self_attn.q_proj"), ("self_attn.k_proj", "self_attn.k_proj"),
             ("self_attn.v_proj", "self_attn.v_proj"), ("self_attn.out_proj", "self_attn.o_proj"))
MLP = (("fc1.gate", "mlp.gate_proj"), ("fc1.up", "mlp.up_proj"), ("fc2", "mlp.down_proj"))
NORMS = (("self_attn_layer_norm", "input_layernorm"),
         ("final_layer_norm", "post_attention_layernorm"))


def _rotary(config) -> Tuple[float, float]:
    """(base, fraction of each head rotated)."""
    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        refuse("rope_parameters['rope_type']", rope_type, "only the default rotary "
               "frequencies are implemented (no scaled or extended rope)")
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise BridgeError("config.rope_parameters has no rope_theta")
    # Llama's and Qwen2's default rope rotates every dim, whatever else the config holds
    fraction = params.get("partial_rotary_factor", 1.0) if _stablelm(config) else 1.0
    return float(theta), float(fraction)


def _stablelm(config) -> bool:
    return config.model_type == "stablelm"


def _norm(config) -> Tuple[str, float]:
    """(--norm, its eps)."""
    if _stablelm(config):
        return "layer", float(config.layer_norm_eps)
    return "rms", float(config.rms_norm_eps)


def check_config(config) -> None:
    act = getattr(config, "hidden_act", None)
    if act not in ("silu", "swish"):
        refuse("hidden_act", act, "the gated FFN here is SwiGLU (silu) only")
    heads, dim = config.num_attention_heads, config.hidden_size
    head_dim = getattr(config, "head_dim", None) or dim // heads
    if dim % heads or head_dim != dim // heads:
        refuse("head_dim", head_dim, f"fairseq's attention has heads of hidden_size / "
               f"num_attention_heads = {dim / heads:g} dims")
    kv = getattr(config, "num_key_value_heads", None) or heads
    if heads % kv:
        refuse("num_key_value_heads", kv, f"does not divide num_attention_heads={heads}")
    _, fraction = _rotary(config)
    if int(head_dim * fraction) < 2 or int(head_dim * fraction) % 2:
        refuse("rope_parameters['partial_rotary_factor']", fraction,
               f"rotates {int(head_dim * fraction)} of {head_dim} dims: an even number >= 2 "
               f"is implemented")
    if getattr(config, "use_sliding_window", False):
        refuse("use_sliding_window", True, "sliding-window attention is not implemented")
    layer_types = getattr(config, "layer_types", None) or []
    if any(kind != "full_attention" for kind in layer_types):
        refuse("layer_types", sorted(set(layer_types)), "only full attention is implemented "
               "(no sliding-window layers)")
    if int(getattr(config, "pretraining_tp", 1) or 1) != 1:
        refuse("pretraining_tp", config.pretraining_tp, "a tensor-parallel split of the "
               "projections is not reproduced")
    if getattr(config, "qk_layernorm", False):
        refuse("qk_layernorm", True, "norms on queries and keys are not implemented")
    if _stablelm(config) and getattr(config, "use_parallel_residual", False):
        refuse("use_parallel_residual", True, "StableLM's parallel residual shares one norm "
               "between its branches (GPT-NeoX's, which --parallel-residual implements, has two)")


def vocabulary(config, tokenizer=None) -> VocabularyMap:
    """GPT-2's map: the end-of-text token is `</s>`."""
    return gpt2.vocabulary(config, tokenizer)


def _attention_bias(config) -> str:
    if config.model_type == "qwen2":
        return "qkv"
    if _stablelm(config):
        return "qkv" if getattr(config, "use_qkv_bias", False) else "none"
    return "all" if getattr(config, "attention_bias", False) else "none"


def train_args(config) -> List[str]:
    """The fairseq-train flags that rebuild this architecture."""
    d = config.hidden_size
    heads = config.num_attention_heads
    args = ["--arch", "transformer_lm_energy", "--decoder-layers", str(config.num_hidden_layers),
            "--decoder-embed-dim", str(d), "--decoder-ffn-embed-dim",
            str(config.intermediate_size), "--decoder-attention-heads", str(heads),
            "--kv-heads", str(getattr(config, "num_key_value_heads", None) or heads),
            "--decoder-input-dim", str(d), "--decoder-output-dim", str(d),
            "--decoder-normalize-before", "--no-scale-embedding",
            "--rotary-fraction", repr(_rotary(config)[1]), "--rotary-base", repr(_rotary(config)[0]),
            "--norm", _norm(config)[0], "--layer-norm-eps", repr(_norm(config)[1]),
            "--gated-ffn", "silu", "--attention-bias", _attention_bias(config),
            "--max-target-positions", str(config.max_position_embeddings),
            "--output-mask", "specials", "--dropout", "0.0",
            "--attention-dropout", repr(float(getattr(config, "attention_dropout", 0.0) or 0.0))]
    if not getattr(config, "mlp_bias", False):
        args.append("--no-ffn-bias")
    tied = getattr(config, "tie_word_embeddings", False)
    return args + (["--share-decoder-input-output-embed"] if tied else ["--untied-head"])


def positions_of(config) -> Tuple[int, int]:
    """(the source's positions, rows of a position table: none)."""
    return config.max_position_embeddings, 0


def _pairs(config) -> Tuple[Tuple[str, str, bool], ...]:
    """(ours, theirs, has a bias) of one layer."""
    bias = _attention_bias(config)
    mlp_bias = bool(getattr(config, "mlp_bias", False))
    norm_bias = _norm(config)[0] == "layer"
    return tuple((a, b, bias == "all" or (bias == "qkv" and b != "self_attn.o_proj"))
                 for a, b in ATTENTION) + tuple((a, b, mlp_bias) for a, b in MLP) + \
        tuple((a, b, norm_bias) for a, b in NORMS)


def to_fairseq(hf: Dict[str, Tensor], config, index: Tensor, vocab_rows: int,
               position_rows: int = 0) -> Dict[str, Tensor]:
    """The source's state dict -> the decoder's (energy head and buffers not included);
    index: (V_hf,) the dictionary index of each source id; vocab_rows: the dictionary's
    size."""
    hf = {k[len("model."):] if k.startswith("model.") else k: v for k, v in hf.items()}
    d = config.hidden_size
    embed = hf["embed_tokens.weight"].new_zeros(vocab_rows, d)
    embed[index] = hf["embed_tokens.weight"]
    out = {"decoder.embed_tokens.weight": embed, "decoder.layer_norm.weight": hf["norm.weight"],
           "decoder.version": torch.tensor([3.0])}
    if "norm.bias" in hf:
        out["decoder.layer_norm.bias"] = hf["norm.bias"]
    for i in range(config.num_hidden_layers):
        src, dst = f"layers.{i}.", f"decoder.layers.{i}."
        for ours, theirs, bias in _pairs(config):
            out[dst + ours + ".weight"] = hf[src + theirs + ".weight"]
            if bias:
                out[dst + ours + ".bias"] = hf[src + theirs + ".bias"]
    if getattr(config, "tie_word_embeddings", False):
        out["decoder.output_projection.weight"] = embed
    else:
        head = hf["lm_head.weight"].new_zeros(vocab_rows, d)
        head[index] = hf["lm_head.weight"]
        out["decoder.output_projection.weight"] = head
    return out


def _target(args) -> Tuple[str, List[str]]:
    """(the stock class of this model, why it cannot be represented)."""
    bias, norm = str(args.attention_bias), str(args.norm)
    fraction = float(args.rotary_fraction)
    if norm == "layer":
        target = "StableLmForCausalLM"
        reasons = [] if bias != "all" else ["biases on the attention's output projection"]
        if not args.no_ffn_bias:
            reasons.append("FFN biases (StableLM has none)")
    else:
        target = "Qwen2ForCausalLM" if bias == "qkv" else "LlamaForCausalLM"
        reasons = [] if fraction == 1.0 else [
            f"rotary positions on a fraction {fraction:g} of each head (Llama and Qwen2 rotate "
            f"all of it; StableLM, which does not, has LayerNorms)"]
        if bias == "qkv" and not args.no_ffn_bias:
            reasons.append("FFN biases with q/k/v-only attention biases (Qwen2 has none)")
    if not fraction:
        reasons.append("no rotary positions")
    if str(args.gated_ffn) != "silu":
        reasons.append("a FFN that is not SwiGLU (--gated-ffn silu)")
    if args.parallel_residual:
        reasons.append("a parallel residual")
    return target, reasons


def export(model, args, index: Tensor, specials: Dict[str, int], absent: int, mode: str):
    """A rotary SwiGLU transformer_lm_energy -> (LlamaForCausalLM; Qwen2ForCausalLM with
    --attention-bias qkv; StableLmForCausalLM with --norm layer; (mode mlm) its trunk;
    its state dict; nothing beside it)."""
    import transformers

    dec = model.decoder
    target, reasons = _target(args)
    reasons += trunk_refusals(dec, args, mode)
    if absent:
        reasons.append(f"{absent} BPE tokens without a dictionary row (behind an RMSNorm no "
                       f"head row has a constant logit, and this export gives none to a "
                       f"LayerNorm, so they cannot get probability 0; prepare the data with "
                       f"energy-lm-prepare --tokenizer-from, which gives every token a row)")
    if reasons:
        raise BridgeError(f"{target} cannot represent " + "; ".join(reasons))
    layers, d = len(dec.layers), dec.embed_dim
    attn = dec.layers[0].self_attn
    state = {k: v.detach() for k, v in model.state_dict().items()}
    wte = input_rows(dec, args)
    head, head_bias = output_rows(dec.output_projection)
    if head_bias is not None:
        raise BridgeError(f"{target} has no bias on its LM head")
    tied = torch.equal(wte, head)
    hf_state = {"model.embed_tokens.weight": wte[index].clone(),
                "model.norm.weight": state["decoder.layer_norm.weight"],
                "lm_head.weight": head[index].clone()}
    rope = {"rope_type": "default", "rope_theta": float(args.rotary_base)}
    fields = dict(vocab_size=len(index), hidden_size=d,
                  intermediate_size=dec.layers[0].fc2.in_features,
                  num_hidden_layers=layers, num_attention_heads=attn.num_heads,
                  num_key_value_heads=attn.kv_heads, hidden_act="silu",
                  max_position_embeddings=dec.max_positions(),
                  attention_dropout=float(args.attention_dropout), tie_word_embeddings=tied,
                  bos_token_id=specials["</s>"], eos_token_id=specials["</s>"],
                  pad_token_id=specials.get("<pad>"))
    bias = str(args.attention_bias)
    if target == "LlamaForCausalLM":
        config = transformers.LlamaConfig(
            attention_bias=bias == "all", mlp_bias=not args.no_ffn_bias,
            head_dim=d // attn.num_heads, rms_norm_eps=float(args.layer_norm_eps),
            rope_parameters=rope, **fields)
    elif target == "Qwen2ForCausalLM":
        config = transformers.Qwen2Config(use_sliding_window=False,
                                          rms_norm_eps=float(args.layer_norm_eps),
                                          rope_parameters=rope, **fields)
    else:
        config = transformers.StableLmConfig(
            use_qkv_bias=bias == "qkv", layer_norm_eps=float(args.layer_norm_eps),
            rope_parameters=dict(rope, partial_rotary_factor=float(args.rotary_fraction)),
            use_parallel_residual=False, qk_layernorm=False, **fields)
        hf_state["model.norm.bias"] = state["decoder.layer_norm.bias"]
    for i in range(layers):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        for ours, theirs, has_bias in _pairs(config):
            hf_state[dst + theirs + ".weight"] = state[src + ours + ".weight"]
            if has_bias:
                hf_state[dst + theirs + ".bias"] = state[src + ours + ".bias"]
    trunk = target.replace("ForCausalLM", "Model")
    config.architectures = [trunk if mode == "mlm" else target]
    if mode == "mlm":  # the trunk alone
        hf_state = {k[len("model."):]: v for k, v in hf_state.items() if k.startswith("model.")}
        return getattr(transformers, trunk)(config), hf_state, {}
    return getattr(transformers, target)(config), hf_state, {}
