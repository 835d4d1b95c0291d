"""Bad input gives one clear error line."""

import pytest

from conftest import LM_SMALL, TRAIN_SMALL, error_line, run_cli

pytestmark = pytest.mark.slow


def last_line(result):
    return error_line(result.stderr)


def test_alibi_shifted_on_a_causal_lm(data_bin, tmp_path):
    result = run_cli("fairseq-train", data_bin, "--task", "language_modeling",
                     "--arch", "transformer_lm_alibi_tiny", "--alibi", "shifted", *LM_SMALL,
                     "--save-dir", tmp_path, check=False)
    assert result.returncode == 2
    assert "argument --alibi: invalid choice: 'shifted'" in last_line(result)


def test_unknown_alibi_mode(data_bin, tmp_path):
    result = run_cli("fairseq-train", data_bin, "--task", "masked_lm", "--arch", "roberta_clap_tiny",
                     "--alibi", "diagonal", *TRAIN_SMALL, "--save-dir", tmp_path, check=False)
    assert result.returncode == 2
    assert "argument --alibi: invalid choice: 'diagonal'" in last_line(result)


def test_missing_data_dir(tmp_path):
    missing = tmp_path / "no-such-data-bin"
    result = run_cli("fairseq-train", missing, "--task", "masked_lm", "--arch", "roberta_clap_tiny",
                     *TRAIN_SMALL, "--save-dir", tmp_path, check=False)
    assert result.returncode != 0
    line = last_line(result)
    assert "FileNotFoundError" in line and str(missing) in line


def test_corrupt_checkpoint_restore_and_hub(data_bin, tmp_path):
    from fairseq.models.roberta import RobertaModel

    from energy_lm.patches.checkpoint_errors import CheckpointReadError

    bad = tmp_path / "checkpoint_last.pt"
    bad.write_bytes(b"\x00not a checkpoint" * 100)  # torch would suggest switching safe loading off
    result = run_cli("fairseq-train", data_bin, "--task", "masked_lm", "--arch", "roberta_clap_tiny",
                     *TRAIN_SMALL, "--restore-file", bad, "--save-dir", tmp_path, "--max-update", "1",
                     check=False)
    assert result.returncode != 0
    assert f"cannot read checkpoint {bad}: the file is truncated, corrupt" in last_line(result)
    assert "weights_only" not in last_line(result)
    with pytest.raises(CheckpointReadError, match="truncated, corrupt"):
        RobertaModel.from_pretrained(str(tmp_path), "checkpoint_last.pt", str(data_bin))
    # a truncated real checkpoint
    good = tmp_path / "good"
    run_cli("fairseq-train", data_bin, "--task", "masked_lm", "--arch", "roberta_clap_tiny",
            *TRAIN_SMALL, "--save-dir", good, "--max-update", "1")
    (tmp_path / "cut.pt").write_bytes((good / "checkpoint_last.pt").read_bytes()[:5000])
    with pytest.raises(CheckpointReadError, match="cut.pt"):
        RobertaModel.from_pretrained(str(tmp_path), "cut.pt", str(data_bin))


def test_error_line_skips_a_cpp_teardown_abort():
    stderr = ("Traceback (most recent call last):\n  ...\nValueError: --criterion cwt: output dim "
              "16 != embedding dim 32\nterminate called without an active exception\n")
    assert error_line(stderr) == "ValueError: --criterion cwt: output dim 16 != embedding dim 32"
    assert error_line("fairseq-train: error: bad flag\n") == "fairseq-train: error: bad flag"
