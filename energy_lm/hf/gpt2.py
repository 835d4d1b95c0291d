"""GPT-2 (`GPT2LMHeadModel`) <-> `transformer_lm_energy`: the key map and the folds.

What differs between the two, each a measured pitfall (max |d log p| in float32 when
it is got wrong, on a tiny random model):
- GPT-2's `Conv1D` stores weights as (in, out): transposed here (9.2 when reshaped);
  `c_attn` holds q, k, v side by side;
- GPT-2 does not scale its embeddings; fairseq multiplies them by sqrt(d) unless
  `--no-scale-embedding` (9.2);
- fairseq's learned positions start at padding index + 1 = 2: GPT-2's row j is
  fairseq's row j + 2 (6.6 without the offset); our table has one more row, the energy
  position, which starts as a copy of the last;
- GPT-2's "gelu_new" is fairseq's `gelu_accurate` (tanh), not `gelu` (erf: 1.0e-3);
- layer-norm eps is the config's `layer_norm_epsilon` (`--layer-norm-eps`);
- the final layer norm `ln_f` is fairseq's `decoder.layer_norm`, which fairseq's
  upgrade drops from a state dict without `decoder.version` >= 3 while strict loading
  still passes (26): the version is written;
- the vocabulary: see energy_lm.hf.vocabulary (`</s>` takes the end-of-text row, the
  unused symbols are masked: 4.1 with `</s>` left zero, 2.3e-2 without the mask).
"""

from typing import Dict, List, Tuple

import torch
from torch import Tensor

from energy_lm.data.hf_vocabulary import VocabularyMap
from energy_lm.hf.energy_head_file import ENERGY_POSITION
from energy_lm.hf.errors import BridgeError
from energy_lm.hf.fairseq_heads import absent_head_rows, fresh_head_rows, input_rows, output_rows
from energy_lm.hf.unsupported import refuse

# HF activation -> fairseq activation, where the two compute the same function
ACTIVATIONS = {"gelu_new": "gelu_accurate", "gelu_pytorch_tanh": "gelu_accurate",
               "gelu_fast": "gelu_accurate", "gelu": "gelu", "relu": "relu"}
TO_HF_ACTIVATION = {"gelu_accurate": "gelu_new", "gelu_fast": "gelu_new", "gelu": "gelu",
                    "relu": "relu"}
PAD_TO = 8  # the dictionary's size, as fairseq-preprocess pads it


def check_config(config) -> None:
    if getattr(config, "add_cross_attention", False):
        refuse("add_cross_attention", True, "cross-attention layers have no place in a "
               "decoder-only fairseq LM")
    if getattr(config, "scale_attn_by_inverse_layer_idx", False):
        refuse("scale_attn_by_inverse_layer_idx", True, "fairseq's attention scales every "
               "layer by 1/sqrt(head dim) only")
    if not getattr(config, "scale_attn_weights", True):
        refuse("scale_attn_weights", False, "fairseq's attention always scales by 1/sqrt(head dim)")
    act = config.activation_function
    if act not in ACTIVATIONS:
        refuse("activation_function", act, f"fairseq has no such activation (have: "
               f"{', '.join(sorted(ACTIVATIONS))})")
    if config.n_embd % config.n_head:
        refuse("n_head", config.n_head, f"does not divide n_embd={config.n_embd}")


def vocabulary(config, tokenizer=None) -> VocabularyMap:
    """GPT-2's map: only the end-of-text token has a fairseq symbol (`</s>`); the tokenizer
    is not needed (RoBERTa's map reads its special tokens there)."""
    eos = config.eos_token_id
    if isinstance(eos, list):
        eos = eos[0]
    if eos is None:
        raise BridgeError("config.eos_token_id is not set: fairseq's </s> (which starts every "
                          "block) needs the source's end-of-text token")
    return VocabularyMap(config.vocab_size, {"</s>": int(eos)}, pad_to=PAD_TO)


def train_args(config) -> List[str]:
    """The fairseq-train flags that rebuild this architecture."""
    d, ffn = config.n_embd, config.n_inner or 4 * config.n_embd
    args = ["--arch", "transformer_lm_energy", "--decoder-layers", str(config.n_layer),
            "--decoder-embed-dim", str(d), "--decoder-ffn-embed-dim", str(ffn),
            "--decoder-attention-heads", str(config.n_head),
            "--decoder-input-dim", str(d), "--decoder-output-dim", str(d),
            "--decoder-normalize-before", "--decoder-learned-pos", "--no-scale-embedding",
            "--activation-fn", ACTIVATIONS[config.activation_function],
            "--layer-norm-eps", repr(float(config.layer_norm_epsilon)),
            "--max-target-positions", str(config.n_positions), "--output-mask", "specials",
            "--dropout", repr(float(config.resid_pdrop)),
            "--attention-dropout", repr(float(config.attn_pdrop))]
    tied = getattr(config, "tie_word_embeddings", True)
    return args + (["--share-decoder-input-output-embed"] if tied else ["--untied-head"])


