"""examples/energy_lm/adapt.py without training: one seed's paired figures (run_scoring's
seed_row) and the table of the adaptation experiment."""

import json

import pytest

from conftest import load_script


@pytest.fixture(scope="module")
def adapt():
    return load_script("examples/energy_lm/adapt.py")


def test_seed_row_pairs_the_runs_and_reads_the_whole_split_where_scored(adapt, tmp_path):
    elm = {(0, p): {"token": p, "lm": 7.0, "energy": -0.1 * p, "log_z": 0.05} for p in range(3)}
    ce = {k: dict(r, lm=6.9) for k, r in elm.items()}
    (energy_save := tmp_path / "monarc").mkdir()
    (ce_save := tmp_path / "ce").mkdir()
    (energy_save / "elm-whole.json").write_text(json.dumps({"lm": 6.95, "elm_est": 6.9}))
    row = adapt.seed_row(elm, ce, energy_save, ce_save)
    assert row["elm_minus_lm"]["mean"] == pytest.approx(0.05 - 0.1)
    assert row["elm_minus_ce"]["mean"] == pytest.approx(0.1 + 0.05 - 0.1)
    assert row["lm_minus_ce"]["mean"] == pytest.approx(0.1)
    assert row["whole"]["elm_est"] == 6.9 and "whole_ce" not in row


def test_table_has_the_whole_split_and_the_paired_rows(adapt):
    whole = {"cross_entropy": [{"lm": 6.83, "elm_est": 6.83, "seconds": 500.0}] * 2,
             "monarc": [{"lm": 6.84, "elm_est": 6.80, "seconds": 900.0},
                        {"lm": 6.82, "elm_est": 6.78, "seconds": 1000.0}]}
    cell = {"mean": -0.04, "stderr": 0.01, "tokens": 245}
    rows = {"1": {"elm_minus_lm": cell, "elm_minus_ce": cell, "lm_minus_ce": cell}}
    text = adapt.table(whole, rows, {"updates": 2000}, [8.1, 7.2])
    assert "| cross_entropy | 6.8300 ± 0.0000 | - | 500 |" in text
    assert "| monarc | 6.8300 ± 0.0141 | 6.7900 ± 0.0141 | 950 |" in text
    assert "| 1 | 245 | -0.0400 ± 0.0100 |" in text
    assert "8.100, 7.200" in text
