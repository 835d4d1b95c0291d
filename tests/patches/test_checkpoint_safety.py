"""Checkpoints are whole or absent (energy_lm.patches.checkpoint_safety), unit level: atomic
writes under failing writes, the copy fairseq uses, the dictionary fingerprint, and the
one-line refusals of flags and tools. The fault injection through the real
fairseq-train is in tests/e2e/test_checkpoint_faults.py."""

import errno
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import build_model
from energy_lm.patches.checkpoint_safety import (TEMP_PREFIX, CheckpointWriteError, _AtomicPathManager,
                                         atomic_copy, atomic_torch_save, atomic_write,
                                         readable_candidates)


def test_a_failed_write_leaves_the_previous_file_and_no_partial(tmp_path):
    target = tmp_path / "checkpoint_last.pt"
    target.write_bytes(b"previous state")

    def fails_halfway(f):
        f.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CheckpointWriteError, match=rf"disk full: cannot write checkpoint "
                                                   rf"checkpoint_last.pt in {tmp_path}"):
        atomic_write(str(target), fails_halfway, needed=5000)
    assert target.read_bytes() == b"previous state"
    assert os.listdir(tmp_path) == ["checkpoint_last.pt"]


def test_a_signal_in_mid_write_leaves_the_previous_file(tmp_path):
    target = tmp_path / "checkpoint_best.pt"
    target.write_bytes(b"previous state")

    def interrupted(f):
        f.write(b"partial")
        raise KeyboardInterrupt  # what SIGINT raises inside fairseq's save

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(target), interrupted)
    assert target.read_bytes() == b"previous state" and len(os.listdir(tmp_path)) == 1


def test_partials_of_a_killed_write_are_removed_by_the_next_one(tmp_path):
    (tmp_path / f"{TEMP_PREFIX}abc").write_bytes(b"left by SIGKILL")
    atomic_write(str(tmp_path / "checkpoint_last.pt"), lambda f: f.write(b"new"))
    assert os.listdir(tmp_path) == ["checkpoint_last.pt"]


def test_torch_save_and_copy_are_whole_and_loadable(tmp_path):
    state = {"model": {"w": torch.randn(64, 64)}, "step": 3}
    atomic_torch_save(state, str(tmp_path / "checkpoint_1_3.pt"))
    atomic_copy(str(tmp_path / "checkpoint_1_3.pt"), str(tmp_path / "checkpoint_last.pt"))
    loaded = torch.load(tmp_path / "checkpoint_last.pt")
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["step"] == 3
    manager = _AtomicPathManager(object())
    assert manager.copy(str(tmp_path / "checkpoint_1_3.pt"), str(tmp_path / "checkpoint_last.pt"),
                        overwrite=False) is False  # fairseq's contract: no overwrite asked


@pytest.mark.slow
def test_a_file_size_limit_fails_the_save_in_one_line_and_keeps_the_old_file(tmp_path):
    """A real write that fails after N bytes (RLIMIT_FSIZE), in a child process."""
    target = tmp_path / "checkpoint_last.pt"
    torch.save({"old": torch.zeros(4)}, target)
    before = target.read_bytes()
    code = ("import torch, energy_lm\n"
            "from energy_lm.patches.checkpoint_safety import atomic_torch_save\n"
            f"atomic_torch_save({{'w': torch.zeros(1 << 20)}}, {str(target)!r})\n")

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          preexec_fn=limit, timeout=120)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "CheckpointWriteError" in last and "the previous file is untouched" in last, last
    assert target.read_bytes() == before and len(os.listdir(tmp_path)) == 1