def _conv1d(weight: Tensor) -> Tensor:
    return weight.t().contiguous()  # Conv1D (in, out) <-> Linear (out, in)


# per layer, ours <-> GPT-2's (weight and bias each); q, k, v are c_attn's thirds
CONV1D_PAIRS = (("self_attn.out_proj", "attn.c_proj"), ("fc1", "mlp.c_fc"), ("fc2", "mlp.c_proj"))
NORM_PAIRS = (("self_attn_layer_norm", "ln_1"), ("final_layer_norm", "ln_2"))


def _layer_map(source: Dict[str, Tensor], out: Dict[str, Tensor], src: str, dst: str,
               to_hf: bool) -> None:
    """One layer's Conv1D and norm tensors from source (prefix src) into out (prefix dst)."""
    for ours, theirs in CONV1D_PAIRS + NORM_PAIRS:
        a, b = (ours, theirs) if to_hf else (theirs, ours)
        fold = _conv1d if (ours, theirs) in CONV1D_PAIRS else (lambda w: w)
        out[dst + b + ".weight"] = fold(source[src + a + ".weight"])
        out[dst + b + ".bias"] = source[src + a + ".bias"]


def to_fairseq(hf: Dict[str, Tensor], config, index: Tensor, vocab_rows: int,
               position_rows: int) -> Dict[str, Tensor]:
    """GPT-2's state dict -> the decoder's (energy head and buffers not included).
    index: (V_hf,) the dictionary index of each source id; vocab_rows: the dictionary's
    size; position_rows: the rows of our position table (2 + n_positions + 1)."""
    hf = {k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in hf.items()}
    d = config.n_embd
    wte = hf["wte.weight"]
    embed = wte.new_zeros(vocab_rows, d)
    embed[index] = wte
    wpe = hf["wpe.weight"]
    positions = wpe.new_zeros(position_rows, d)
    positions[2:2 + wpe.size(0)] = wpe
    positions[2 + wpe.size(0):] = wpe[-1]  # the energy position: a copy of the last
    out = {"decoder.embed_tokens.weight": embed, "decoder.embed_positions.weight": positions,
           "decoder.layer_norm.weight": hf["ln_f.weight"], "decoder.layer_norm.bias": hf["ln_f.bias"],
           "decoder.version": torch.tensor([3.0])}
    for i in range(config.n_layer):
        h, f = f"h.{i}.", f"decoder.layers.{i}."
        qkv_w, qkv_b = _conv1d(hf[h + "attn.c_attn.weight"]), hf[h + "attn.c_attn.bias"]
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            out[f + f"self_attn.{name}.weight"] = qkv_w[j * d:(j + 1) * d].clone()
            out[f + f"self_attn.{name}.bias"] = qkv_b[j * d:(j + 1) * d].clone()
        _layer_map(hf, out, h, f, to_hf=False)
    if not getattr(config, "tie_word_embeddings", True):
        head = hf["lm_head.weight"]
        rows = head.new_zeros(vocab_rows, d)
        rows[index] = head
        out["decoder.output_projection.weight"] = rows
    else:
        out["decoder.output_projection.weight"] = embed
    return out


def from_fairseq(state: Dict[str, Tensor], index: Tensor, num_layers: int, dim: int,
                 num_positions: int, tied: bool) -> Dict[str, Tensor]:
    """The decoder's state dict (learned positions, softmax head) -> GPT-2's; index as
    in `to_fairseq` (the HF id of each row it picks)."""
    out = {"transformer.wte.weight": state["decoder.embed_tokens.weight"][index].clone(),
           "transformer.wpe.weight": state["decoder.embed_positions.weight"][2:2 + num_positions].clone(),
           "transformer.ln_f.weight": state["decoder.layer_norm.weight"],
           "transformer.ln_f.bias": state["decoder.layer_norm.bias"]}
    for i in range(num_layers):
        h, f = f"transformer.h.{i}.", f"decoder.layers.{i}."
        qkv_w = torch.cat([state[f + f"self_attn.{n}_proj.weight"] for n in "qkv"], dim=0)
        qkv_b = torch.cat([state[f + f"self_attn.{n}_proj.bias"] for n in "qkv"], dim=0)
        out[h + "attn.c_attn.weight"] = _conv1d(qkv_w)
        out[h + "attn.c_attn.bias"] = qkv_b
        _layer_map(state, out, f, h, to_hf=True)
    out["lm_head.weight"] = (out["transformer.wte.weight"] if tied else
                             state["decoder.output_projection.weight"][index].clone())
    return out


