"""RoBERTa (`RobertaForMaskedLM`, `RobertaModel`) <-> `roberta_energy`: the key map and
the folds.

- Both count positions from padding index + 1 (HF from its `pad_token_id`, fairseq from
  the dictionary's `<pad>` = 1): HF row pad + 1 + j is fairseq row 2 + j.
- HF adds a token-type row to every token; with one type (as RoBERTa is used) it is a
  constant, folded into every position row.
- HF's LM head (dense, GELU, LayerNorm, tied decoder, bias) is fairseq's `RobertaLMHead`
  (dense, activation, layer_norm, weight, bias): the same computation.
- Post-norm layers, an embedding LayerNorm, no embedding scale: fairseq's RoBERTa, as
  `--arch roberta_energy` builds it.
- The vocabulary: HF's <s>, <pad>, </s>, <unk> are fairseq's four specials and its
  <mask> the symbol fairseq's masked_lm task appends (energy_lm.hf.vocabulary).
"""

from typing import Dict, List

import torch
from torch import Tensor

from energy_lm.data.hf_vocabulary import VocabularyMap
from energy_lm.hf.errors import BridgeError
from energy_lm.hf.fairseq_heads import ABSENT_LOGIT, fresh_head_rows, input_rows, output_rows
from energy_lm.hf.tokenizer_files import added_token_id
from energy_lm.hf.unsupported import refuse

ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_accurate", "gelu_pytorch_tanh": "gelu_accurate",
               "relu": "relu"}
TO_HF_ACTIVATION = {"gelu": "gelu", "gelu_accurate": "gelu_new", "gelu_fast": "gelu_new",
                    "relu": "relu"}
SPECIAL_TOKENS = {"<s>": "<s>", "<pad>": "<pad>", "</s>": "</s>", "<unk>": "<unk>",
                  "<mask>": "<mask>"}


# per layer, ours <-> HF's (weight and bias each)
LAYER_PAIRS = (("self_attn.q_proj", "attention.self.query"),
               ("self_attn.k_proj", "attention.self.key"),
               ("self_attn.v_proj", "attention.self.value"),
               ("self_attn.out_proj", "attention.output.dense"),
               ("self_attn_layer_norm", "attention.output.LayerNorm"),
               ("fc1", "intermediate.dense"), ("fc2", "output.dense"),
               ("final_layer_norm", "output.LayerNorm"))


def _layer_map(source: Dict[str, Tensor], out: Dict[str, Tensor], src: str, dst: str,
               to_hf: bool) -> None:
    for ours, theirs in LAYER_PAIRS:
        a, b = (ours, theirs) if to_hf else (theirs, ours)
        for kind in (".weight", ".bias"):
            out[dst + b + kind] = source[src + a + kind]


def check_config(config) -> None:
    kind = getattr(config, "position_embedding_type", None) or "absolute"
    if kind != "absolute":
        refuse("position_embedding_type", kind, "fairseq's RoBERTa has absolute learned "
               "positions only")
    for name in ("is_decoder", "add_cross_attention"):
        if getattr(config, name, False):
            refuse(name, True, "roberta_energy is a bidirectional encoder without "
                   "cross-attention")
    if config.hidden_act not in ACTIVATIONS:
        refuse("hidden_act", config.hidden_act, f"fairseq has no such activation (have: "
               f"{', '.join(sorted(ACTIVATIONS))})")
    if config.hidden_size % config.num_attention_heads:
        refuse("num_attention_heads", config.num_attention_heads,
               f"does not divide hidden_size={config.hidden_size}")
    if config.pad_token_id is None:
        refuse("pad_token_id", None, "learned positions count from the padding index")


def vocabulary(config, tokenizer: Dict) -> VocabularyMap:
    specials = {}
    for symbol, content in SPECIAL_TOKENS.items():
        token_id = added_token_id(tokenizer, content)
        if token_id is None:
            raise BridgeError(f"tokenizer.json has no {content} token: fairseq's RoBERTa "
                              f"needs <s>, <pad>, </s>, <unk> and <mask>")
        specials[symbol] = token_id
    if specials["<pad>"] != config.pad_token_id:
        raise BridgeError(f"the tokenizer's <pad> is id {specials['<pad>']} but "
                          f"config.pad_token_id is {config.pad_token_id}")
    return VocabularyMap(config.vocab_size, specials)


def max_positions(config) -> int:
    return config.max_position_embeddings - config.pad_token_id - 1


