"""Safe loading: every checkpoint load is torch.load(weights_only=True) with energy_lm's
allow-list. A file that smuggles a callable (here os.system) is refused with one line
and nothing in it runs; a legacy checkpoint whose config is an omegaconf object needs
the explicit opt-in ENERGY_LM_ALLOW_OMEGACONF_CHECKPOINTS=1."""

import os
import subprocess
import sys

import pytest
import torch

from conftest import LM_SMALL, error_line, run_cli

WRITE_EVIL = """
import os, sys, torch
class Payload:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))
torch.save({"model": {}, "args": None, "extra_state": {}, "payload": Payload()}, sys.argv[1])
"""
LOAD = """
import sys
import energy_lm
from fairseq import checkpoint_utils
state = checkpoint_utils.load_checkpoint_to_cpu(sys.argv[1])
print("loaded", type(state["cfg"]).__name__)
"""


@pytest.fixture
def evil_checkpoint(tmp_path):
    path, marker = tmp_path / "evil.pt", tmp_path / "PWNED"
    subprocess.run([sys.executable, "-c", WRITE_EVIL, str(path), str(marker)], check=True)
    assert not marker.exists()
    return path, marker


def test_a_checkpoint_that_calls_os_system_is_refused_and_nothing_runs(evil_checkpoint):
    path, marker = evil_checkpoint
    from energy_lm.patches.checkpoint_errors import CheckpointRefusedError
    from fairseq import checkpoint_utils

    with pytest.raises(CheckpointRefusedError) as info:
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    message = str(info.value)
    assert "\n" not in message and f"refusing checkpoint {path}" in message
    assert "system" in message and "was not loaded" in message
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["fairseq-train", "energy-lm-eval-elm"])
def test_command_line_tools_refuse_it_in_one_line(evil_checkpoint, data_bin, tmp_path, tool):
    path, marker = evil_checkpoint
    if tool == "fairseq-train":
        args = [data_bin, "--task", "language_modeling", "--arch", "transformer_lm_clap_tiny",
                *LM_SMALL, "--max-update", "1", "--restore-file", path, "--save-dir", tmp_path / "ck"]
    else:
        args = [data_bin, "--path", path, "--cpu"]
    result = run_cli(tool, *args, check=False)
    assert result.returncode != 0
    last = error_line(result.stderr)
    assert "refusing checkpoint" in last and str(path) in last, result.stderr[-2000:]
    assert not marker.exists()


@pytest.fixture
def legacy_checkpoint(data_bin, tmp_path):
    """A real checkpoint whose "cfg" is an omegaconf DictConfig, as fairseq wrote them
    before storing plain containers."""
    run_cli("fairseq-train", data_bin, "--task", "language_modeling", "--arch",
            "transformer_lm_clap_tiny", *LM_SMALL, "--max-update", "1", "--save-dir", tmp_path / "ck")
    from omegaconf import OmegaConf

    state = torch.load(tmp_path / "ck" / "checkpoint_last.pt")
    state["cfg"] = OmegaConf.create(state["cfg"])
    path = tmp_path / "legacy.pt"
    torch.save(state, path)
    return path


@pytest.mark.slow
def test_legacy_omegaconf_checkpoint_needs_the_opt_in(legacy_checkpoint):
    env = {k: v for k, v in os.environ.items() if k != "ENERGY_LM_ALLOW_OMEGACONF_CHECKPOINTS"}
    refused = subprocess.run([sys.executable, "-c", LOAD, str(legacy_checkpoint)],
                             capture_output=True, text=True, env=env)
    assert refused.returncode != 0
    last = error_line(refused.stderr)
    assert "omegaconf" in last and "ENERGY_LM_ALLOW_OMEGACONF_CHECKPOINTS=1" in last
    allowed = subprocess.run([sys.executable, "-c", LOAD, str(legacy_checkpoint)],
                             capture_output=True, text=True,
                             env=dict(env, ENERGY_LM_ALLOW_OMEGACONF_CHECKPOINTS="1"))
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert "loaded" in allowed.stdout


@pytest.mark.slow
def test_the_opt_in_still_refuses_code(evil_checkpoint):
    path, marker = evil_checkpoint
    result = subprocess.run([sys.executable, "-c", LOAD, str(path)], capture_output=True, text=True,
                            env=dict(os.environ, ENERGY_LM_ALLOW_OMEGACONF_CHECKPOINTS="1"))
    assert result.returncode != 0 and "refusing checkpoint" in result.stderr
    assert not marker.exists()
