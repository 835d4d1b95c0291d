"""run_scoring.paired_clustered, the studies' one paired comparison: its standard error
counts the test set's blocks (tokens of a block move together, and every seed is scored
on the same blocks) and the seeds, where a per-token standard error counts neither."""

import math
import random
import statistics

import pytest

from conftest import load_script

scoring = load_script("examples/energy_lm/run_scoring.py")


def records(values, blocks, tokens_per_block):
    """Per-token records {(block, position): {"token", "x"}} from a flat list of values."""
    out, k = {}, 0
    for b in range(blocks):
        for p in range(tokens_per_block):
            out[(b, p)] = {"token": 7, "x": values[k]}
            k += 1
    return out


def zeros(blocks, tokens_per_block):
    return records([0.0] * blocks * tokens_per_block, blocks, tokens_per_block)


def synthetic(seeds, blocks, per_block, block_sd, seed_sd, token_sd, rng):
    """d = u_block (shared by the seeds) + v_seed + noise."""
    u = [rng.gauss(0, block_sd) for _ in range(blocks)]
    runs = []
    for _ in range(seeds):
        v = rng.gauss(0, seed_sd)
        values = [u[b] + v + rng.gauss(0, token_sd) for b in range(blocks) for _ in range(per_block)]
        runs.append((records(values, blocks, per_block), zeros(blocks, per_block)))
    return runs


def x(r):
    return r["x"]


def test_block_effects_shared_by_the_seeds_are_counted():
    """Block effects of sd 1, 25 blocks: the mean's error is ~1/5; a per-token standard
    error (2,500 tokens x 3 seeds, token noise 0.1) would say ~0.02."""
    spread = []
    for trial in range(30):
        rng = random.Random(trial)
        runs = synthetic(3, 25, 100, block_sd=1.0, seed_sd=0.0, token_sd=0.1, rng=rng)
        out = scoring.paired_clustered(runs, x, x, resamples=400, rng_seed=trial)
        spread.append(out["mean"])
        assert 0.1 < out["stderr"] < 0.35 and 0.1 < out["stderr_blocks"] < 0.35
        naive = scoring.paired(*runs[0], x, x)["stderr"]
        assert naive < out["stderr"] / 4
    # the quoted error is the real spread of the estimate over repeated test sets
    assert 0.12 < statistics.stdev(spread) < 0.3


def test_seed_effects_are_counted():
    rng = random.Random(5)
    runs = synthetic(4, 20, 50, block_sd=0.0, seed_sd=1.0, token_sd=0.01, rng=rng)
    out = scoring.paired_clustered(runs, x, x, resamples=2000)
    seed_means = [statistics.mean(r[0][k]["x"] for k in r[0]) for r in runs]
    want = statistics.stdev(seed_means) / math.sqrt(4)
    assert out["stderr_seeds"] == pytest.approx(want)
    assert out["stderr"] == pytest.approx(want * math.sqrt(3 / 4), rel=0.3)  # bootstrap's n-1
    assert out["stderr_blocks"] < 0.01 and out["seeds"] == 4 and out["blocks"] == 20


def test_runs_on_other_tokens_are_refused():
    a = zeros(2, 3)
    b = zeros(2, 3)
    b[(1, 2)] = {"token": 8, "x": 0.0}
    with pytest.raises(ValueError, match="same tokens"):
        scoring.paired_clustered([(a, b)], x, x)
    with pytest.raises(ValueError, match="same tokens"):
        scoring.paired_clustered([(zeros(2, 3), zeros(2, 3)), (zeros(3, 3), zeros(3, 3))], x, x)