def test_resume_candidates_hold_the_most_updates_first_whatever_their_times(tmp_path):
    def state(updates):
        return {"model": {"w": torch.zeros(2)}, "optimizer_history": [{"num_updates": updates}]}

    torch.save(state(6), tmp_path / "checkpoint_1_6.pt")
    torch.save(state(3), tmp_path / "checkpoint_1_3.pt")
    torch.save(state(6), tmp_path / "checkpoint_last.pt")  # the one excluded
    torch.save(state(4), tmp_path / "checkpoint_best.pt")
    (tmp_path / "checkpoint_2_9.pt").write_bytes(b"truncated")  # unreadable: left out
    (tmp_path / "notes.txt").write_bytes(b"x")
    (tmp_path / f"{TEMP_PREFIX}x").write_bytes(b"x")
    for i, name in enumerate(["checkpoint_1_6.pt", "checkpoint_best.pt", "checkpoint_1_3.pt"]):
        os.utime(tmp_path / name, (2000 - i, 2000 - i))  # the oldest file holds the most
    os.utime(tmp_path / "checkpoint_1_6.pt", (1000, 1000))
    found = readable_candidates(str(tmp_path), str(tmp_path / "checkpoint_last.pt"))
    assert [Path(p).name for p in found] == ["checkpoint_1_6.pt", "checkpoint_best.pt",
                                             "checkpoint_1_3.pt"]


# ------------------------------------------------------------ the dictionary is part of the model

def test_a_dictionary_with_two_symbols_swapped_is_refused(data_bin):
    from energy_lm.models.energy_model import DictionaryMismatchError, dictionary_fingerprint

    model, task = build_model(data_bin, "transformer_lm_alibi_tiny", task="language_modeling")
    state = model.state_dict()
    assert torch.equal(state["dictionary_fingerprint"],
                       dictionary_fingerprint(task.source_dictionary))
    model.load_state_dict(state)  # the same dictionary loads
    swapped = task.source_dictionary.symbols[:]
    swapped[10], swapped[11] = swapped[11], swapped[10]
    other = type("D", (), {"symbols": swapped})()
    state["dictionary_fingerprint"] = dictionary_fingerprint(other)
    with pytest.raises(DictionaryMismatchError, match=r"another dictionary than .*dict.txt"):
        model.load_state_dict(state)
    # written before fingerprints (so before the format buffer): loads, unchecked
    del state["dictionary_fingerprint"], state["energy_lm_format"]
    model.load_state_dict(state)


# ------------------------------------------------------------ flags refused at start-up

@pytest.mark.parametrize("flag,value,message", [
    ("energy_weight", -1.0, r"--energy-weight must be finite and >= 0, got -1"),
    ("energy_weight", float("nan"), r"--energy-weight must be finite and >= 0, got nan"),
    ("energy_guard", 0.0, r"--energy-guard must be finite and > 0"),
    ("energy_guard", -5.0, r"--energy-guard must be finite and > 0"),
    ("num_candidates", 0, r"--num-candidates must be >= 1"),
    ("attention_backend", "cuda", r"--attention-backend must be one of auto, reference"),
])
def test_energy_flags_are_checked_at_start_up(data_bin, flag, value, message):
    from criterions.test_criterions_unit import make_criterion

    _, task = build_model(data_bin, "transformer_lm_alibi_tiny", task="language_modeling")
    with pytest.raises(ValueError, match=message):
        make_criterion(task, "monarc", **{flag: value})


def test_fill_mask_sentences_need_exactly_one_mask():
    from energy_lm.cli.fill_mask import FillMaskError, check_sentences

    check_sentences(["One <mask> here."])
    for bad, count in (("No mask.", 0), ("Two <mask> and <mask>.", 2), ("", 0)):
        with pytest.raises(FillMaskError, match=rf"exactly one <mask>, got {count}"):
            check_sentences([bad])


def test_the_save_guard_leaves_a_task_that_gives_no_loss_alone():
    """fairseq's own tests save with a mocked task (test_checkpoint_utils_for_task_level_
    attributes): a valid_step that returns no (loss, size, log) is not judged."""
    from unittest.mock import MagicMock

    from energy_lm.patches.checkpoint_safety import check_state_before_save

    trainer = MagicMock()
    trainer.model = torch.nn.Linear(2, 2)
    trainer.criterion = torch.nn.Identity()
    trainer._prepare_sample = lambda sample: (sample, False)
    trainer.get_lr = lambda: 1e-3
    trainer.get_num_updates = lambda: 7
    trainer._energy_lm_last_sample = {"net_input": {}}
    check_state_before_save(trainer, None)  # MagicMock's valid_step: nothing to read
    trainer.task.valid_step = lambda *args: (torch.tensor(float("nan")), 1, {})
    with pytest.raises(FloatingPointError, match="loss on the last training batch is nan"):
        check_state_before_save(trainer, None)
