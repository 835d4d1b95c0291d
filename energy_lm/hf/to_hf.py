"""`energy-lm-to-hf CHECKPOINT OUT [--data DATA_BIN]`: a checkpoint trained here -> a
folder that stock transformers loads (`AutoModelForCausalLM` / `AutoModelForMaskedLM`
and `AutoTokenizer`, no `trust_remote_code`) and that gives the fairseq model's
log-probs; the energy head beside it (energy_lm.hf.energy_head_file).

- causal LMs with learned positions (tied, untied or CLAP head) -> `GPT2LMHeadModel`:
  what GPT-2 does not have is folded exactly: the sqrt(d) embedding scale and the
  embeddings' L2 norm into the input rows, a CLAP head (beta * normalize(E)) into an
  untied `lm_head`;
- causal ALiBi: refused (no stock class reproduces our models: BLOOM, whose slopes are
  ours, needs an embedding LayerNorm and tanh GELU, MPT a model without biases);
- RoBERTa with its own LM head -> `RobertaForMaskedLM`; with a CLAP or linear head the
  trunk goes out as `RobertaModel` and the head as `lm_head.safetensors` (logits =
  h @ weight.T + bias);
- a BPE token the training data never produced has no dictionary row: it gets an HF id
  after the dictionary's, the input row of <unk> and probability exactly 0
  (energy_lm.hf.tokenizer_export says why the tokenizer needs it).
Modes, as the headless (CWT) workflow publishes its checkpoints: `lm` (default) the
model with its head; `mlm` the trunk alone (`GPT2Model` / `RobertaModel`, `AutoModel`);
`add_head` the trunk with a fresh LM head made as energy-lm-add-head makes one (a copy
of the input embedding rows as the trunk saw them), for a CE fine-tune in transformers.
The dictionary comes from --data, else from the data folder the checkpoint names.
"""

import json
import logging
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from energy_lm.data.hf_vocabulary import DICT_FILE, MAP_FILE, VocabularyMap
from energy_lm.hf import agreement, gpt2, roberta
from energy_lm.hf.dependency import require
from energy_lm.hf.energy_head_file import (
    ENERGY_KEY,
    ENERGY_POSITION,
    energy_entry,
    write_energy_head,
)
from energy_lm.hf.errors import BridgeError
from energy_lm.hf.folders import check_target, staged_folder
from energy_lm.hf.tokenizer_export import build_tokenizer, copy_source_tokenizer, count_absent
from energy_lm.hf.tokenizer_files import read_tokenizer

logger = logging.getLogger("energy_lm.to_hf")
LM_HEAD_FILE = "lm_head.safetensors"
MODES = ("lm", "mlm", "add_head")


def _data_folder(checkpoint: Path, data: Optional[Path]) -> Path:
    if data is not None:
        folder = Path(data)
    else:
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # unpickling errors have no common base
            raise BridgeError(f"cannot read checkpoint {checkpoint}: the file is truncated, "
                              f"corrupt or not a PyTorch checkpoint ({type(err).__name__})"
                              ) from None
        cfg = state.get("cfg") or {}
        named = (cfg.get("task") or {}).get("data") if isinstance(cfg, dict) else None
        folder = Path(str(named).split(":")[0]) if named else checkpoint.parent
    if not (folder / DICT_FILE).is_file():
        raise BridgeError(f"no dictionary for {checkpoint}: {folder / DICT_FILE} does not exist; "
                          f"give --data the data-bin the model was trained on")
    return folder


def _load(checkpoint: Path, data: Path):
    from fairseq import checkpoint_utils

    from energy_lm.models.roberta_energy import RobertaEnergyModel
    from energy_lm.models.transformer_lm_energy import TransformerLMEnergyModel

    from energy_lm.patches.checkpoint_errors import CheckpointReadError

    try:
        models, cfg, _task = checkpoint_utils.load_model_ensemble_and_task(
            [str(checkpoint)], arg_overrides={"data": str(data)})
    except CheckpointReadError as err:
        raise BridgeError(str(err)) from None
    model = models[0].eval().float()
    if not isinstance(model, (TransformerLMEnergyModel, RobertaEnergyModel)):
        raise BridgeError(f"{checkpoint} holds a {type(model).__name__}: energy-lm-to-hf "
                          f"exports transformer_lm_energy and roberta_energy models")
    return model, cfg


def _vocabulary(model, data: Path, dictionary) -> Tuple[Optional[VocabularyMap], Tensor]:
    """(the source vocabulary of an imported model, or None; index: the dictionary row
    of each HF id)."""
    if (data / MAP_FILE).is_file():
        vocab = VocabularyMap.load(data)
        return vocab, vocab.fairseq_index(dictionary)
    if getattr(model.trunk, "unused_symbols", None) is not None:
        raise BridgeError(f"the model masks fairseq's specials (--output-mask specials) but "
                          f"{data} has no {MAP_FILE}: give --data the folder energy-lm-from-hf "
                          f"or energy-lm-prepare --tokenizer-from wrote")
    return None, torch.arange(len(dictionary))


