"""examples/energy_lm/known_answer_real.py without training: the handicap, the gain and the
share recovered, computed from two runs' `--per-token` records."""

import pytest

from conftest import load_script


@pytest.fixture(scope="module")
def known():
    return load_script("examples/energy_lm/known_answer_real.py")


def mixed_and_ce():
    mixed = {(0, p): {"token": 4 + p, "lm": 10.0 + p, "energy": -0.3, "log_z": 0.1,
                      "log_z_est": 0.1} for p in range(4)}
    # the CE run was scored on one more block than the mixed run
    ce = {k: dict(r, lm=r["lm"] - 0.4 - 0.1 * k[1]) for k, r in mixed.items()}
    ce[(1, 0)] = {"token": 9, "lm": 3.0}
    return mixed, ce


def test_handicap_gain_and_share_recovered(known):
    mixed, ce = mixed_and_ce()
    r = known.row("seed", mixed, ce)
    assert r["tokens"] == 4
    assert r["handicap"]["mean"] == pytest.approx(0.4 + 0.1 * 1.5)  # the extra block is left out
    assert r["gain"]["mean"] == pytest.approx(0.2)                  # -(E + log Z) = 0.3 - 0.1
    assert r["gain"]["stderr"] == pytest.approx(0.0)
    assert r["recovered"] == pytest.approx(0.2 / 0.55)
    text = known.table([r], mix=0.5, updates=400)
    assert "| seed | 4 | 0.5500 ± " in text and "| 36% |" in text


def test_a_reference_without_the_scored_tokens_is_refused(known):
    mixed, ce = mixed_and_ce()
    del ce[(0, 2)]
    with pytest.raises(ValueError, match="lacks 1 of the scored tokens"):
        known.row("linear", mixed, ce)
