"""ALiBi's promise: trained on blocks of 64 tokens, a model evaluates blocks of 128 and
256 with fairseq's own tools (fairseq-eval-lm for causal models, fairseq-validate for
masked ones); a model with learned positions refuses in one line instead of silently
skipping every sample."""

import re

import pytest

from conftest import LM_SMALL, TRAIN_SMALL, error_line, run_cli

pytestmark = pytest.mark.slow


def trained(data_bin, tmp_path, arch, family):
    save = tmp_path / arch
    small = LM_SMALL if family == "causal" else TRAIN_SMALL
    task = "language_modeling" if family == "causal" else "masked_lm"
    run_cli("fairseq-train", data_bin, "--task", task, "--arch", arch, *small, "--max-update", "2",
            "--save-dir", save)
    return save / "checkpoint_last.pt"


def evaluate(data_bin, checkpoint, family, length, check=True):
    if family == "causal":
        return run_cli("fairseq-eval-lm", data_bin, "--path", checkpoint, "--tokens-per-sample",
                       length, "--cpu", "--batch-size", "2", "--gen-subset", "valid", check=check)
    return run_cli("fairseq-validate", data_bin, "--path", checkpoint, "--task", "masked_lm",
                   "--tokens-per-sample", length, "--cpu", "--batch-size", "2",
                   "--valid-subset", "valid", check=check)


@pytest.mark.parametrize("family,alibi,learned", [
    ("causal", "transformer_lm_zero_clap_tiny", "transformer_lm_clap_tiny"),
    ("masked", "roberta_zero_clap_tiny", "roberta_clap_tiny"),
])
def test_alibi_evaluates_longer_blocks_learned_positions_refuse(data_bin, tmp_path, family, alibi,
                                                                learned):
    checkpoint = trained(data_bin, tmp_path, alibi, family)
    for length in (128, 256):  # 2x and 4x the training length
        out = evaluate(data_bin, checkpoint, family, length)
        log = out.stdout + out.stderr
        if family == "causal":
            tokens = int(re.search(r"Evaluated ([\d,]+) tokens", log).group(1).replace(",", ""))
            loss = float(re.search(r"Loss \(base 2\): ([\d.]+)", log).group(1))
            assert tokens > 0 and 0 < loss < 20
        else:
            loss = float(re.search(r"valid on 'valid' subset \| loss ([\d.]+)", log).group(1))
            assert 0 < loss < 20
    checkpoint = trained(data_bin, tmp_path, learned, family)
    refused = evaluate(data_bin, checkpoint, family, 128, check=False)
    assert refused.returncode != 0
    last = error_line(refused.stderr)
    assert "this model learned 64 positions but the task asks for 128" in last
