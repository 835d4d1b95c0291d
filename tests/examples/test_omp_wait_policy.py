"""tools/omp_wait_policy.py (make demo): PASSIVE only when the CPUs are busy."""

from conftest import load_script


def test_passive_only_on_a_busy_machine(monkeypatch):
    tool = load_script("tools/omp_wait_policy.py")
    assert 0.0 <= tool.idle_share(0.05) <= 1.0
    monkeypatch.setattr(tool, "idle_share", lambda interval=0.3: 0.2)
    assert tool.policy() == "OMP_WAIT_POLICY=PASSIVE"
    monkeypatch.setattr(tool, "idle_share", lambda interval=0.3: 0.9)
    assert tool.policy() == ""

    def unreadable(interval=0.3):
        raise OSError("no /proc/stat")

    monkeypatch.setattr(tool, "idle_share", unreadable)
    assert tool.policy() == ""
