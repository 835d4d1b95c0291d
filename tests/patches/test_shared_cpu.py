"""energy_lm.patches.shared_cpu: a CPU run takes the cores other processes leave free."""

import torch

from energy_lm.patches import shared_cpu


def test_busy_cores_are_read_from_this_machine():
    busy, cores = shared_cpu.busy_cores(0.05)
    assert cores >= 1
    assert 0.0 <= busy <= cores + 1e-9


def test_the_free_cores_and_at_least_one():
    assert shared_cpu.threads_for(0.1, 2) == 2   # quiet
    assert shared_cpu.threads_for(0.95, 2) == 1  # one single-thread competitor
    assert shared_cpu.threads_for(2.0, 2) == 1   # both cores busy: still one
    assert shared_cpu.threads_for(0.4, 8) == 8
    assert shared_cpu.threads_for(2.6, 8) == 5


def test_threads_are_lowered_once_and_never_against_the_user(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(shared_cpu, "busy_cores", lambda interval=0.3: (0.9, 2))
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        monkeypatch.setitem(shared_cpu._DONE, "fitted", False)
        assert shared_cpu.fit_threads() is None  # the user chose
        monkeypatch.delenv("OMP_NUM_THREADS")
        torch.set_num_threads(2)
        assert shared_cpu.fit_threads() == 1 and torch.get_num_threads() == 1
        torch.set_num_threads(2)
        assert shared_cpu.fit_threads() is None  # once per process
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
