"""The import hook that registers energy_lm with fairseq, and `--user-dir`."""

import os
import subprocess
import sys

import pytest

from conftest import REPO, TRAIN_SMALL, run_cli

PROBE = ("import fairseq, sys; from fairseq.models import ARCH_MODEL_REGISTRY as A; "
         "print('roberta_clap_base' in A, 'transformer_lm_zero_clap_large' in A, "
         "'energy_lm' in sys.modules)")


def probe(env_extra):
    env = {k: v for k, v in os.environ.items() if k != "ENERGY_LM_NO_AUTOLOAD"}
    env.update(env_extra)
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                            env=env, cwd="/")
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_importing_fairseq_registers_energy_lm():
    assert probe({}) == ["True", "True", "True"]


@pytest.mark.slow
@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_environment_variable_turns_it_off(value):
    assert probe({"ENERGY_LM_NO_AUTOLOAD": value}) == ["False", "False", "False"]


def test_python_start_up_does_not_import_torch_or_fairseq():
    code = "import sys; print('torch' in sys.modules, 'fairseq' in sys.modules, '_energy_lm_autoload' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.stdout.split() == ["False", "False", "True"]


@pytest.mark.slow
def test_a_broken_energy_lm_only_warns(tmp_path):
    # shadow the package with one that raises on import: fairseq must still work
    (tmp_path / "energy_lm").mkdir()
    (tmp_path / "energy_lm" / "__init__.py").write_text("raise RuntimeError('boom')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    env.pop("ENERGY_LM_NO_AUTOLOAD", None)
    code = "import fairseq.models; print('ok')"
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True,
                         text=True, env=env, cwd="/")
    assert out.returncode == 0 and out.stdout.strip() == "ok"
    assert "energy_lm autoload failed" in out.stderr and "boom" in out.stderr


@pytest.mark.slow
def test_user_dir_works_with_autoload_off(data_bin, tmp_path):
    result = run_cli("fairseq-train", data_bin, "--user-dir", REPO / "energy_lm",
                     "--task", "masked_lm", "--criterion", "masked_lm", "--arch", "roberta_alibi_tiny",
                     *TRAIN_SMALL, "--max-update", "1", "--save-dir", tmp_path,
                     env={"ENERGY_LM_NO_AUTOLOAD": "1"})
    assert "RobertaEnergyModel" in result.stdout + result.stderr


@pytest.mark.slow
def test_user_dir_and_autoload_together(data_bin, tmp_path):
    result = run_cli("fairseq-train", data_bin, "--user-dir", REPO / "energy_lm",
                     "--task", "masked_lm", "--criterion", "masked_lm", "--arch", "roberta_clap_tiny",
                     *TRAIN_SMALL, "--max-update", "1", "--save-dir", tmp_path)
    assert "RobertaEnergyModel" in result.stdout + result.stderr
