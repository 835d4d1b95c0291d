"""The seeds' experiments as hydra configs (energy_lm/configs/seeds): every
full-scale config composes and validates against fairseq's dataclasses without running;
every *_tiny counterpart trains through the real `fairseq-hydra-train`."""

import argparse
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from energy_lm.configs import config_dir

SEEDS = config_dir("seeds")
FULL = sorted(p.stem for p in SEEDS.glob("*.yaml") if not p.stem.endswith("_tiny"))
TINY = sorted(p.stem for p in SEEDS.glob("*_tiny.yaml"))
# fine-tunes restore a checkpoint that an earlier tiny run makes
RESTORES = {"lm_to_monarc_430m_tiny": "lm_430m_tiny", "add_head_160m_tiny": "cwt_decoder_160m_tiny"}


def compose(name: str, *overrides: str):
    """The config fairseq-hydra-train would run: composed against FairseqConfig (as its
    cli_main registers it under the config's name), with the components' dataclass
    defaults merged in (unknown keys raise), resolved."""
    from fairseq.dataclass.initialize import add_defaults, hydra_init
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    hydra_init(name)
    # version_base 1.1: what fairseq-hydra-train runs under (a primary `@package _group_`
    # header then means the root package)
    with initialize_config_dir(config_dir=str(SEEDS), version_base="1.1"):
        cfg = hydra_compose(config_name=name, overrides=list(overrides))
    add_defaults(cfg)
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))


def model_options(arch: str) -> set:
    """The option names a model without a dataclass (RoBERTa's add_args family) accepts."""
    from fairseq.models import ARCH_MODEL_REGISTRY

    parser = argparse.ArgumentParser()
    ARCH_MODEL_REGISTRY[arch].add_args(parser)
    return {action.dest for action in parser._actions} | {"_name", "max_positions"}


def test_every_full_config_has_a_tiny_counterpart():
    assert len(FULL) >= 15
    assert sorted(f"{name}_tiny" for name in FULL) == TINY


@pytest.mark.parametrize("name", FULL)
def test_full_config_composes_and_validates(name):
    from fairseq.criterions import CRITERION_REGISTRY
    from fairseq.models import (ARCH_MODEL_NAME_REGISTRY, ARCH_MODEL_REGISTRY,
                                MODEL_DATACLASS_REGISTRY)
    from fairseq.tasks import TASK_REGISTRY

    overrides = ["task.data=/nonexistent/data-bin"]
    if name in {key.removesuffix("_tiny") for key in RESTORES}:
        overrides.append("checkpoint.restore_file=/nonexistent/checkpoint.pt")
    cfg = compose(name, *overrides)
    assert cfg.task._name in TASK_REGISTRY
    criterion = cfg.criterion if isinstance(cfg.criterion, str) else cfg.criterion._name
    assert criterion in CRITERION_REGISTRY
    arch = cfg.model._name
    assert arch in ARCH_MODEL_REGISTRY, arch
    if MODEL_DATACLASS_REGISTRY.get(ARCH_MODEL_NAME_REGISTRY[arch]) is None:
        # no dataclass (add_defaults validated the others): check against its add_args
        unknown = set(cfg.model) - model_options(arch)
        assert not unknown, f"{name}: model keys {unknown} are not options of {arch}"
    # full scale means full scale: GPU precision, no CPU flag, the published lengths
    assert not cfg.common.cpu and cfg.common.amp
    assert cfg.task.tokens_per_sample in (128, 1024, 2048)
    assert cfg.optimization.max_update >= 10000


def test_full_configs_carry_the_seeds_settings():
    assert compose("roberta_large_zero_clap", "task.data=x").optimization.lr == [0.0004]
    base = compose("roberta_base_learned_clap", "task.data=x")
    assert (base.model._name, base.optimization.lr, base.task.tokens_per_sample,
            base.optimization.max_update) == ("roberta_clap_base", [0.0006], 2048, 133000)
    nce = compose("nce_163m", "task.data=x")
    assert (nce.criterion._name, nce.criterion.energy_weight, nce.optimizer.weight_decay,
            nce.optimizer.adam_betas) == ("nce", 2.0, 0.1, "(0.9,0.95)")
    small = compose("cwt_decoder_70m", "task.data=x")
    assert (small.model.decoder_layers, small.model.decoder_embed_dim, small.optimization.lr,
            small.criterion._name) == (6, 512, [0.001], "cwt")


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_runs")


def run_tiny(name: str, data_bin: Path, out: Path, *extra: str):
    """(checkpoint_last.pt's state, the run's log)."""
    result = run_cli("fairseq-hydra-train", "--config-dir", SEEDS, "--config-name", name,
            f"task.data={data_bin}", "optimization.max_update=2", f"checkpoint.save_dir={out}",
            f"hydra.run.dir={out / 'hydra'}", *extra)
    return torch.load(out / "checkpoint_last.pt"), result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY, key=lambda n: n in RESTORES))  # restorers last
def test_tiny_config_trains(name, data_bin, tiny_runs):
    extra = []
    if name in RESTORES:
        source = tiny_runs / RESTORES[name] / "checkpoint_last.pt"
        if not source.exists():
            run_tiny(RESTORES[name], data_bin, tiny_runs / RESTORES[name])
        if name.startswith("add_head"):  # a headless LM gets its head first
            run_cli("energy-lm-add-head", source, tiny_runs / "with_head.pt")
            source = tiny_runs / "with_head.pt"
        extra.append(f"checkpoint.restore_file={source}")
    state, log = run_tiny(name, data_bin, tiny_runs / name, *extra)
    if name in RESTORES:  # the fine-tune started from the restored weights
        assert f"Loaded checkpoint {source}" in log
    full = compose(name.removesuffix("_tiny"), "task.data=x", "checkpoint.restore_file=x")
    cfg = state["cfg"]
    assert cfg["model"]["_name"] == full.model._name
    criterion = cfg["criterion"] if isinstance(cfg["criterion"], str) else cfg["criterion"]["_name"]
    assert criterion == (full.criterion if isinstance(full.criterion, str) else full.criterion._name)
    assert cfg["common"]["cpu"] and state["optimizer_history"][-1]["num_updates"] == 2
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    if name == "add_head_160m_tiny":
        assert "decoder.output_projection.weight" in state["model"]
