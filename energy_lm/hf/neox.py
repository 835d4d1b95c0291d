"""GPT-NeoX / Pythia (`GPTNeoXForCausalLM`) <-> `transformer_lm_energy`: the key map.

What differs from ours, each checked by tests/hf on tiny random models:
- q, k, v are one `query_key_value` projection whose rows go head by head, each head's
  q, k, v side by side ((H, 3, D) rows): split per head here, joined back on export;
- rotary positions on `partial_rotary_factor` of each head (Pythia: a quarter),
  rotate-half, as `--rotary-fraction`; no embedding scale;
- the parallel residual x + attn(ln1 x) + mlp(ln2 x) (`use_parallel_residual`, as
  `--parallel-residual`), or fairseq's sequential pre-norm layer without it;
- an ungated MLP with biases; `attention_bias` switches the biases of qkv and dense
  together; the erf GELU is fairseq's `gelu` (computed in float32, as GPT-2's note says);
- the vocabulary as GPT-2's (`</s>` is the end-of-text token).
"""

from typing import Dict, List, Tuple

import torch
from torch import Tensor

from energy_lm.data.hf_vocabulary import VocabularyMap
from energy_lm.hf import gpt2
from energy_lm.hf.errors import BridgeError
from energy_lm.hf.fairseq_heads import input_rows, output_rows, trunk_refusals
from energy_lm.hf.unsupported import refuse

CLASSES = ("GPTNeoXForCausalLM",)
PAIRS = (("self_attn.out_proj", "attention.dense"), ("fc1", "mlp.dense_h_to_4h"),
         ("fc2", "mlp.dense_4h_to_h"), ("self_attn_layer_norm", "input_layernorm"),
         ("final_layer_norm", "post_attention_layernorm"))
ATTENTION_KEYS = ("self_attn.out_proj",)


def vocabulary(config, tokenizer=None) -> VocabularyMap:
    return gpt2.vocabulary(config, tokenizer)


def _rotary(config) -> Tuple[float, float]:
    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        refuse("rope_parameters['rope_type']", rope_type, "only the default rotary "
               "frequencies are implemented (no scaled or extended rope)")
    return float(params.get("rope_theta", 10000.0)), float(params.get("partial_rotary_factor", 1.0))


def check_config(config) -> None:
    act = config.hidden_act
    if act not in gpt2.ACTIVATIONS:
        refuse("hidden_act", act, f"fairseq has no such activation (have: "
               f"{', '.join(sorted(gpt2.ACTIVATIONS))})")
    heads, dim = config.num_attention_heads, config.hidden_size
    if dim % heads:
        refuse("num_attention_heads", heads, f"does not divide hidden_size={dim}")
    head_dim = dim // heads
    _, fraction = _rotary(config)
    rotated = int(head_dim * fraction)
    if rotated < 2 or rotated % 2:
        refuse("rope_parameters['partial_rotary_factor']", fraction,
               f"rotates {rotated} of {head_dim} dims: an even number >= 2 is implemented")


def train_args(config) -> List[str]:
    d = config.hidden_size
    theta, fraction = _rotary(config)
    args = ["--arch", "transformer_lm_energy", "--decoder-layers", str(config.num_hidden_layers),
            "--decoder-embed-dim", str(d), "--decoder-ffn-embed-dim",
            str(config.intermediate_size), "--decoder-attention-heads",
            str(config.num_attention_heads), "--decoder-input-dim", str(d),
            "--decoder-output-dim", str(d), "--decoder-normalize-before", "--no-scale-embedding",
            "--rotary-fraction", repr(fraction), "--rotary-base", repr(theta),
            "--layer-norm-eps", repr(float(config.layer_norm_eps)),
            "--activation-fn", gpt2.ACTIVATIONS[config.hidden_act],
            "--attention-bias", "all" if getattr(config, "attention_bias", True) else "none",
            "--max-target-positions", str(config.max_position_embeddings),
            "--output-mask", "specials", "--dropout", "0.0",
            "--attention-dropout", repr(float(getattr(config, "attention_dropout", 0.0) or 0.0))]
    if getattr(config, "use_parallel_residual", True):
        args.append("--parallel-residual")
    tied = getattr(config, "tie_word_embeddings", False)
    return args + (["--share-decoder-input-output-embed"] if tied else ["--untied-head"])


def positions_of(config) -> Tuple[int, int]:
    return config.max_position_embeddings, 0


def _has_bias(name: str, attention_bias: bool) -> bool:
    return attention_bias or name not in ATTENTION_KEYS


