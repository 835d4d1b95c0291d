"""Wrong inputs to the console scripts end in one line naming what is wrong (the issue's
table of tracebacks, redone): fill-mask's sentences, --topk, folders and model family;
energy flags through the real fairseq-train."""

import pytest

from conftest import LM_SMALL, TRAIN_SMALL, error_line, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoints(data_bin, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_inputs")
    run_cli("fairseq-train", data_bin, "--task", "masked_lm", "--arch", "roberta_alibi_tiny",
            *TRAIN_SMALL, "--criterion", "masked_lm", "--max-update", "1", "--save-dir",
            root / "mlm")
    run_cli("fairseq-train", data_bin, "--task", "language_modeling", "--arch",
            "transformer_lm_alibi_tiny", *LM_SMALL, "--criterion", "cross_entropy",
            "--max-update", "1", "--save-dir", root / "lm")
    return root


@pytest.mark.parametrize("args,expected", [
    (["No mask here."], "exactly one <mask>, got 0"),
    (["Two <mask> <mask>."], "exactly one <mask>, got 2"),
    ([""], "exactly one <mask>, got 0"),
    (["A <mask>.", "--topk", "0"], "--topk must be >= 1, got 0"),
    (["A <mask>.", "--topk", "5000"], "--topk must be in [1,"),
    (["A <mask>.", "--scoring", "elm", "--elm-candidates", "2"],
     "--elm-candidates must be 'all' or a count >= --topk (3), got '2'"),
    (["A <mask>.", "--elm-candidates", "many"], "--elm-candidates must be 'all' or a count"),
])
def test_fill_mask_inputs(checkpoints, data_bin, args, expected):
    done = run_cli("energy-lm-fill-mask", checkpoints / "mlm", data_bin, "--checkpoint-file",
                   "checkpoint_last.pt", *args, check=False)
    assert done.returncode in (1, 2) and expected in error_line(done.stderr), done.stderr[-1500:]


def test_fill_mask_ranks_by_the_elm_and_says_so(checkpoints, data_bin):
    for scoring, header in (("elm", "scoring: elm, q * exp(-E) renormalised over the top 32 "
                                    "fillings of q"),
                            ("lm", "scoring: lm, the MLM head's probability q")):
        done = run_cli("energy-lm-fill-mask", checkpoints / "mlm", data_bin, "--checkpoint-file",
                       "checkpoint_last.pt", "Return the <mask>.", "--scoring", scoring,
                       "--topk", "2")
        lines = done.stdout.splitlines()
        assert header in lines, done.stdout
        filled = [line for line in lines if line.startswith("  ") and "Return the" in line]
        assert len(filled) == 2, done.stdout
        probs = [float(line.split()[0]) for line in filled]
        assert 0 <= probs[1] <= probs[0] <= 1
        if scoring == "elm":  # renormalised over 32 candidates: the best has >= 1/32
            assert probs[0] >= 1 / 32 - 1e-3


def test_fill_mask_folders_and_model_family(checkpoints, data_bin, tmp_path):
    missing = run_cli("energy-lm-fill-mask", tmp_path / "nowhere", data_bin, check=False)
    assert "checkpoint not found" in error_line(missing.stderr)
    no_data = run_cli("energy-lm-fill-mask", checkpoints / "mlm", tmp_path / "no-data",
                      "--checkpoint-file", "checkpoint_last.pt", check=False)
    assert "dictionary (DATA_BIN/dict.txt) not found" in error_line(no_data.stderr)
    causal = run_cli("energy-lm-fill-mask", checkpoints / "lm", data_bin, "--checkpoint-file",
                     "checkpoint_last.pt", check=False)
    assert causal.returncode == 1
    assert "fill-mask needs a masked LM" in error_line(causal.stderr), causal.stderr[-1500:]


@pytest.mark.parametrize("flag,value,expected", [
    ("--energy-weight", "-1", "--energy-weight must be finite and >= 0, got -1.0"),
    ("--energy-weight", "nan", "--energy-weight must be finite and >= 0, got nan"),
    ("--energy-guard", "0", "--energy-guard must be finite and > 0"),
    ("--energy-guard", "-5", "--energy-guard must be finite and > 0"),
])
def test_energy_flags_fail_at_start_up_in_one_line(data_bin, tmp_path, flag, value, expected):
    done = run_cli("fairseq-train", data_bin, "--task", "language_modeling", "--arch",
                   "transformer_lm_alibi_tiny", *LM_SMALL, "--criterion", "monarc", flag, value,
                   "--max-update", "1", "--save-dir", tmp_path, check=False)
    assert done.returncode != 0 and expected in error_line(done.stderr), done.stderr[-1500:]
    assert not list(tmp_path.glob("*.pt"))
