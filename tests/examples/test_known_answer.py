"""The known-answer demonstration (examples/energy_lm/known_answer.py): its floor is the
chain's exact NLL, the handicapped proposal is the stated mixture, and, end to end, the
ELM recovers most of what the handicapped proposal misses."""

import math

import numpy as np
import pytest
import torch

from conftest import build_model, load_script

@pytest.fixture(scope="module")
def known_answer():
    return load_script("examples/energy_lm/known_answer.py")


def test_the_chain_is_a_distribution_with_few_successors(known_answer):
    words, first, trans = known_answer.make_chain(12, 3, 0.1, seed=0)
    assert len(words) == 12 and first.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(trans.sum(1), 1.0)
    assert ((trans[:, :-1] > 0).sum(1) == 3).all() and np.allclose(trans[:, -1], 0.1)


def test_the_floor_is_the_chains_own_nll_written_out(known_answer):
    first = np.array([0.75, 0.25])
    trans = np.array([[0.0, 0.5, 0.5], [0.9, 0.0, 0.1]])  # columns: w0, w1, stop
    docs = [[0, 1], [1]]
    # w0 | start, w1 | w0, stop | w1; then w1 | start, stop | w1
    expected = -(math.log(0.75) + math.log(0.5) + math.log(0.1) + math.log(0.25) + math.log(0.1))
    bits, count = known_answer.true_bits(docs, first, trans)
    assert count == 5 and bits == pytest.approx(expected / 5 / math.log(2))


def test_the_floor_of_a_long_sample_approaches_the_entropy_rate(known_answer):
    words, first, trans = known_answer.make_chain(8, 3, 0.2, seed=1)
    docs = known_answer.sample_stream(first, trans, 60_000, seed=2)
    bits, _ = known_answer.true_bits(docs, first, trans)
    # the entropy rate of the chain over symbols (words and the stop, which restarts)
    stop = trans.shape[1] - 1
    full = np.zeros((stop + 1, stop + 1))
    full[:stop], full[stop, :stop] = trans, first
    evals, evecs = np.linalg.eig(full.T)
    pi = np.real(evecs[:, np.argmin(abs(evals - 1))])
    pi /= pi.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = -np.nansum(pi[:, None] * full * np.log2(np.where(full > 0, full, 1.0)))
    assert bits == pytest.approx(rate, abs=0.03)


def test_the_uniform_mix_makes_q_the_stated_mixture(data_bin):
    plain, _ = build_model(data_bin, "transformer_lm_alibi_tiny", task="language_modeling")
    mixed, _ = build_model(data_bin, "transformer_lm_alibi_tiny", "--proposal-uniform-mix", "0.3",
                           task="language_modeling")
    mixed.load_state_dict(plain.state_dict())
    tokens = torch.randint(4, 300, (2, 7))
    p = torch.softmax(plain(tokens)[0].double(), -1)
    q = torch.softmax(mixed(tokens)[0].double(), -1)
    torch.testing.assert_close(q, 0.7 * p + 0.3 / p.size(-1), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"--proposal-uniform-mix must be in \[0, 1\)"):
        build_model(data_bin, "transformer_lm_alibi_tiny", "--proposal-uniform-mix", "1",
                    task="language_modeling")


@pytest.mark.slow
def test_the_elm_recovers_what_a_handicapped_proposal_misses(known_answer, tmp_path):
    """Reduced settings (about a minute on 2 cores): with q mixed half with uniform, the
    MonArc ELM (exact Z) closes most of the gap to the true entropy; with a plain q, the
    ELM equals the LM."""
    known_answer.main(["--out", str(tmp_path), "--updates", "500", "--train-tokens", "50000",
                       "--valid-tokens", "3000", "--runs", "monarc_handicapped,monarc_plain"])
    import json

    floor = json.loads((tmp_path / "corpus.json").read_text())["floor_bits"]
    handicapped = json.loads((tmp_path / "runs" / "monarc_handicapped" / "eval.json").read_text())
    plain = json.loads((tmp_path / "runs" / "monarc_plain" / "eval.json").read_text())
    assert handicapped["lm"] > floor + 0.5  # the handicap costs at least half a bit
    recovered = (handicapped["lm"] - handicapped["elm_exact"]) / (handicapped["lm"] - floor)
    assert recovered > 0.5, (handicapped, floor)
    assert abs(plain["elm_exact"] - plain["lm"]) < 0.02
    assert plain["elm_exact"] > floor - 0.02  # no model beats the truth (up to sampling)
