"""A user who installs the built wheel, outside this repository: the wheel carries the
package, its hydra configs and the registration hook; in a fresh virtual environment,
from a folder that is not the repository, stock fairseq-train knows our archs, the
packaged hydra config runs with a relative data path, a --tensorboard-logdir run writes
event files with the energy terms, and energy-lm-plot draws them.

The fresh environment sees the pinned stack (torch, fairseq, ...) of this one through a
.pth file instead of downloading and compiling it again (fairseq's C++ extensions take
minutes to build); only energy_lm comes from the wheel. Paths listed in a .pth file are
not site directories, so this environment's own editable energy_lm stays invisible."""

import os
import shutil
import site
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def sh(argv, cwd, env=None, timeout=900):
    result = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, env=env)
    assert result.returncode == 0, (f"{' '.join(map(str, argv))} failed:\n"
                                    f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", root / "dist", REPO], root)
    (wheel,) = (root / "dist").glob("energy_lm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "energy_lm_autoload.pth" in names and "_energy_lm_autoload.py" in names
    assert "energy_lm/configs/pretraining/roberta_clap_tiny.yaml" in names
    assert "energy_lm/configs/glue/rte.yaml" in names
    assert "energy_lm/harness/tasks/energy_lm_lastword.yaml" in names  # the harness's tasks
    venv = root / "venv"
    sh([sys.executable, "-m", "venv", venv], root)
    packages = next((venv / "lib").glob("python*/site-packages"))
    (packages / "_stack.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    sh([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "-q", wheel], root)
    return venv


def test_the_wheel_works_from_a_folder_outside_the_repository(fresh_venv, data_bin, tmp_path):
    user = tmp_path / "user"
    shutil.copytree(data_bin, user / "corpus" / "data-bin")
    python = fresh_venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="2", PATH=f"{fresh_venv / 'bin'}:{env.get('PATH', '')}")

    where = sh([python, "-c", "import energy_lm; print(energy_lm.__file__)"], user, env)
    assert str(fresh_venv) in where.stdout and str(REPO) not in where.stdout

    small = ["--tokens-per-sample", "64", "--batch-size", "4", "--optimizer", "adam",
             "--lr", "1e-3", "--max-update", "3", "--num-workers", "0", "--log-interval", "1"]
    train = sh([python, "-m", "fairseq_cli.train", "corpus/data-bin", "--task", "masked_lm",
                "--arch", "roberta_clap_tiny", "--criterion", "monarc", *small,
                "--save-dir", "runs/mlm", "--tensorboard-logdir", "tb"], user, env)
    assert (user / "runs" / "mlm" / "checkpoint_last.pt").is_file()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(user / "tb" / "train_inner"))
    events.Reload()
    assert {"lm_loss", "ebm_loss", "elm_loss", "z", "energy_acc"} <= set(events.Tags()["scalars"])

    plot = sh([fresh_venv / "bin" / "energy-lm-plot", "MonArc=tb", "-o", "curves.png"], user, env)
    assert (user / "curves.png").stat().st_size > 10_000

    config_dir = sh([fresh_venv / "bin" / "energy-lm-config-dir", "pretraining"], user, env)
    hydra = sh([python, "-m", "fairseq_cli.hydra_train", "--config-dir",
                config_dir.stdout.strip(), "--config-name", "roberta_clap_tiny",
                "task.data=corpus/data-bin", "optimization.max_update=2",
                "dataset.num_workers=0", "checkpoint.save_dir=runs/hydra"], user, env)
    assert (user / "runs" / "hydra" / "checkpoint_last.pt").is_file()
    assert not (user / "outputs").exists()  # hydra ran in the user's folder

    for result in (train, plot, config_dir, hydra):
        assert "tensorboardX" not in result.stdout + result.stderr
