"""`energy-lm-from-hf SRC OUT`: a Hugging Face model (a `save_pretrained` folder, or a
hub id downloaded first where a network exists) -> fairseq's hub layout in OUT:

    model.pt        the fairseq checkpoint (transformer_lm_energy / roberta_energy)
    dict.txt        the source's token ids as symbols (energy_lm.hf.vocabulary)
    hf-vocab.json   which fairseq symbols stand for which source special tokens
    tokenizer.json, tokenizer_config.json   the source's tokenizer, as it was
    vocab.json, merges.txt                  the same BPE for fairseq's hub (energy_byte_bpe),
                                            for a GPT-2-style byte-level BPE; any other
                                            tokenizer goes through tokenizer.json
                                            (energy_hf_tokenizer)
    train-args.txt  the fairseq-train flags that rebuild the architecture

`--restore-file OUT/model.pt` continues it (e.g. with `--criterion monarc`: the energy
head starts at E = 0, so the first update's LM loss is the source's cross-entropy);
`from_pretrained(OUT)` and `fairseq-eval-lm --path OUT/model.pt` load it. A folder
written by `energy-lm-to-hf` carries its energy head, which comes back too.
"""

import json
import logging
from pathlib import Path
from typing import Dict

import torch

from energy_lm.hf import agreement, fairseq_checkpoint, gpt2, llama, neox, roberta
from energy_lm.hf.dependency import require
from energy_lm.hf.energy_head_file import ENERGY_KEY, ENERGY_POSITION, read_energy_head
from energy_lm.hf.errors import BridgeError
from energy_lm.hf.folders import check_target, staged_folder
from energy_lm.hf.tokenizer_files import (
    check_byte_level_bpe,
    copy_tokenizer,
    document_prefix,
    gpt2_byte_level,
    read_tokenizer,
    tokenizer_folder,
)
from energy_lm.hf.unsupported import SUPPORTED, architecture_of

logger = logging.getLogger("energy_lm.from_hf")
TRAIN_ARGS = "train-args.txt"
BPE_ARGS = ["--bpe", "energy_byte_bpe"]


def source_folder(src: str) -> Path:
    """A local folder as it is; anything else is a hub id, downloaded (needs a network)."""
    path = Path(src)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BridgeError(f"{src} has no config.json: not a save_pretrained folder")
        return path
    if path.exists() or src.startswith((".", "/")) or src.count("/") > 1:
        raise BridgeError(f"{src} is not a folder written by save_pretrained")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(src))
    except Exception as err:  # the hub's errors have no common base
        raise BridgeError(f"{src}: not a local folder, and the hub download failed "
                          f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
                          ) from None


def _load_source(src: Path, arch: str):
    import transformers

    try:
        return getattr(transformers, arch).from_pretrained(str(src), dtype=torch.float32).eval()
    except (OSError, ValueError) as err:
        raise BridgeError(f"{src}: transformers cannot load its weights: "
                          f"{str(err).splitlines()[0]}") from None


def convert(src: str, out: Path, force: bool = False) -> Dict:
    """Write OUT; returns what was measured (the agreement on the probe text)."""
    require()
    from transformers import AutoConfig

    folder = source_folder(src)
    check_target(Path(out), force)
    try:
        config = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as err:
        raise BridgeError(f"{folder}/config.json: {str(err).splitlines()[0]}") from None
    arch = architecture_of(config)
    family = {"gpt2": gpt2, "llama": llama, "neox": neox, "roberta": roberta}[SUPPORTED[arch]]
    causal = family is not roberta
    family.check_config(config)
    energy = getattr(config, ENERGY_KEY, None)
    with staged_folder(Path(out), force) as stage:
        tok_dir = tokenizer_folder(folder, stage / "tokenizer-scratch")
        tokenizer = read_tokenizer(tok_dir)
        vocab = family.vocabulary(config, tokenizer)
        if causal:  # any tokenizer; a document starts as its post-processor starts one
            vocab = vocab.with_prefix(document_prefix(tokenizer, vocab.size))
        else:
            check_byte_level_bpe(tokenizer)
        bpe_args = BPE_ARGS if gpt2_byte_level(tokenizer) and not vocab.document_prefix else \
            ["--bpe", "energy_hf_tokenizer", "--hf-tokenizer-json",
             str(Path(out).resolve() / "tokenizer.json")]
        vocab.save(stage)
        copy_tokenizer(tok_dir, stage, tokenizer)
        if tok_dir != folder:
            import shutil

            shutil.rmtree(tok_dir)
        args = family.train_args(config)
        kind, energy_state = read_energy_head(folder, energy) if energy is not None else \
            ("seed", None)  # the default head, starting at E = 0
        args += ["--energy-head", kind]
        source = _load_source(folder, arch)
        if causal:
            length, rows = family.positions_of(config)
            model, cfg = fairseq_checkpoint.build(stage, "language_modeling", args, length,
                                                  bpe_args)
            index = vocab.fairseq_index(model.decoder.dictionary)
            state = family.to_fairseq(source.state_dict(), config, index,
                                      len(model.decoder.dictionary), rows)
        else:
            length = roberta.max_positions(config)
            model, cfg = fairseq_checkpoint.build(stage, "masked_lm", args, length, BPE_ARGS)
            dictionary = model.encoder.dictionary
            index = vocab.fairseq_index(dictionary)
            head = {k: v for k, v in model.state_dict().items() if k.startswith("encoder.lm_head.")}
            state = roberta.to_fairseq(source.state_dict(), config, index, len(dictionary), head)
            if "lm_head.dense.weight" not in source.state_dict():
                beside = (" (lm_head.safetensors, the CLAP or linear head energy-lm-to-hf "
                          "wrote beside it, is not read back)"
                          if (folder / "lm_head.safetensors").is_file() else "")
                logger.warning("%s has no LM head (RobertaModel): the MLM head is new "
                               "(fairseq's initialisation)%s; its pooler is not carried over",
                               arch, beside)
        if energy_state is not None:
            position = energy_state.pop(ENERGY_POSITION, None)
            if position is not None and "decoder.embed_positions.weight" in state:
                # the energy's own position row (learned positions only)
                state["decoder.embed_positions.weight"][-position.size(0):] = position
            state.update({"energy_head." + k: v for k, v in energy_state.items()})
        fairseq_checkpoint.load_converted(model, state)
        ids = agreement.probe_ids(tokenizer, vocab.size)
        if causal:
            measured = agreement.causal(model, source, ids, vocab.specials["</s>"], index)
        else:
            measured = agreement.masked(model, source, ids, vocab.specials["<s>"],
                                        vocab.specials["</s>"], vocab.specials["<mask>"], index)
        measured.check()
        fairseq_checkpoint.save(fairseq_checkpoint.checkpoint(model, cfg, Path(out).resolve()),
                                stage / "model.pt")
        fairseq_checkpoint.write_train_args(stage / TRAIN_ARGS, args)
        (stage / "source.json").write_text(json.dumps(
            {"source": str(src), "architecture": arch, "model_type": config.model_type,
             "agreement": measured.describe()}, indent=1) + "\n")
    return {"architecture": arch, "agreement": measured, "train_args": args}
