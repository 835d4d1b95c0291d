"""Fault injection through the real fairseq-train: signals in and around saves, a full
disk, a write that fails after N bytes, a diverging run with and without validation, an
unreadable checkpoint_last.pt. After each fault every checkpoint file on disk loads, and
the same command resumes from the newest good one."""

import os
import re
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import BIN, LM_SMALL, error_line
from energy_lm.patches.checkpoint_safety import SAVE_RECORD, TEMP_PREFIX, write_save_record

pytestmark = pytest.mark.slow

ENV = dict(os.environ, OMP_NUM_THREADS="1")


SIZE_FLAGS = {"--decoder-layers", "--decoder-embed-dim", "--decoder-ffn-embed-dim",
              "--decoder-attention-heads"}
# the preset's own 4 x 256 size: a save (~45 MB) takes about as long as an update
FULL_TINY = [a for i, a in enumerate(LM_SMALL)
             if a not in SIZE_FLAGS and (i == 0 or LM_SMALL[i - 1] not in SIZE_FLAGS)]


def command(data_bin: Path, save_dir: Path, *extra, updates=12, criterion="monarc",
            size=LM_SMALL) -> list:
    return [str(BIN / "fairseq-train"), str(data_bin), "--task", "language_modeling",
            "--arch", "transformer_lm_zero_clap_tiny", *size, "--criterion", criterion,
            "--max-update", str(updates), "--save-interval-updates", "1",
            "--disable-validation", "--save-dir", str(save_dir), *map(str, extra)]


def checkpoint_files(save_dir: Path) -> list:
    """Every file but the partial one a SIGKILL can leave mid-write (a hidden temporary
    that no loader reads; the next save removes it) and the record of the last save."""
    return sorted(p for p in save_dir.glob("*") if p.is_file()
                  and not p.name.startswith(TEMP_PREFIX) and p.name != SAVE_RECORD)


def assert_every_file_loads(save_dir: Path) -> int:
    """Every checkpoint file in the save dir is whole, with finite weights; returns the
    newest update on disk."""
    newest = -1
    for path in checkpoint_files(save_dir):
        assert path.suffix == ".pt", f"unexpected file {path.name}"
        state = torch.load(path, weights_only=True)
        for name, tensor in state["model"].items():
            if tensor.is_floating_point():
                assert torch.isfinite(tensor).all(), f"{path.name}: {name} is not finite"
        newest = max(newest, int(state["optimizer_history"][-1]["num_updates"]))
    return newest


def default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600, **kwargs)


def test_signals_in_and_around_saves_never_leave_a_bad_file(data_bin, tmp_path):
    """SIGINT and SIGKILL at several moments of a run that saves after every update
    (a save of the 4 x 256 model takes about as long as an update, so many land inside
    one); after each, every file loads, and the same command resumes from the newest."""
    save = tmp_path / "ck"
    newest = 0
    for i, delay in enumerate([0.2, 0.7, 1.3, 2.0, 2.8]):
        # each run resumes from the newest file: give it 40 updates more than that, so
        # that it is still training when the signal comes (with a fixed end, the later
        # runs had only a few updates left and finished before it on a fast machine)
        cmd = command(data_bin, save, updates=newest + 40, size=FULL_TINY)
        log_path = tmp_path / f"run{i}.log"
        with open(log_path, "w") as log:
            # SIGINT as a terminal sends it: a shell's background job (nohup, CI runners)
            # starts with SIGINT ignored, the child inherits that and never stops
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV,
                                    preexec_fn=default_sigint)
            started = time.time()
            while proc.poll() is None and "Saved checkpoint" not in log_path.read_text():
                time.sleep(0.02)
                assert time.time() - started < 300
            time.sleep(delay)  # from the first save of this run: in or between saves
            proc.send_signal(signal.SIGKILL if i % 2 else signal.SIGINT)
            proc.wait(timeout=120)
        assert proc.returncode != 0, ("the run ended before the signal: make it longer; "
                                      "its log ends: " + log_path.read_text()[-1500:])
        newest = assert_every_file_loads(save)
    final = newest + 5
    done = run(command(data_bin, save, updates=final, size=FULL_TINY))
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(rf"\(epoch \d+ @ {newest} updates\)", done.stdout + done.stderr)  # newest
    assert assert_every_file_loads(save) == final
    assert not list(save.glob(TEMP_PREFIX + "*"))  # the saves cleaned up after the kills


