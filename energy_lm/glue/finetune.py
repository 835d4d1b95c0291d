"""Fine-tune one GLUE task: `fairseq-hydra-train` with the task's YAML
(energy_lm/configs/glue/<task>.yaml), from a checkpoint or from random initialisation.

    python -m energy_lm.glue.finetune glue-bin/RTE-bin --checkpoint ckpt/checkpoint_best.pt \\
        --out runs/RTE
    python -m energy_lm.glue.finetune glue-bin/RTE-bin --random-init --arch roberta_zero_clap_tiny \\
        --out runs/RTE-scratch --cpu --max-update 300 --batch-size 16 --lr 1e-4 \\
        -- ++model.encoder_layers=2 dataset.num_workers=0    # hydra overrides after `--`

The task comes from the data folder's glue.json (`energy_lm.glue.preprocess` writes it)
unless `--task` says. From a checkpoint, the model is the checkpoint's: its arch and
every field that shapes its weights (layers, sizes, ALiBi, CLAP head, ...) are passed
as `++model.<field>=<value>`, and a learned-position model keeps its position table
(`task.max_positions`, longer inputs truncated), so the pretrained weights load exactly;
`checkpoint.restore_file` + the YAML's reset flags start a fresh optimizer, schedule and
data order. A checkpoint that does not exist is an error here (fairseq would silently
start from scratch). `--max-update N` also sets the warmup to 6% of N unless
`--warmup-updates` is given. Without CUDA the run is on the CPU (`common.cpu=true`,
no AMP).

OUT gets checkpoint_best.pt / checkpoint_last.pt, train.log (all fairseq printed),
run.json (task, source, command, wall time) and hydra/. An OUT that already holds a run
is refused unless `--overwrite`.
"""

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from energy_lm.cli.errors import log_to_stdout, run_reporting_errors
from energy_lm.configs import config_dir
from energy_lm.glue.tasks import GlueError, GlueTask, get_task

logger = logging.getLogger("energy_lm.glue.finetune")

DEFAULT_CONFIG_DIR = config_dir("glue")
WARMUP_SHARE = 0.06
# model fields that decide the shapes or the function of the pretrained weights
ARCH_FIELDS = ("encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim",
               "encoder_attention_heads", "activation_fn", "encoder_normalize_before",
               "layernorm_embedding", "untie_weights_roberta", "alibi", "clap_head",
               "embed_norm", "mask_embedding", "scale_embedding", "untied_head", "energy_head")
RUN_FILES = ("checkpoint_best.pt", "checkpoint_last.pt", "train.log", "run.json")


def hydra_value(value) -> str:
    """A value as a hydra override writes it (quoted unless plainly safe: paths with
    spaces, `=`, brackets ...)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    text = str(value)
    if re.fullmatch(r"[\w./+-]+", text):
        return text
    return "'" + text.replace("'", "\\'") + "'"


def checkpoint_model(path: Path) -> Dict:
    """The model config of a fairseq checkpoint, as a plain dict."""
    from fairseq.checkpoint_utils import load_checkpoint_to_cpu
    from omegaconf import OmegaConf

    state = load_checkpoint_to_cpu(str(path))
    model = state["cfg"]["model"] if state.get("cfg") is not None else state["args"]
    if OmegaConf.is_config(model):
        return OmegaConf.to_container(model, resolve=True)
    return dict(model) if isinstance(model, dict) else dict(vars(model))


def model_overrides(model: Dict) -> List[str]:
    """Hydra overrides that rebuild the checkpoint's model for sentence_prediction."""
    arch = model.get("_name") or model.get("arch")
    if not arch:
        raise GlueError("the checkpoint's config names no model arch")
    overrides = [f"model._name={arch}"]
    overrides += [f"++model.{key}={hydra_value(model[key])}" for key in ARCH_FIELDS if key in model]
    learned_positions = model.get("alibi", "none") == "none" and not model.get(
        "no_token_positional_embeddings", False)
    if learned_positions and model.get("max_positions"):  # the position table's size
        overrides.append(f"task.max_positions={int(model['max_positions'])}")
    return overrides


def hydra_train_command() -> List[str]:
    script = Path(sys.executable).parent / "fairseq-hydra-train"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fairseq_cli.hydra_train"]


def read_task(data: Path, name: Optional[str]) -> GlueTask:
    if name:
        return get_task(name)
    meta = data / "glue.json"
    if not meta.is_file():
        raise GlueError(f"{meta}: no such file; give --task (or preprocess with "
                        f"energy_lm.glue.preprocess)")
    return get_task(json.loads(meta.read_text())["task"])


