"""A converted state dict as a fairseq checkpoint (`model.pt`), built the way
`fairseq-train` builds the model: through fairseq's own parser with the flags of
`train-args.txt`, so that `--restore-file`, `fairseq-eval-lm --path` and
`from_pretrained` rebuild exactly this architecture."""

import contextlib
import io
import logging
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from energy_lm.hf.errors import BridgeError

# tensors of ours that a converter does not provide: the model builds them itself
OWN_PREFIXES = ("energy_head.", "dictionary_fingerprint", "energy_lm_format")


@contextlib.contextmanager
def _quiet():
    """fairseq's parser and task log at INFO and hydra warns on every compose."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def build(folder: Path, task: str, train_args: Sequence[str], tokens_per_sample: int,
          bpe_args: Sequence[str] = ()) -> Tuple[torch.nn.Module, object]:
    """The model fairseq-train builds with these flags on a data folder holding dict.txt
    (parameters drawn with seed 0: the energy head is the only part not converted).
    Returns (model in eval mode, cfg)."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = [str(folder), "--task", task, "--tokens-per-sample", str(tokens_per_sample),
            *bpe_args, *train_args]
    with _quiet():
        args = options.parse_args_and_arch(options.get_training_parser(), argv)
        cfg = convert_namespace_to_omegaconf(args)
        task_obj = tasks.setup_task(cfg.task)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = task_obj.build_model(cfg.model)
    return model.eval(), cfg


def load_converted(model: torch.nn.Module, converted: Dict[str, Tensor]) -> None:
    """Load a converted state dict: every tensor of the model must come from it except
    what the model builds itself (OWN_PREFIXES), every shape must match; anything else is
    a converter bug, reported by key."""
    own = model.state_dict()
    missing = [k for k in own if k not in converted and not k.startswith(OWN_PREFIXES)]
    extra = [k for k in converted if k not in own]
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in converted.items()
             if k in own and v.shape != own[k].shape]
    if missing or extra or wrong:
        raise BridgeError(f"the converted weights do not fit the built model: missing "
                          f"{missing[:4]}, unexpected {extra[:4]}, shapes {wrong[:4]}")
    merged = {k: converted.get(k, v).to(v.dtype) for k, v in own.items()}
    model.load_state_dict(merged, strict=True)


def checkpoint(model: torch.nn.Module, cfg, data: Path) -> Dict:
    """What fairseq-train writes, at update 0 with no optimizer state: `--restore-file`
    (with or without the --reset-* flags) starts a run from it at epoch 1, as a fresh run
    starts; `load_model_ensemble` and `from_pretrained` load it."""
    from omegaconf import OmegaConf

    cfg.task.data = str(data)
    return {"cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
            "args": None, "model": model.state_dict(), "criterion": None,
            "optimizer_history": [{"criterion_name": "none", "optimizer_name": "none",
                                   "lr_scheduler_state": {}, "num_updates": 0}],
            "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0,
                                               "shuffle": True}},
            "last_optimizer_state": None}


def save(state: Dict, path: Path) -> None:
    from energy_lm.patches.checkpoint_safety import atomic_torch_save

    atomic_torch_save(state, str(path))


def write_train_args(path: Path, train_args: List[str]) -> None:
    """train-args.txt: one line of flags, each a shell word (none needs quoting)."""
    bad = [a for a in train_args if not a or any(c.isspace() or c in "'\"$`\\" for c in a)]
    if bad:
        raise BridgeError(f"flags that would need shell quoting: {bad}")
    path.write_text(" ".join(train_args) + "\n")
