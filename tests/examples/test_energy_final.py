"""examples/energy_lm/energy_final.py without training: the token-by-token pairing of two
runs' `--per-token` records and the table (the runs are issue 20's measurement)."""

import json
import math
import statistics

import pytest

from conftest import load_script


@pytest.fixture(scope="module")
def final():
    return load_script("examples/energy_lm/energy_final.py")


def records(tmp_path, name, rows):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_runs_pair_token_by_token_with_the_elm_in_bits(final, tmp_path):
    elm = [{"id": i // 3, "position": i % 3, "token": 10 + i, "lm": 9.0 + 0.1 * i,
            "energy": -0.2 * (i % 2), "log_z": 0.05, "log_z_est": 0.04} for i in range(6)]
    ce = [dict(r, lm=r["lm"] - 0.01 * r["position"], energy=0.0, log_z=None) for r in elm]
    a = final.read_records(records(tmp_path, "elm", elm))
    b = final.read_records(records(tmp_path, "ce", reversed(ce)))  # order does not matter
    result = final.paired(a, b, final.elm_bits, lambda r: r["lm"])
    diffs = [(e["lm"] + e["energy"] + e["log_z"]) - c["lm"] for e, c in zip(elm, ce)]
    assert result["tokens"] == 6
    assert result["mean"] == pytest.approx(statistics.mean(diffs))
    assert result["stderr"] == pytest.approx(statistics.stdev(diffs) / math.sqrt(6))
    own = final.paired(a, a, final.elm_bits, lambda r: r["lm"])
    assert own["mean"] == pytest.approx(statistics.mean(e["energy"] + 0.05 for e in elm))


def test_runs_on_other_tokens_are_refused(final, tmp_path):
    one = {(0, 0): {"token": 5, "lm": 1.0}, (0, 1): {"token": 6, "lm": 1.0}}
    other_token = {(0, 0): {"token": 5, "lm": 1.0}, (0, 1): {"token": 7, "lm": 1.0}}
    fewer = {(0, 0): {"token": 5, "lm": 1.0}}
    for b in (other_token, fewer):
        with pytest.raises(ValueError, match="not scored on the same tokens"):
            final.paired(one, b, lambda r: r["lm"], lambda r: r["lm"])


def test_table_gives_each_seed_and_the_spread_over_seeds(final):
    cell = lambda m: {"mean": m, "stderr": 0.01, "tokens": 1100}  # noqa: E731
    rows = {str(s): {"elm_minus_lm": cell(-0.03 * s), "elm_minus_ce": cell(-0.01 * s),
                     "lm_minus_ce": cell(0.02 * s)} for s in (1, 2, 3)}
    text = final.table(rows)
    assert "| 1 | 1100 | -0.0300 ± 0.0100 | -0.0100 ± 0.0100 | +0.0200 ± 0.0100 |  |  |" in text
    spread = statistics.stdev([-0.03, -0.06, -0.09]) / math.sqrt(3)
    assert f"-0.0600 ± {spread:.4f}" in text.splitlines()[-1]


def test_table_adds_the_whole_split_estimate_where_it_was_run(final):
    cell = {"mean": -0.02, "stderr": 0.01, "tokens": 1100}
    row = {"elm_minus_lm": cell, "elm_minus_ce": cell, "lm_minus_ce": cell}
    whole = {"lm": 8.6, "elm_est": 8.58, "elm_est_stderr": 0.0003, "tokens": 71925}
    rows = {"1": dict(row, whole=whole, whole_ce={"lm": 8.61}),
            "2": dict(row, whole=dict(whole, elm_est=8.56), whole_ce={"lm": 8.62})}
    lines = final.table(rows).splitlines()
    assert "| -0.0200 ± 0.0003 (estimate) | -0.0300 ± 0.0003 (estimate) |" in lines[2]
    assert "| -0.0300 ± 0.0100 | -0.0450 ± 0.0150 |" in lines[4]  # over seeds
    assert "71925 tokens" in lines[-1] and "estimate" in lines[-1]


def test_curve_table_gives_each_point_with_its_standard_error(final):
    points = [{"update": u, "lm": 9.5 - u / 1000,
               "elm_minus_lm": {"mean": -u / 20000, "stderr": 0.004, "tokens": 1141}}
              for u in (100, 200)]
    lines = final.curve_table(points, seed=3).splitlines()
    assert "seed 3" in lines[0]
    assert lines[-2:] == ["| 100 | 9.4000 | -0.0050 ± 0.0040 |",
                          "| 200 | 9.3000 | -0.0100 ± 0.0040 |"]
