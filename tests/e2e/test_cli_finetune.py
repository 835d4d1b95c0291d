"""fairseq-hydra-train on our YAML, and GLUE-style sentence_prediction fine-tuning
from a pretraining checkpoint of ours."""

from pathlib import Path

import pytest
import torch

from conftest import TRAIN_SMALL, run_cli
from energy_lm.configs import config_dir

pytestmark = pytest.mark.slow

CONFIG_DIR = config_dir("pretraining")


@pytest.mark.parametrize("config,beta_key", [
    ("roberta_clap_tiny", "encoder.lm_head.beta"),
    ("transformer_lm_zero_clap_tiny", "decoder.output_projection.beta"),
])
def test_hydra_train_runs_tiny_yaml(data_bin, tmp_path, config, beta_key):
    run_cli("fairseq-hydra-train", "--config-dir", CONFIG_DIR, "--config-name", config,
            f"task.data={data_bin}", "optimization.max_update=2", f"checkpoint.save_dir={tmp_path}",
            "common.cpu=true", "dataset.num_workers=0", f"hydra.run.dir={tmp_path / 'hydra'}")
    state = torch.load(tmp_path / "checkpoint_last.pt")
    assert state["cfg"]["model"]["_name"] == config
    assert beta_key in state["model"]


def write_classification_data(corpus_dir: Path, out: Path) -> Path:
    """A two-class task over real sentences: does the document come from the language
    reference (pydoc topics) or from a module docstring? Binarized with the
    pretraining dictionary, as the GLUE scripts do."""
    docs = (corpus_dir / "text" / "train.bpe").read_text().splitlines()[:120]
    raw_docs = (corpus_dir / "raw" / "train.txt").read_text().splitlines()[:120]
    labels = ["topic" if "***" in raw or raw[:1].isupper() else "doc" for raw in raw_docs]
    inputs = [" ".join(d.split()[:40]) for d in docs]
    out.mkdir(parents=True)
    for split, sl in (("train", slice(0, 100)), ("valid", slice(100, 120))):
        (out / f"{split}.input0").write_text("\n".join(inputs[sl]) + "\n")
        (out / f"{split}.label").write_text("\n".join(labels[sl]) + "\n")
    dict_path = corpus_dir / "data-bin" / "dict.txt"
    run_cli("fairseq-preprocess", "--only-source", "--trainpref", out / "train.input0",
            "--validpref", out / "valid.input0", "--destdir", out / "bin" / "input0",
            "--srcdict", dict_path, "--workers", "1")
    run_cli("fairseq-preprocess", "--only-source", "--trainpref", out / "train.label",
            "--validpref", out / "valid.label", "--destdir", out / "bin" / "label", "--workers", "1")
    return out / "bin"


def test_sentence_prediction_finetune_from_clap_alibi_checkpoint(corpus_dir, tmp_path):
    data_bin = corpus_dir / "data-bin"
    run_cli("fairseq-train", data_bin, "--task", "masked_lm", "--criterion", "masked_lm",
            "--arch", "roberta_zero_clap_tiny", *TRAIN_SMALL, "--max-update", "2",
            "--save-dir", tmp_path / "pretrain")
    cls_bin = write_classification_data(corpus_dir, tmp_path / "cls")
    drop = {"--sample-break-mode": 2, "--tokens-per-sample": 2}  # not sentence_prediction flags
    small, skip = [], 0
    for arg in TRAIN_SMALL:
        skip = drop.get(arg, skip)
        if skip:
            skip -= 1
            continue
        small.append(arg)
    result = run_cli(
        "fairseq-train", cls_bin, "--task", "sentence_prediction", "--criterion", "sentence_prediction",
        "--arch", "roberta_zero_clap_tiny", "--num-classes", "2", "--init-token", "0",
        "--separator-token", "2", "--max-positions", "64", "--shorten-method", "truncate",
        *small, "--restore-file", tmp_path / "pretrain" / "checkpoint_last.pt", "--reset-optimizer",
        "--reset-dataloader", "--reset-meters", "--max-update", "3",
        "--save-dir", tmp_path / "finetune", "--best-checkpoint-metric", "accuracy",
        "--maximize-best-checkpoint-metric")
    assert "accuracy" in result.stdout + result.stderr
    pre = torch.load(tmp_path / "pretrain" / "checkpoint_last.pt")["model"]
    fine = torch.load(tmp_path / "finetune" / "checkpoint_last.pt")["model"]
    assert "encoder.sentence_encoder.embed_positions.weight" not in fine  # ALiBi, no positions
    assert any(k.startswith("classification_heads.sentence_classification_head") for k in fine)
    # it started from the pretrained weights (3 small updates move them only slightly)
    key = "encoder.sentence_encoder.layers.0.self_attn.q_proj.weight"
    assert (fine[key] - pre[key]).abs().max() < 0.05
