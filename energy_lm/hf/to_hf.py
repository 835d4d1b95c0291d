"""`energy-lm-to-hf CHECKPOINT OUT [--data DATA_BIN]`: a checkpoint trained here -> a
folder that stock transformers loads (`AutoModelForCausalLM` / `AutoModelForMaskedLM`
and `AutoTokenizer`, no `trust_remote_code`) and that gives the fairseq model's
log-probs; the energy head beside it (energy_lm.hf.energy_head_file).

- causal LMs with learned positions (tied, untied or CLAP head) -> `GPT2LMHeadModel`:
  what GPT-2 does not have is folded exactly: the sqrt(d) embedding scale and the
  embeddings' L2 norm into the input rows, a CLAP head (beta * normalize(E)) into an
  untied `lm_head`;
- causal LMs with rotary positions and a SwiGLU FFN (transformer_lm_llama_*, or a model
  imported from one) -> `LlamaForCausalLM` (RMSNorm), `Qwen2ForCausalLM` (RMSNorm, q/k/v
  biases) or `StableLmForCausalLM` (LayerNorm, partial rotary) (energy_lm.hf.llama);
  with rotary positions and an ungated FFN -> `GPTNeoXForCausalLM` (energy_lm.hf.neox);
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
from torch import Tensor

from energy_lm.data.hf_vocabulary import DICT_FILE, MAP_FILE, VocabularyMap
from energy_lm.hf import agreement, gpt2, llama, neox, roberta
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


def _exporter(model, args):
    """The family module whose stock class represents this model."""
    if not hasattr(model, "decoder"):
        return roberta.export
    rotary = float(getattr(args, "rotary_fraction", 0.0) or 0.0)
    gated = str(getattr(args, "gated_ffn", "none")) != "none"
    if gated or str(getattr(args, "norm", "layer")) != "layer":
        return llama.export  # Llama, Qwen2 or StableLM
    if rotary or getattr(args, "parallel_residual", False):
        return neox.export
    return gpt2.export


def _special_ids(vocab, dictionary) -> Dict[str, int]:
    """The HF ids of fairseq's special symbols (HF id = dictionary index without a map)."""
    if vocab is not None:
        return dict(vocab.specials)
    return {s: dictionary.index(s) for s in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
            if s in dictionary.indices}


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
    hf, hf_state, extra = _exporter(model, args)(model, args, index, specials, absent, mode)
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
        if arch in ("GPT2LMHeadModel", *llama.CLASSES, *neox.CLASSES) and mode == "lm":
            hf = AutoModelForCausalLM.from_pretrained(str(stage), dtype=torch.float32)
            return agreement.causal(model, hf, ids, specials["</s>"], index).check()
        hf = AutoModel.from_pretrained(str(stage), dtype=torch.float32)  # the trunk
        return agreement.causal_states(model, hf, ids, specials["</s>"], index).check()
    loader = AutoModelForMaskedLM if arch == "RobertaForMaskedLM" else AutoModel
    hf = loader.from_pretrained(str(stage), dtype=torch.float32)
    return agreement.masked(model, hf, ids, specials["<s>"], specials["</s>"],
                            specials["<mask>"], index).check()
