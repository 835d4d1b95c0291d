"""examples/energy_lm/curve_study.py without training: the checkpoint of each point, and
the table of ELM - LM per update paired over seeds and blocks."""

import json

import pytest

from conftest import load_script

study = load_script("examples/energy_lm/curve_study.py")


def test_the_checkpoint_of_an_update_whatever_its_epoch(tmp_path):
    for name in ("checkpoint_1_100.pt", "checkpoint_2_500.pt", "checkpoint_last.pt"):
        (tmp_path / name).write_bytes(b"")
    assert study.checkpoint_at(tmp_path, 500) == "checkpoint_2_500.pt"
    with pytest.raises(FileNotFoundError, match="update 200"):
        study.checkpoint_at(tmp_path, 200)


def test_table_per_update(tmp_path):
    for seed in (1, 2):
        for update, gain in ((100, 0.01), (500, -0.02)):
            point = tmp_path / f"monarc_seed{seed}" / f"update{update}"
            point.mkdir(parents=True)
            rows = [{"id": b, "position": p, "token": 4, "lm": 6.0 + b / 10, "energy": gain,
                     "log_z": 0.0} for b in range(3) for p in range(2)]
            (point / "tokens.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = study.table(tmp_path, "monarc", [100, 500, 1000], [1, 2])
    assert "| 100 | 2 | 6 (3) | 6.1000 | +0.0100 ± 0.0000 |" in text
    assert "| 500 | 2 | 6 (3) | 6.1000 | -0.0200 ± 0.0000 |" in text
    assert "| 1000 |" not in text  # not scored yet