def positions_of(config) -> Tuple[int, int]:
    """(GPT-2's positions, our table's rows: padding offset 2, then the energy row)."""
    return config.n_positions, config.n_positions + 2 + 1


def export(model, args, index: Tensor, specials: Dict[str, int], absent: int, mode: str):
    """A transformer_lm_energy model -> (GPT2LMHeadModel or, mode mlm, GPT2Model; its state
    dict; what goes beside it: the energy's position row). index: the dictionary row of
    each HF id; specials: the HF ids of fairseq's specials; absent: BPE tokens without a
    row, appended with <unk>'s input row and probability 0 (energy_lm.hf.to_hf)."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    dec = model.decoder
    reasons = []
    if str(args.alibi) != "none":
        reasons.append("causal ALiBi: no stock transformers class reproduces it exactly "
                       "(BLOOM, whose slopes are ours, also needs an embedding LayerNorm and "
                       "tanh GELU; MPT a model without biases); export a learned-position model")
    if not args.decoder_normalize_before:
        reasons.append("post-norm layers (GPT-2 is pre-norm): --decoder-normalize-before")
    if dec.project_in_dim is not None or dec.project_out_dim is not None:
        reasons.append("a projection between the embedding width and the layers' width")
    if dec.layernorm_embedding is not None:
        reasons.append("an embedding LayerNorm (--layernorm-embedding; GPT-2 has none)")
    if args.activation_fn not in TO_HF_ACTIVATION:
        reasons.append(f"activation {args.activation_fn}")
    if float(getattr(args, "proposal_uniform_mix", 0.0) or 0.0):
        reasons.append("--proposal-uniform-mix (a handicapped proposal, for tests)")
    if reasons:
        raise BridgeError("GPT2LMHeadModel cannot represent " + "; ".join(reasons))
    layers, d = len(dec.layers), dec.embed_dim
    positions = dec.max_positions()
    state = {k: v.detach() for k, v in model.state_dict().items()}
    wte = input_rows(dec, args)
    head, bias = (fresh_head_rows(dec, args), None) if mode == "add_head" else \
        output_rows(dec.output_projection)
    tied = torch.equal(wte, head) and not absent
    state["decoder.embed_tokens.weight"] = wte
    state["decoder.output_projection.weight"] = head
    hf_state = from_fairseq(state, index, layers, d, positions, tied)
    if absent:  # fairseq's <unk> as input, probability 0 as output
        unk = hf_state["transformer.wte.weight"][specials["<unk>"]]
        hf_state["transformer.wte.weight"] = torch.cat(
            [hf_state["transformer.wte.weight"], unk.expand(absent, -1)])
        hf_state["lm_head.weight"] = torch.cat([hf_state["lm_head.weight"], absent_head_rows(
            state["decoder.layer_norm.weight"], state["decoder.layer_norm.bias"], absent)])
    config = GPT2Config(
        vocab_size=len(index) + absent, n_positions=positions, n_embd=d, n_layer=layers,
        n_head=dec.layers[0].self_attn.num_heads, n_inner=dec.layers[0].fc1.out_features,
        activation_function=TO_HF_ACTIVATION[args.activation_fn],
        layer_norm_epsilon=float(args.layer_norm_eps), resid_pdrop=float(args.dropout),
        embd_pdrop=float(args.dropout), attn_pdrop=float(args.attention_dropout),
        tie_word_embeddings=tied,
        architectures=["GPT2Model" if mode == "mlm" else "GPT2LMHeadModel"],
        bos_token_id=specials["</s>"], eos_token_id=specials["</s>"],
        pad_token_id=specials.get("<pad>"))
    hf = GPT2LMHeadModel(config)
    if mode == "mlm":  # the trunk alone
        hf = GPT2Model(config)
        hf_state = {k[len("transformer."):]: v for k, v in hf_state.items()
                    if k.startswith("transformer.")}
    extra = {ENERGY_POSITION: state["decoder.embed_positions.weight"][2 + positions:]}
    return hf, hf_state, extra