def _input_rows(trunk, args) -> Tensor:
    """The rows the trunk adds to its positions: scale * (normalised) embedding."""
    weight = trunk.embed_tokens.weight.detach()
    if str(getattr(args, "embed_norm", "none")) == "l2":
        weight = F.normalize(weight, dim=-1)
    if getattr(trunk.embed_tokens, "zero_index", None) is not None:
        weight = weight.clone()
        weight[trunk.embed_tokens.zero_index] = 0.0
    return weight * trunk.embed_scale if hasattr(trunk, "embed_scale") else weight


def _fresh_head_rows(trunk, args) -> Tensor:
    """energy-lm-add-head's new head: the input embedding rows as the trunk saw them
    (L2-normalised when the model normalises them), no scale, no bias."""
    weight = trunk.embed_tokens.weight.detach()
    return F.normalize(weight, dim=-1) if str(getattr(args, "embed_norm", "none")) == "l2" \
        else weight.clone()


def _output_rows(head) -> Tuple[Tensor, Optional[Tensor]]:
    """(W, bias) with logits = features @ W.T + bias, for a tied/untied Linear or a CLAP head."""
    from energy_lm.modules.clap import ClapHead

    if isinstance(head, ClapHead):
        return (head.beta.detach() * F.normalize(head.weight.detach(), dim=-1)), None
    return head.weight.detach(), getattr(head, "bias", None)


def _special_ids(vocab, dictionary) -> Dict[str, int]:
    """The HF ids of fairseq's special symbols (HF id = dictionary index without a map)."""
    if vocab is not None:
        return dict(vocab.specials)
    return {s: dictionary.index(s) for s in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
            if s in dictionary.indices}


# the logit of a token the dictionary has no row for: exp(-1e4 - max logit) is 0 in
# float32 and float64 alike
ABSENT_LOGIT = -1e4


def _absent_head_rows(norm_weight: Tensor, norm_bias: Tensor, rows: int) -> Tensor:
    """Head rows w whose logit after the final LayerNorm is ABSENT_LOGIT whatever the
    input: with w_i = c / g_i, (g * n + b) . w = c * (sum n_i + sum b_i / g_i), and a
    LayerNorm's n sums to 0, so the logit is c * sum(b_i / g_i)."""
    g, b = norm_weight.double(), norm_bias.double()
    total = float((b / g).sum()) if bool((g != 0).all()) else 0.0
    if not abs(total) > 1e-6 * float((b / g).abs().sum()):
        raise BridgeError("the final LayerNorm leaves no direction with a constant logit "
                          "(a zero weight, or sum(bias / weight) = 0): the BPE tokens without a "
                          "dictionary row cannot be given probability 0")
    row = (ABSENT_LOGIT / total) / g
    return row.to(norm_weight.dtype).expand(rows, -1).clone()