def build_command(args, task: GlueTask, out: Path) -> List[str]:
    import torch

    overrides = [f"task.data={hydra_value(args.data.resolve())}",
                 f"checkpoint.save_dir={hydra_value(out)}", f"hydra.run.dir={hydra_value(out / 'hydra')}"]
    if args.checkpoint is not None:
        overrides.append(f"checkpoint.restore_file={hydra_value(args.checkpoint.resolve())}")
        overrides += model_overrides(checkpoint_model(args.checkpoint))
    else:  # fairseq's own default: this run's checkpoint_last.pt, absent in a fresh OUT
        overrides.append("checkpoint.restore_file=checkpoint_last.pt")
    if args.arch:
        overrides.append(f"model._name={args.arch}")
    if args.cpu or not torch.cuda.is_available():
        overrides += ["common.cpu=true", "common.amp=false"]
    if args.max_update is not None:
        overrides.append(f"optimization.max_update={args.max_update}")
        if args.warmup_updates is None:
            overrides.append(f"lr_scheduler.warmup_updates={round(WARMUP_SHARE * args.max_update)}")
    if args.warmup_updates is not None:
        overrides.append(f"lr_scheduler.warmup_updates={args.warmup_updates}")
    if args.batch_size is not None:
        overrides.append(f"dataset.batch_size={args.batch_size}")
    if args.lr is not None:
        overrides.append(f"optimization.lr=[{args.lr}]")
    if args.seed is not None:
        overrides.append(f"common.seed={args.seed}")
    return [*hydra_train_command(), "--config-dir", str(args.config_dir.resolve()),
            "--config-name", task.config, *merge_overrides(overrides + list(args.overrides))]


def merge_overrides(overrides: List[str]) -> List[str]:
    """One override per key, the later winning, so run.json shows what ran. A key that
    any of them forces with `++` (add or replace) keeps the `++`: a plain or `+`
    override of a key the YAML lacks, or that `++` added, would fail."""
    merged: Dict[str, tuple] = {}
    for item in overrides:
        key, _, value = item.partition("=")
        name = key.lstrip("+")
        prefix = key[:len(key) - len(name)]
        if name in merged and "++" in (prefix, merged[name][0]):
            prefix = "++"
        merged.pop(name, None)  # re-insert: keep the order of the last occurrence
        merged[name] = (prefix, value)
    return [f"{prefix}{name}={value}" for name, (prefix, value) in merged.items()]


def prepare_out(out: Path, overwrite: bool) -> None:
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise GlueError(f"{out} already holds a run ({', '.join(existing)}); use --overwrite "
                        f"or another --out")
    for name in existing:
        (out / name).unlink()
    shutil.rmtree(out / "hydra", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def run(cmd: List[str], log_path: Path, echo_all: bool) -> int:
    """Run cmd, everything it prints to log_path; echo validation lines (all with echo_all)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # the log grows as fairseq prints
    with open(log_path, "w", encoding="utf-8") as log, subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            env=env) as proc:
        for line in proc.stdout:
            log.write(line)
            if echo_all or "[valid" in line or "| valid" in line:
                sys.stdout.write(line)
        return proc.wait()


def finetune(argv: Optional[List[str]] = None) -> Dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []  # hydra overrides
    args = build_parser().parse_args(argv[:len(argv) - len(extra) - (1 if "--" in argv else 0)])
    args.overrides = extra
    if (args.checkpoint is None) == (not args.random_init):
        raise GlueError("give --checkpoint CKPT or --random-init (with --arch)")
    if args.random_init and not args.arch:
        raise GlueError("--random-init needs --arch (e.g. roberta_zero_clap_tiny)")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise GlueError(f"{args.checkpoint}: no such checkpoint")
    if not args.data.is_dir():
        raise GlueError(f"{args.data}: no such data folder")
    task = read_task(args.data, args.task)
    config = args.config_dir / f"{task.config}.yaml"
    if not config.is_file():
        raise GlueError(f"{config}: no such config (--config-dir: the folder of the GLUE YAMLs)")
    out = args.out.resolve()
    prepare_out(out, args.overwrite)
    cmd = build_command(args, task, out)
    logger.info("%s", " ".join(cmd))
    start = time.time()
    returncode = run(cmd, out / "train.log", args.verbose)
    record = {"task": task.name, "out": str(out), "data": str(args.data.resolve()),
              "checkpoint": str(args.checkpoint.resolve()) if args.checkpoint else None,
              "command": cmd, "seconds": round(time.time() - start, 1), "returncode": returncode}
    (out / "run.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    if returncode != 0:
        tail = (out / "train.log").read_text(encoding="utf-8").splitlines()[-25:]
        sys.stderr.write("\n".join(tail) + "\n")
        raise GlueError(f"fairseq-hydra-train failed (exit {returncode}); log: {out / 'train.log'}")
    return record


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m energy_lm.glue.finetune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="a <TASK>-bin folder from energy_lm.glue.preprocess")
    parser.add_argument("--out", type=Path, required=True, help="the run's folder")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, help="pretrained checkpoint to start from")
    source.add_argument("--random-init", action="store_true", help="no pretrained weights")
    parser.add_argument("--arch", help="model arch (default: the checkpoint's)")
    parser.add_argument("--task", help="GLUE task (default: from DATA/glue.json)")
    parser.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR,
                        help="folder of the GLUE YAMLs (default: %(default)s)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (also when no CUDA)")
    parser.add_argument("--max-update", type=int)
    parser.add_argument("--warmup-updates", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--overwrite", action="store_true", help="replace a run already in OUT")
    parser.add_argument("--verbose", action="store_true", help="echo all of fairseq's output")
    return parser


def main(argv: Optional[List[str]] = None) -> Dict:
    return finetune(argv)


def cli_main() -> None:
    log_to_stdout()
    record = run_reporting_errors("energy_lm.glue.finetune", main, GlueError)
    from energy_lm.glue.collect import format_table, read_run

    print(format_table([(Path(record["out"]).name, [read_run(Path(record["out"]))])]))


if __name__ == "__main__":
    cli_main()