def test_a_full_disk_stops_in_one_line_and_keeps_the_last_checkpoint(data_bin, tmp_path):
    """A 100 MB tmpfs holds one checkpoint of the 4 x 256 model (~45 MB) and its copy
    (checkpoint_last.pt), not a third file; where tmpfs cannot be mounted, the write
    fails after N bytes instead (RLIMIT_FSIZE on a resumed run)."""
    save = tmp_path / "ck"
    save.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100m", "tmpfs", str(save)],
                             capture_output=True).returncode == 0
    try:
        if mounted:
            done = run(command(data_bin, save, updates=6, size=FULL_TINY))
            assert "disk full: cannot write checkpoint" in error_line(done.stderr), done.stderr[-3000:]
            assert f"in {save}" in error_line(done.stderr)
        else:
            assert run(command(data_bin, save, updates=2, size=FULL_TINY)).returncode == 0

            def limit():
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

            done = run(command(data_bin, save, updates=4, size=FULL_TINY), preexec_fn=limit)
            assert "cannot write checkpoint" in error_line(done.stderr)
        assert done.returncode != 0
        assert "the previous file is untouched" in error_line(done.stderr)
        newest = assert_every_file_loads(save)
        assert newest >= 1 and (save / "checkpoint_last.pt").exists()
    finally:
        if mounted:
            subprocess.run(["umount", str(save)], capture_output=True)


@pytest.mark.parametrize("validation", [False, True])
def test_a_diverging_run_stops_before_saving_diverged_weights(data_bin, tmp_path, validation):
    save = tmp_path / "ck"
    assert run(command(data_bin, save, updates=3)).returncode == 0
    good = assert_every_file_loads(save)
    extra = ["--lr", "1e10", "--reset-lr-scheduler"]
    cmd = command(data_bin, save, *extra, updates=20)
    if validation:
        cmd.remove("--disable-validation")
    done = run(cmd)
    assert done.returncode != 0
    line = error_line(done.stderr)
    assert "lr=1e+10" in line and "--energy-weight 2" in line, line
    assert assert_every_file_loads(save) >= good  # every file on disk is finite


def test_an_unreadable_checkpoint_last_resumes_from_the_newest_readable(data_bin, tmp_path):
    save = tmp_path / "ck"
    assert run(command(data_bin, save, updates=4)).returncode == 0
    with open(save / "checkpoint_last.pt", "r+b") as f:
        f.truncate(1000)
    done = run(command(data_bin, save, updates=6))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "checkpoint_last.pt cannot be read (truncated or corrupt); resumed from" in done.stdout + done.stderr
    assert "checkpoint_1_4.pt" in done.stdout + done.stderr
    assert assert_every_file_loads(save) == 6
    for path in checkpoint_files(save):  # nothing readable: one clear refusal
        with open(path, "r+b") as f:
            f.truncate(1000)
    done = run(command(data_bin, save, updates=8))
    assert done.returncode != 0
    assert "cannot resume:" in error_line(done.stderr) and "no other checkpoint" in error_line(done.stderr)


def test_the_checkpoint_asked_for_is_the_checkpoint_resumed(data_bin, tmp_path):
    """A checkpoint_last.pt rolled back by copying an older checkpoint over it (its
    modification time older than the others', as a rename leaves it) is resumed as it
    is; only the save dir's record of an unfinished save redirects a resume, to the file
    that save wrote first."""
    import shutil

    save = tmp_path / "ck"
    assert run(command(data_bin, save, updates=6, criterion="cross_entropy")).returncode == 0
    shutil.copy2(save / "checkpoint_1_3.pt", save / "checkpoint_last.pt")
    os.utime(save / "checkpoint_last.pt", (1, 1))  # older than every other file
    rolled = run(command(data_bin, save, updates=4, criterion="cross_entropy"))
    assert rolled.returncode == 0, rolled.stderr[-2000:]
    assert "(epoch 1 @ 3 updates)" in rolled.stdout + rolled.stderr
    assert "interrupted" not in rolled.stdout + rolled.stderr
    # a save of update 5 that stopped before its copy to checkpoint_last.pt (at 4)
    shutil.copy2(save / "checkpoint_1_4.pt", save / "checkpoint_last.pt")
    write_save_record(str(save), "copying", str(save / "checkpoint_1_5.pt"), 5)
    resumed = run(command(data_bin, save, updates=6, criterion="cross_entropy"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    log = resumed.stdout + resumed.stderr
    assert "(epoch 1 @ 5 updates)" in log and "was interrupted before its copy" in log

