"""examples/energy_lm/restate_figures.py on tiny fake records (nothing trained or scored):
the pairing of an energy run with its CE run, the known means, and that one seed's
bootstrap error is the block-clustered one."""

import json
import math

import pytest

from conftest import load_script

restate = load_script("examples/energy_lm/restate_figures.py")


def records(blocks, per_block, lm, energy=lambda b, p: 0.0):
    """{(block, position): row}, with lm(b, p) and energy(b, p) in bits (log Z = 0)."""
    return {(b, p): {"id": b, "position": p, "token": 3, "lm": lm(b, p),
                     "energy": energy(b, p), "log_z": 0.0}
            for b in blocks for p in range(per_block)}


def write(folder, recs):
    folder.mkdir(parents=True)
    (folder / "tokens.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs.values()))


def test_energy_vs_ce_known_means_and_one_seed_error():
    """Energy runs scored on the first 20 blocks of CE runs scored on 25: ELM - LM is the
    mean energy, LM - CE the mean LM offset; for one seed the bootstrap over blocks gives
    the block-clustered error (up to the bootstrap's (n - 1) / n) and no seed part."""
    blocks = range(20)
    ce = [records(range(25), 4, lambda b, p: 5.0 + 0.1 * p) for _ in range(3)]
    energy = [records(blocks, 4, lambda b, p, s=s: 5.0 + 0.1 * p + 0.01 * s + 0.02 * (b % 3),
                      lambda b, p: -0.05 + 0.01 * (b % 5) + 0.001 * p) for s in range(3)]
    rows = dict(restate.energy_vs_ce(energy, ce, resamples=800))
    # energy: mean over b % 5 of 0.01 * (0..4) = 0.02, mean over p of 0.001 * p = 0.0015
    assert rows["ELM - LM (own), 3 seeds"]["mean"] == pytest.approx(-0.05 + 0.02 + 0.0015)
    # LM offset: 0.01 * mean seed (1) + 0.02 * mean of b % 3 over 0..19 (19 / 20)
    lm_offset = 0.01 + 0.02 * sum(b % 3 for b in blocks) / 20
    assert rows["LM - CE, 3 seeds"]["mean"] == pytest.approx(lm_offset)
    assert rows["ELM - CE, 3 seeds"]["mean"] == pytest.approx(lm_offset - 0.0285)
    one = rows["LM - CE, seed 1"]
    assert (one["blocks"], one["tokens"], one["seeds"]) == (20, 80, 1)
    assert one["stderr_seeds"] == 0.0
    assert one["stderr"] == pytest.approx(one["stderr_blocks"] * math.sqrt(19 / 20), rel=0.1)
    pooled = rows["LM - CE, 3 seeds"]
    assert pooled["stderr_seeds"] == pytest.approx(0.01 / math.sqrt(3))
    assert pooled["stderr"] > one["stderr"]  # the seeds' spread is counted too


def test_known_answer_real_pairs_ce_on_the_mixed_runs_tokens(tmp_path):
    write(tmp_path / restate.NCE_RUNS / "ce_seed1", records([7, 3, 9], 5, lambda b, p: 4.0))
    for head, shift in (("linear", 0.2), ("rich", 0.4), ("seed", 0.5)):
        write(tmp_path / restate.KNOWN_ANSWER / f"{head}-mix0.5_seed1",
              records([7, 3], 5, lambda b, p, s=shift: 5.0 + s * (b == 7),
                      lambda b, p, s=shift: -s * (b == 3)))
    text = restate.known_answer_real(tmp_path, resamples=50)
    assert "blocks [7, 3]" in text
    # seed: handicap 1.0 + 0.5 / 2 = 1.25; gain 0.5 / 2 = 0.25; 20% recovered
    assert "| seed: handicap, LM (mixed q) - LM (CE) | +1.2500 |" in text
    assert "| 2 | 10 | 1 | +1.5000 / +1.0000 |" in text  # two blocks: each block's mean
    assert "| seed: gain, LM (mixed q) - ELM (exact Z) | +0.2500 |" in text
    assert "seed 20%" in text
    assert restate.adaptation(tmp_path, resamples=50) is None


def test_other_tokens_are_refused():
    a = records(range(2), 3, lambda b, p: 1.0)
    b = records(range(2), 3, lambda b, p: 1.0)
    b[(1, 2)]["token"] = 4
    with pytest.raises(ValueError, match="same tokens"):
        restate.energy_vs_ce([a], [b], resamples=10)
