"""Exact resume after a crash: a fairseq-train run killed with SIGKILL right after a
mid-epoch checkpoint (--save-interval-updates) and restarted with the same command
reproduces the uninterrupted run: the losses of every following update and the final
weights, bit for bit (fp32, CPU), for plain cross-entropy and for MonArc (its samples
are keyed by update and example, so nothing about sampling needs saving)."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import BIN, LM_SMALL

pytestmark = pytest.mark.slow

UPDATES, SAVE_EVERY = 9, 3


def command(data_bin: Path, save_dir: Path, criterion: str) -> list:
    return [str(BIN / "fairseq-train"), str(data_bin), "--task", "language_modeling",
            "--arch", "transformer_lm_zero_clap_tiny", *LM_SMALL, "--dropout", "0.1",
            "--criterion", criterion, "--max-update", str(UPDATES),
            "--save-interval-updates", str(SAVE_EVERY), "--disable-validation",
            "--log-format", "json", "--log-interval", "1", "--save-dir", str(save_dir)]


def losses(log: str) -> dict:
    """{update: loss string} of the train_inner records (the logged, rounded values)."""
    found = {}
    for line in log.splitlines():
        if "train_inner" in line and "{" in line:
            record = json.loads(line[line.index("{"):])
            found[int(record["num_updates"])] = record["loss"]
    return found


def run_to_end(cmd: list, log_path: Path) -> str:
    with open(log_path, "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    return log_path.read_text()


def run_and_kill_after_first_save(cmd: list, save_dir: Path, log_path: Path) -> int:
    """Start the run, SIGKILL it as soon as its first mid-epoch checkpoint is on disk;
    return the update that checkpoint holds."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
        deadline = time.time() + 300
        try:
            while time.time() < deadline and proc.poll() is None:
                if "Saved checkpoint" in log_path.read_text():
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.02)
            proc.wait(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    state = torch.load(save_dir / "checkpoint_last.pt")
    saved = state["optimizer_history"][-1]["num_updates"]
    assert saved % SAVE_EVERY == 0 and saved < UPDATES
    assert state["extra_state"]["train_iterator"]["iterations_in_epoch"] == saved  # mid-epoch
    return saved


@pytest.mark.parametrize("criterion", ["cross_entropy", "monarc"])
def test_sigkill_and_restart_reproduces_the_uninterrupted_run(data_bin, tmp_path, criterion):
    straight_log = run_to_end(command(data_bin, tmp_path / "straight", criterion),
                              tmp_path / "straight.log")
    crash_dir = tmp_path / "crashed"
    saved = run_and_kill_after_first_save(command(data_bin, crash_dir, criterion), crash_dir,
                                          tmp_path / "killed.log")
    resumed_log = run_to_end(command(data_bin, crash_dir, criterion), tmp_path / "resumed.log")
    assert f"Loaded checkpoint {crash_dir / 'checkpoint_last.pt'}" in resumed_log

    want, got = losses(straight_log), losses(resumed_log)
    assert sorted(got) == list(range(saved + 1, UPDATES + 1))
    assert {u: want[u] for u in got} == got
    a = torch.load(tmp_path / "straight" / "checkpoint_last.pt")["model"]
    b = torch.load(crash_dir / "checkpoint_last.pt")["model"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
