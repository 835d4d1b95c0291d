"""`energy-lm-add-head`: give a headless (CWT-trained) checkpoint an LM/MLM head.

    energy-lm-add-head checkpoints/checkpoint_last.pt headed.pt
    fairseq-train DATA --arch SAME_ARCH --untied-head --restore-file headed.pt \\
        --reset-optimizer --reset-dataloader --reset-meters --reset-lr-scheduler \\
        --criterion cross_entropy ...                                       # the CE fine-tune

The new head is an untied `Linear(d, V, bias=False)` initialised as a copy of the input
embedding rows exactly as the trunk saw them (L2-normalised when the model normalises
its embeddings), as docs/methods.md section 3 describes: causal models get fairseq's untied
`output_projection`, RoBERTa-family models a bias-free `lm_head`; the checkpoint's config
gets `--untied-head`, so fine-tune with the same arch plus `--untied-head`. The optimizer
state is dropped (the parameter set changed).
"""

import argparse
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn.functional as F


class AddHeadError(ValueError):
    pass


def _get(model_cfg, key, default=None):
    """The model config is a dict (dataclass models) or an argparse.Namespace (RoBERTa)."""
    if isinstance(model_cfg, dict):
        return model_cfg.get(key, default)
    return getattr(model_cfg, key, default)


def _set(model_cfg, **values) -> None:
    for key, value in values.items():
        if isinstance(model_cfg, dict):
            model_cfg[key] = value
        else:
            setattr(model_cfg, key, value)


def _embed_norm(model_cfg) -> str:
    """The embedding norm the trunk used: `auto` means l2 with a CLAP head (as
    energy_lm.models.energy_options resolves it when the model is built)."""
    norm = str(_get(model_cfg, "embed_norm", "none"))
    if norm == "auto":
        norm = "l2" if _get(model_cfg, "clap_head", False) else "none"
    return norm


def _head_rows(weight: torch.Tensor, norm: str) -> torch.Tensor:
    rows = weight.detach().clone().float()
    if norm == "l2":
        rows = F.normalize(rows, dim=-1)
    return rows.to(weight.dtype)


def add_head(state: dict) -> dict:
    """A fairseq checkpoint dict (with a plain-container `cfg`) -> the same with a head."""
    model_cfg = state["cfg"]["model"]
    weights = state["model"]
    # written out: the head is no longer CLAP, and `auto` would then mean none
    norm = _embed_norm(model_cfg)
    _set(model_cfg, embed_norm=norm)
    if "encoder.sentence_encoder.embed_tokens.weight" in weights:  # RoBERTa family
        if _get(model_cfg, "untied_head") is None:
            raise AddHeadError("only energy_lm RoBERTa-family checkpoints (roberta_energy "
                               "and its presets) can take a linear MLM head")
        for key in [k for k in weights if k.startswith("encoder.lm_head.")]:
            del weights[key]
        weights["encoder.lm_head.weight"] = _head_rows(
            weights["encoder.sentence_encoder.embed_tokens.weight"], norm)
        _set(model_cfg, untied_head=True, clap_head=False)
    elif "decoder.embed_tokens.weight" in weights:  # causal LM
        if _get(model_cfg, "untied_head") is None:
            raise AddHeadError("only energy_lm causal checkpoints (transformer_lm_energy and "
                               "its presets) can take an untied head here")
        weights.pop("decoder.output_projection.beta", None)  # a CLAP head's temperature
        weights["decoder.output_projection.weight"] = _head_rows(
            weights["decoder.embed_tokens.weight"], norm)
        _set(model_cfg, untied_head=True, share_decoder_input_output_embed=False, clap_head=False)
    else:
        raise AddHeadError("not a RoBERTa or transformer LM checkpoint: no input embedding found")
    state.pop("last_optimizer_state", None)  # fine-tune with --reset-optimizer
    return state


def check_head_is_untrained(state: dict, src: Path) -> None:
    """A head that training produced is not replaced without --force: the checkpoint's
    criterion must be headless (cwt) and it must not carry an added head already."""
    model_cfg = state["cfg"]["model"]
    if _get(model_cfg, "untied_head"):
        raise AddHeadError(f"{src} already has an untied head (it was made by "
                           f"energy-lm-add-head or trained with --untied-head); --force "
                           f"replaces it")
    criterion = (state["cfg"].get("criterion") or {}).get("_name")
    if criterion not in (None, "cwt"):
        raise AddHeadError(f"{src} was trained with --criterion {criterion}, so its head is "
                           f"trained; --force replaces it with a copy of the embeddings")


def convert(src: Path, dest: Path, force: bool = False) -> Path:
    from fairseq import checkpoint_utils
    from omegaconf import OmegaConf

    from energy_lm.patches.checkpoint_safety import atomic_torch_save

    state = checkpoint_utils.load_checkpoint_to_cpu(str(src))
    cfg = state.get("cfg")
    if cfg is None:
        raise AddHeadError(f"{src} has no config")
    if OmegaConf.is_config(cfg):  # written as fairseq writes it: a plain container
        state["cfg"] = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    if not force:
        check_head_is_untrained(state, src)
    state["args"] = None
    add_head(state)
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(state, str(dest))  # never a half-written checkpoint
    return dest


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="energy-lm-add-head", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a headless (CWT) checkpoint")
    parser.add_argument("output", type=Path, help="where to write the headed checkpoint")
    parser.add_argument("--force", action="store_true",
                        help="replace a trained or added head, and overwrite an existing output")
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        parser.error(f"checkpoint not found: {args.checkpoint}")
    if args.output.exists() and not args.force:
        same = args.output.resolve() == args.checkpoint.resolve()
        parser.error(f"{args.output} {'is the input checkpoint' if same else 'exists'}; "
                     f"--force overwrites it (written atomically)")
    try:
        out = convert(args.checkpoint, args.output, force=args.force)
    except AddHeadError as err:
        parser.error(str(err))
    print(f"wrote {out}")


def cli_main() -> None:
    import energy_lm  # noqa: F401  (compat fixes and registrations for the load)

    main()


if __name__ == "__main__":
    cli_main()