def train_args(config) -> List[str]:
    d = config.hidden_size
    return ["--arch", "roberta_energy", "--encoder-layers", str(config.num_hidden_layers),
            "--encoder-embed-dim", str(d), "--encoder-ffn-embed-dim", str(config.intermediate_size),
            "--encoder-attention-heads", str(config.num_attention_heads),
            "--activation-fn", ACTIVATIONS[config.hidden_act],
            "--layer-norm-eps", repr(float(config.layer_norm_eps)),
            "--max-positions", str(max_positions(config)),
            "--dropout", repr(float(config.hidden_dropout_prob)),
            "--attention-dropout", repr(float(config.attention_probs_dropout_prob))]


def to_fairseq(hf: Dict[str, Tensor], config, index: Tensor, vocab_rows: int,
               fresh_head: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """HF RoBERTa's state dict -> roberta_energy's (energy head and buffers not included).
    fresh_head: the built model's LM head, used when the source has none (RobertaModel)."""
    has_head = "lm_head.dense.weight" in hf
    hf = {k[len("roberta."):] if k.startswith("roberta.") else k: v for k, v in hf.items()}
    d, pad = config.hidden_size, config.pad_token_id
    enc = "encoder.sentence_encoder."
    words = hf["embeddings.word_embeddings.weight"]
    embed = words.new_zeros(vocab_rows, d)
    embed[index] = words
    table = hf["embeddings.position_embeddings.weight"][pad + 1:]  # (positions, d)
    positions = table.new_zeros(table.size(0) + 2, d)
    positions[2:] = table + hf["embeddings.token_type_embeddings.weight"][0]  # one type
    out = {enc + "embed_tokens.weight": embed, enc + "embed_positions.weight": positions,
           enc + "layernorm_embedding.weight": hf["embeddings.LayerNorm.weight"],
           enc + "layernorm_embedding.bias": hf["embeddings.LayerNorm.bias"],
           enc + "version": torch.tensor([3.0])}
    for i in range(config.num_hidden_layers):
        _layer_map(hf, out, f"encoder.layer.{i}.", f"{enc}layers.{i}.", to_hf=False)
    out["encoder.lm_head.weight"] = embed
    if has_head:
        for part in ("dense", "layer_norm"):
            out[f"encoder.lm_head.{part}.weight"] = hf[f"lm_head.{part}.weight"]
            out[f"encoder.lm_head.{part}.bias"] = hf[f"lm_head.{part}.bias"]
        bias = hf["lm_head.bias"]
        out["encoder.lm_head.bias"] = bias.new_zeros(vocab_rows)
        out["encoder.lm_head.bias"][index] = bias
    else:
        out.update({k: v for k, v in fresh_head.items() if k != "encoder.lm_head.weight"})
    return out


def from_fairseq(state: Dict[str, Tensor], index: Tensor, num_layers: int,
                 pad: int = 1) -> Dict[str, Tensor]:
    """roberta_energy's state dict (learned positions, RoBERTa LM head) -> HF
    RobertaForMaskedLM's; index: the dictionary row of each HF id. The position rows
    carry the folded token type; HF's token-type row is zero."""
    enc = "encoder.sentence_encoder."
    positions = state[enc + "embed_positions.weight"][2:]
    d = positions.size(1)
    table = positions.new_zeros(positions.size(0) + pad + 1, d)
    table[pad + 1:] = positions
    out = {"roberta.embeddings.word_embeddings.weight": state[enc + "embed_tokens.weight"][index].clone(),
           "roberta.embeddings.position_embeddings.weight": table,
           "roberta.embeddings.token_type_embeddings.weight": positions.new_zeros(1, d),
           "roberta.embeddings.LayerNorm.weight": state[enc + "layernorm_embedding.weight"],
           "roberta.embeddings.LayerNorm.bias": state[enc + "layernorm_embedding.bias"]}
    for i in range(num_layers):
        _layer_map(state, out, f"{enc}layers.{i}.", f"roberta.encoder.layer.{i}.", to_hf=True)
    for part in ("dense", "layer_norm"):
        out[f"lm_head.{part}.weight"] = state[f"encoder.lm_head.{part}.weight"]
        out[f"lm_head.{part}.bias"] = state[f"encoder.lm_head.{part}.bias"]
    out["lm_head.bias"] = state["encoder.lm_head.bias"][index].clone()
    out["lm_head.decoder.weight"] = out["roberta.embeddings.word_embeddings.weight"]
    out["lm_head.decoder.bias"] = out["lm_head.bias"]
    return out


def check_positions(config) -> None:
    if max_positions(config) < 1:
        raise BridgeError(f"config.max_position_embeddings={config.max_position_embeddings} "
                          f"leaves no position after the padding offset")


def export(model, args, index: Tensor, specials: Dict[str, int], absent: int, mode: str):
    """A roberta_energy model -> (RobertaForMaskedLM where its head is RoBERTa's and mode is
    lm, else RobertaModel with a zero pooler; its state dict; lm_head.safetensors' tensors
    for a CLAP/linear or fresh head). Arguments as gpt2.export."""
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaModel

    from energy_lm.modules.clap import ClapHead, LinearHead

    enc = model.encoder.sentence_encoder
    reasons = []
    if str(args.alibi) != "none":
        reasons.append("ALiBi (RoBERTa has absolute learned positions)")
    if enc.layer_norm is not None or getattr(args, "encoder_normalize_before", False):
        reasons.append("pre-norm layers (RoBERTa is post-norm)")
    if enc.layernorm_embedding is None:
        reasons.append("no embedding LayerNorm (RoBERTa has one)")
    if args.activation_fn not in TO_HF_ACTIVATION:
        reasons.append(f"activation {args.activation_fn}")
    if reasons:
        raise BridgeError("RobertaModel cannot represent " + "; ".join(reasons))
    head = model.encoder.lm_head
    own_head = not isinstance(head, (ClapHead, LinearHead)) and mode == "lm"
    words = input_rows(enc, args)
    if own_head and not torch.equal(words, head.weight.detach()):
        raise BridgeError("RobertaForMaskedLM ties its head to the input embedding, which this "
                          "model transforms (--embed-norm l2, --mask-embedding zero or "
                          "--scale-embedding)")
    layers, d = len(enc.layers), enc.embed_positions.embedding_dim
    state = {k: v.detach() for k, v in model.state_dict().items()}
    state["encoder.sentence_encoder.embed_tokens.weight"] = words
    if not own_head:  # the trunk goes out; the head beside it
        state.update({"encoder.lm_head.dense.weight": torch.zeros(d, d),
                      "encoder.lm_head.dense.bias": torch.zeros(d),
                      "encoder.lm_head.layer_norm.weight": torch.ones(d),
                      "encoder.lm_head.layer_norm.bias": torch.zeros(d),
                      "encoder.lm_head.bias": torch.zeros(len(index))})
    hf_state = from_fairseq(state, index, layers, pad=1)
    if absent:  # fairseq's <unk> as input, probability 0 as output (the head's bias)
        words = hf_state["roberta.embeddings.word_embeddings.weight"]
        words = torch.cat([words, words[specials["<unk>"]].expand(absent, -1)])
        bias = torch.cat([hf_state["lm_head.bias"], torch.full((absent,), ABSENT_LOGIT)])
        hf_state.update({"roberta.embeddings.word_embeddings.weight": words,
                         "lm_head.decoder.weight": words, "lm_head.bias": bias,
                         "lm_head.decoder.bias": bias})
    num_pos = enc.embed_positions.weight.size(0) - 2
    config = RobertaConfig(
        vocab_size=len(index) + absent, hidden_size=d, num_hidden_layers=layers,
        num_attention_heads=enc.layers[0].self_attn.num_heads,
        intermediate_size=enc.layers[0].fc1.out_features,
        hidden_act=TO_HF_ACTIVATION[args.activation_fn],
        max_position_embeddings=num_pos + 2, type_vocab_size=1, pad_token_id=specials["<pad>"],
        bos_token_id=specials["<s>"], eos_token_id=specials["</s>"],
        layer_norm_eps=float(args.layer_norm_eps),
        hidden_dropout_prob=float(args.dropout),
        attention_probs_dropout_prob=float(args.attention_dropout),
        architectures=["RobertaForMaskedLM" if own_head else "RobertaModel"])
    extra = {}
    if own_head:
        hf = RobertaForMaskedLM(config)
    else:
        # AutoModel builds RobertaModel with a pooler, which ours lacks: a zero one, so
        # that the folder loads without "newly initialized" weights (pooler output 0)
        hf = RobertaModel(config)
        hf_state = {k[len("roberta."):]: v for k, v in hf_state.items() if k.startswith("roberta.")}
        hf_state.update({"pooler.dense.weight": torch.zeros(d, d), "pooler.dense.bias": torch.zeros(d)})
        if mode != "mlm":
            weight, bias = (fresh_head_rows(enc, args), None) if mode == "add_head" else \
                output_rows(head)
            bias = torch.zeros(len(index)) if bias is None else bias.detach()[index]
            extra["lm_head.weight"] = torch.cat([weight[index], weight.new_zeros(absent, d)])
            extra["lm_head.bias"] = torch.cat([bias, torch.full((absent,), ABSENT_LOGIT)])
    return hf, hf_state, extra