def to_fairseq(hf: Dict[str, Tensor], config, index: Tensor, vocab_rows: int,
               position_rows: int = 0) -> Dict[str, Tensor]:
    hf = {k[len("gpt_neox."):] if k.startswith("gpt_neox.") else k: v for k, v in hf.items()}
    d, heads = config.hidden_size, config.num_attention_heads
    head_dim = d // heads
    bias = bool(getattr(config, "attention_bias", True))
    embed = hf["embed_in.weight"].new_zeros(vocab_rows, d)
    embed[index] = hf["embed_in.weight"]
    out = {"decoder.embed_tokens.weight": embed,
           "decoder.layer_norm.weight": hf["final_layer_norm.weight"],
           "decoder.layer_norm.bias": hf["final_layer_norm.bias"],
           "decoder.version": torch.tensor([3.0])}
    for i in range(config.num_hidden_layers):
        src, dst = f"layers.{i}.", f"decoder.layers.{i}."
        qkv = hf[src + "attention.query_key_value.weight"].view(heads, 3, head_dim, d)
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            out[dst + f"self_attn.{name}.weight"] = qkv[:, j].reshape(d, d).clone()
            if bias:
                b = hf[src + "attention.query_key_value.bias"].view(heads, 3, head_dim)
                out[dst + f"self_attn.{name}.bias"] = b[:, j].reshape(d).clone()
        for ours, theirs in PAIRS:
            out[dst + ours + ".weight"] = hf[src + theirs + ".weight"]
            if _has_bias(ours, bias):
                out[dst + ours + ".bias"] = hf[src + theirs + ".bias"]
    if getattr(config, "tie_word_embeddings", False):
        out["decoder.output_projection.weight"] = embed
    else:
        source_head = hf["lm_head.weight"] if "lm_head.weight" in hf else hf["embed_out.weight"]
        head = source_head.new_zeros(vocab_rows, d)
        head[index] = source_head
        out["decoder.output_projection.weight"] = head
    return out


def export(model, args, index: Tensor, specials: Dict[str, int], absent: int, mode: str):
    """A rotary, ungated, LayerNorm transformer_lm_energy -> (GPTNeoXForCausalLM or, mode
    mlm, GPTNeoXModel; its state dict; nothing beside it)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, GPTNeoXModel

    dec = model.decoder
    reasons = []
    if str(args.norm) != "layer":
        reasons.append("RMSNorm")
    if str(args.attention_bias) == "qkv":
        reasons.append("q/k/v-only attention biases (GPT-NeoX's attention_bias switches qkv "
                       "and dense together)")
    if args.no_ffn_bias:
        reasons.append("an FFN without biases")
    if dec.layers[0].self_attn.kv_heads != dec.layers[0].self_attn.num_heads:
        reasons.append("grouped key/value heads")
    if args.activation_fn not in gpt2.TO_HF_ACTIVATION:
        reasons.append(f"activation {args.activation_fn}")
    reasons += trunk_refusals(dec, args, mode)
    if absent:
        reasons.append(f"{absent} BPE tokens without a dictionary row (prepare the data with "
                       f"energy-lm-prepare --tokenizer-from, which gives every token a row)")
    if reasons:
        raise BridgeError("GPTNeoXForCausalLM cannot represent " + "; ".join(reasons))
    layers, d = len(dec.layers), dec.embed_dim
    heads = dec.layers[0].self_attn.num_heads
    head_dim = d // heads
    bias = str(args.attention_bias) == "all"
    state = {k: v.detach() for k, v in model.state_dict().items()}
    wte = input_rows(dec, args)
    head, head_bias = output_rows(dec.output_projection)
    if head_bias is not None:
        raise BridgeError("GPTNeoXForCausalLM has no bias on its LM head")
    tied = torch.equal(wte, head)
    hf_state = {"gpt_neox.embed_in.weight": wte[index].clone(),
                "gpt_neox.final_layer_norm.weight": state["decoder.layer_norm.weight"],
                "gpt_neox.final_layer_norm.bias": state["decoder.layer_norm.bias"],
                "lm_head.weight": head[index].clone()}
    for i in range(layers):
        src, dst = f"decoder.layers.{i}.", f"gpt_neox.layers.{i}."
        qkv = torch.stack([state[src + f"self_attn.{n}_proj.weight"].view(heads, head_dim, d)
                           for n in "qkv"], dim=1)  # (H, 3, D, d)
        hf_state[dst + "attention.query_key_value.weight"] = qkv.reshape(3 * d, d)
        if bias:
            qkv_b = torch.stack([state[src + f"self_attn.{n}_proj.bias"].view(heads, head_dim)
                                 for n in "qkv"], dim=1)
            hf_state[dst + "attention.query_key_value.bias"] = qkv_b.reshape(3 * d)
        for ours, theirs in PAIRS:
            hf_state[dst + theirs + ".weight"] = state[src + ours + ".weight"]
            if _has_bias(ours, bias):
                hf_state[dst + theirs + ".bias"] = state[src + ours + ".bias"]
    config = GPTNeoXConfig(
        vocab_size=len(index), hidden_size=d, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=dec.layers[0].fc1.out_features,
        hidden_act=gpt2.TO_HF_ACTIVATION[args.activation_fn],
        rope_parameters={"rope_type": "default", "rope_theta": float(args.rotary_base),
                         "partial_rotary_factor": float(args.rotary_fraction)},
        max_position_embeddings=dec.max_positions(), layer_norm_eps=float(args.layer_norm_eps),
        use_parallel_residual=bool(args.parallel_residual), attention_bias=bias,
        attention_dropout=float(args.attention_dropout), hidden_dropout=0.0,
        tie_word_embeddings=tied, bos_token_id=specials["</s>"], eos_token_id=specials["</s>"],
        pad_token_id=specials.get("<pad>"),
        architectures=["GPTNeoXModel" if mode == "mlm" else "GPTNeoXForCausalLM"])
    if mode == "mlm":
        hf_state = {k[len("gpt_neox."):]: v for k, v in hf_state.items()
                    if k.startswith("gpt_neox.")}
        return GPTNeoXModel(config), hf_state, {}
    return GPTNeoXForCausalLM(config), hf_state, {}
