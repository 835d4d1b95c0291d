"""examples/energy_lm/energy_study.py without training: each setting (the batch-size arm
included) trains under its own name with its own flags, and two studies sharing one
output folder keep each other's rows."""

import pytest

from conftest import load_script


@pytest.fixture(scope="module")
def study():
    return load_script("examples/energy_lm/energy_study.py")


def test_every_setting_has_its_own_run_and_flags(study, monkeypatch, tmp_path):
    calls = {}
    monkeypatch.setattr(study, "train", lambda data, save, args, seed: calls.setdefault(save.name, args))
    settings = [("seed", "nce", 2.0, 1, 1), ("seed", "nce", 2.0, 1, 4),
                ("seed", "monarc", 4.0, 4, 1)]
    for setting in settings:
        study.continue_run(tmp_path, tmp_path, tmp_path / "base.pt", setting, 100, "1e-3", 1)
    study.continue_run(tmp_path, tmp_path, tmp_path / "base.pt", settings[0], 400, "1e-3", 1)
    # the first pass's names are kept (its records are read by name)
    assert list(calls) == ["seed-nce-w2-k1_seed1", "seed-nce-w2-k1-uf4_seed1",
                           "seed-monarc-w4-k4_seed1", "seed-nce-w2-k1-u400_seed1"]

    def flag(run, name):
        args = calls[run]
        return args[args.index(name) + 1]
    assert flag("seed-nce-w2-k1-uf4_seed1", "--update-freq") == "4"
    assert flag("seed-nce-w2-k1_seed1", "--update-freq") == "1"
    assert flag("seed-monarc-w4-k4_seed1", "--num-candidates") == "4"
    assert flag("seed-monarc-w4-k4_seed1", "--energy-weight") == "4.0"
    assert flag("seed-nce-w2-k1-u400_seed1", "--max-update") == "400"


def test_two_studies_in_one_folder_keep_each_others_rows(study, tmp_path):
    results = tmp_path / "results.json"
    study.record_row(results, "a", {"gain_exact": -0.01})
    # a second study started before "a" was written holds no "a" in memory
    rows = study.record_row(results, "b", {"gain_exact": -0.02})
    assert set(rows) == {"a", "b"}
    assert set(study.record_row(results, "a", {"gain_exact": -0.03})) == {"a", "b"}


def test_settings_are_compared_with_the_default_token_by_token(study, tmp_path):
    import json

    def write(run, energies):
        (tmp_path / f"{run}_seed1").mkdir()
        (tmp_path / f"{run}_seed1" / "tokens.jsonl").write_text("".join(
            json.dumps({"id": 0, "position": i, "token": 5 + i, "lm": 9.0, "energy": e,
                        "log_z": 0.1}) + "\n" for i, e in enumerate(energies)))
    write("seed-nce-w2-k1", [0.0, -0.2, 0.1])
    write("seed-nce-w4-k4", [-0.1, -0.2, -0.2])
    versus = study.versus_reference(tmp_path, "seed-nce-w4-k4", 1)
    assert versus["tokens"] == 3
    assert versus["mean"] == pytest.approx((-0.1 + 0.0 - 0.3) / 3)
    assert study.versus_reference(tmp_path, "seed-nce-w2-k1", 1) is None
    assert study.versus_reference(tmp_path, "seed-monarc-w4-k4", 1) is None  # not scored
