"""examples/energy_lm/replicate.py without training: reading fairseq's json logs, the
table cells, and how `--jobs` merges the seeds' rows (the runs themselves are the
README's measurement; a smoke run takes minutes)."""

import json
import subprocess
from pathlib import Path

import pytest

from conftest import load_script

@pytest.fixture(scope="module")
def replicate():
    return load_script("examples/energy_lm/replicate.py")


def test_parse_log_takes_the_last_records(replicate, tmp_path):
    log = tmp_path / "train.log"
    log.write_text(
        "2026-11-24 | INFO | train_inner | {\"loss\": \"9.1\", \"num_updates\": \"50\"}\n"
        "[2026-11-24][valid][INFO] - {\"valid_loss\": \"8.5\"}\n"
        "not json { at all\n"
        "2026-11-24 | INFO | valid | {\"valid_loss\": \"8.25\"}\n"
        "2026-11-24 | INFO | train | {\"train_loss\": \"8.3\", \"train_num_updates\": \"500\", "
        "\"train_train_wall\": \"315\"}\n")
    assert replicate.parse_log(log) == {"valid_loss": 8.25, "updates": 500, "train_wall": 315.0}


def test_parse_log_without_validation_names_the_file(replicate, tmp_path):
    log = tmp_path / "train.log"
    log.write_text("Traceback (most recent call last):\n")
    with pytest.raises(RuntimeError, match="train.log: no validation record"):
        replicate.parse_log(log)


def test_mean_std_cells(replicate):
    assert replicate.mean_std([500, 500, 500]) == "500"
    assert replicate.mean_std([1.0, 2.0, 3.0]) == "2.00 ± 1.00"
    assert replicate.mean_std([]) == "-"


def test_jobs_merge_seed_rows_in_seed_order(replicate, tmp_path, monkeypatch):
    """Each seed runs in its own process with one thread; the merged rows keep the
    order of --seeds whichever process finishes first."""
    calls = []

    def fake_run(cmd, check, stdout, stderr, env):
        seed = int(cmd[cmd.index("--seeds") + 1])
        calls.append((seed, env["OMP_NUM_THREADS"], cmd[cmd.index("--comparisons") + 1]))
        rows_file = Path(cmd[cmd.index("--rows-only") + 1])
        rows_file.write_text(json.dumps({"baseline": [100.0 + seed], "alibi": [200.0 + seed]}))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(replicate.subprocess, "run", fake_run)
    args = replicate.argparse.Namespace(
        data=tmp_path / "data-bin", out=tmp_path / "out", seeds=[3, 1, 2], jobs=2, updates=20,
        num_samples=8, eval_batches=2, glue_updates=10)
    rows = replicate.run_comparison("mlm", args)
    assert rows == {"baseline": [103.0, 101.0, 102.0], "alibi": [203.0, 201.0, 202.0]}
    assert sorted(calls) == [(1, "1", "mlm"), (2, "1", "mlm"), (3, "1", "mlm")]


def test_rows_only_takes_one_comparison(replicate, tmp_path, capsys):
    with pytest.raises(SystemExit):
        replicate.main(["--data", str(tmp_path), "--out", str(tmp_path / "out"),
                        "--comparisons", "mlm", "causal", "--rows-only", str(tmp_path / "r.json")])
    assert "--rows-only takes one comparison" in capsys.readouterr().err
