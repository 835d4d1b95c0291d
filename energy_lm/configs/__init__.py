"""The hydra configs that ship with the package (fairseq-hydra-train's YAML):

    pretraining/   tiny runs on the embedded corpus
    seeds/         the seeds' experiments at full and at tiny scale
    glue/          GLUE fine-tuning with RoBERTa's settings (energy_lm.glue.finetune)

`energy-lm-config-dir GROUP` prints a group's folder for `--config-dir`. Every primary
config runs in the caller's folder (`hydra.run.dir: .`, as fairseq's own config), so
relative paths such as `task.data=corpus/data-bin` resolve there.
"""

from pathlib import Path

CONFIG_ROOT = Path(__file__).resolve().parent
GROUPS = ("pretraining", "seeds", "glue")


def config_dir(group: str) -> Path:
    if group not in GROUPS:
        raise ValueError(f"no config group {group!r}; the groups are {', '.join(GROUPS)}")
    return CONFIG_ROOT / group