def _gpt2_export(model, args, index: Tensor, specials: Dict[str, int], absent: int,
                 mode: str):
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
    if args.activation_fn not in gpt2.TO_HF_ACTIVATION:
        reasons.append(f"activation {args.activation_fn}")
    if float(getattr(args, "proposal_uniform_mix", 0.0) or 0.0):
        reasons.append("--proposal-uniform-mix (a handicapped proposal, for tests)")
    if reasons:
        raise BridgeError("GPT2LMHeadModel cannot represent " + "; ".join(reasons))
    layers, d = len(dec.layers), dec.embed_dim
    positions = dec.max_positions()
    state = {k: v.detach() for k, v in model.state_dict().items()}
    wte = _input_rows(dec, args)
    head, bias = (_fresh_head_rows(dec, args), None) if mode == "add_head" else \
        _output_rows(dec.output_projection)
    tied = torch.equal(wte, head) and not absent
    state["decoder.embed_tokens.weight"] = wte
    state["decoder.output_projection.weight"] = head
    hf_state = gpt2.from_fairseq(state, index, layers, d, positions, tied)
    if absent:  # fairseq's <unk> as input, probability 0 as output
        unk = hf_state["transformer.wte.weight"][specials["<unk>"]]
        hf_state["transformer.wte.weight"] = torch.cat(
            [hf_state["transformer.wte.weight"], unk.expand(absent, -1)])
        hf_state["lm_head.weight"] = torch.cat([hf_state["lm_head.weight"], _absent_head_rows(
            state["decoder.layer_norm.weight"], state["decoder.layer_norm.bias"], absent)])
    config = GPT2Config(
        vocab_size=len(index) + absent, n_positions=positions, n_embd=d, n_layer=layers,
        n_head=dec.layers[0].self_attn.num_heads, n_inner=dec.layers[0].fc1.out_features,
        activation_function=gpt2.TO_HF_ACTIVATION[args.activation_fn],
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


def _roberta_export(model, args, index: Tensor, specials: Dict[str, int], absent: int,
                    mode: str):
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
    if args.activation_fn not in roberta.TO_HF_ACTIVATION:
        reasons.append(f"activation {args.activation_fn}")
    if reasons:
        raise BridgeError("RobertaModel cannot represent " + "; ".join(reasons))
    head = model.encoder.lm_head
    own_head = not isinstance(head, (ClapHead, LinearHead)) and mode == "lm"
    words = _input_rows(enc, args)
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
    hf_state = roberta.from_fairseq(state, index, layers, pad=1)
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
        hidden_act=roberta.TO_HF_ACTIVATION[args.activation_fn],
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
            weight, bias = (_fresh_head_rows(enc, args), None) if mode == "add_head" else \
                _output_rows(head)
            bias = torch.zeros(len(index)) if bias is None else bias.detach()[index]
            extra["lm_head.weight"] = torch.cat([weight[index], weight.new_zeros(absent, d)])
            extra["lm_head.bias"] = torch.cat([bias, torch.full((absent,), ABSENT_LOGIT)])
    return hf, hf_state, extra


def convert(checkpoint: Path, out: Path, data: Optional[Path] = None, force: bool = False,
            mode: str = "lm") -> Dict:
    require()
    if mode not in MODES:
        raise BridgeError(f"--mode {mode!r}: choose one of {', '.join(MODES)}")
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise BridgeError(f"checkpoint not found: {checkpoint}")
    check_target(Path(out), force)
    data = _data_folder(checkpoint, data)
    model, cfg = _load(checkpoint, data)
    args = model.trunk.args if hasattr(model.trunk, "args") else cfg.model
    causal = hasattr(model, "decoder")
    dictionary = model.trunk.dictionary
    vocab, index = _vocabulary(model, data, dictionary)
    specials = _special_ids(vocab, dictionary)
    absent = count_absent(data, dictionary) if vocab is None else 0
    hf, hf_state, extra = (_gpt2_export if causal else _roberta_export)(model, args, index,
                                                                        specials, absent, mode)
    missing, unexpected = hf.load_state_dict(hf_state, strict=False)
    missing = [k for k in missing if not k.endswith(("attn.bias", "attn.masked_bias"))]
    if missing or unexpected:
        raise BridgeError(f"the exported weights do not fit {type(hf).__name__}: missing "
                          f"{missing[:4]}, unexpected {unexpected[:4]}")
    hf.eval()
    energy_state = {k: v.detach().float() for k, v in model.energy_head.state_dict().items()}
    if extra.get(ENERGY_POSITION) is not None and extra[ENERGY_POSITION].numel():
        energy_state[ENERGY_POSITION] = extra.pop(ENERGY_POSITION).float()
    extra.pop(ENERGY_POSITION, None)
    hf.config.update({ENERGY_KEY: energy_entry(
        model.energy_head.kind, "the trunk's last states before its final norm"
        if model.energy_head.reads_pre_norm else "the trunk's final states")})
    family = "gpt2" if causal else "roberta"
    with staged_folder(Path(out), force) as stage:
        hf.save_pretrained(str(stage))
        write_energy_head(stage, energy_state)
        if extra:
            from safetensors.torch import save_file

            save_file(extra, str(stage / LM_HEAD_FILE))
        if vocab is not None:
            copy_source_tokenizer(data, stage)
        else:
            build_tokenizer(data, dictionary, stage, family)
        measured = _check(model, stage, vocab, index, dictionary, causal, mode)
        if extra and mode == "lm":
            logger.warning("the model's head is not RoBERTa's: %s holds the trunk "
                           "(RobertaModel) and %s the head (logits = h @ weight.T + bias)",
                           out, LM_HEAD_FILE)
    return {"architecture": hf.config.architectures[0], "agreement": measured}


def _check(model, stage: Path, vocab, index: Tensor, dictionary, causal: bool, mode: str):
    """Load the folder with stock transformers and compare it with ours: the log-probs
    (mode lm, where transformers has the head), else the trunk's final states."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

    tokenizer = read_tokenizer(stage)
    ids = agreement.probe_ids(tokenizer, len(index))
    arch = json.loads((stage / "config.json").read_text())["architectures"][0]
    specials = _special_ids(vocab, dictionary)
    if causal:
        if arch == "GPT2LMHeadModel" and mode == "lm":
            hf = AutoModelForCausalLM.from_pretrained(str(stage), dtype=torch.float32)
            return agreement.causal(model, hf, ids, specials["</s>"], index).check()
        hf = AutoModel.from_pretrained(str(stage), dtype=torch.float32)  # the trunk
        return agreement.causal_states(model, hf, ids, specials["</s>"], index).check()
    loader = AutoModelForMaskedLM if arch == "RobertaForMaskedLM" else AutoModel
    hf = loader.from_pretrained(str(stage), dtype=torch.float32)
    return agreement.masked(model, hf, ids, specials["<s>"], specials["</s>"],
                            specials["<mask>"], index).check()
