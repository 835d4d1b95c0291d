"""Resume = no resume, for every task and criterion the package ships: a fairseq-train
run stopped in the middle of its first epoch and again in its second, and resumed each
time, with fairseq's default data-loading worker, logs the same per-update losses as the
uninterrupted run (fresh masks every epoch) and ends in the same checkpoint, bit for bit
(CPU, fp32: the same operations in the same order)."""

import re

import pytest
import torch

from conftest import LM_SMALL, TRAIN_SMALL, run_cli

pytestmark = pytest.mark.slow

RUNS = [("masked", "masked_lm"), ("masked", "monarc"), ("masked", "cwt"),
        ("causal", "cross_entropy"), ("causal", "monarc"), ("causal", "nce")]
# the valid split as the training set, 8 blocks a batch: 5 updates an epoch; one stop in
# epoch 1 and one in epoch 2 (a process that resumes in epoch 2 builds that epoch's data
# afresh, so its masks are those an uninterrupted run must also have had there)
STOPS, END = (3, 7), 12


def train(data_bin, save_dir, family, criterion, updates):
    if family == "masked":
        base = ["--task", "masked_lm", "--arch", "roberta_zero_clap_tiny", *TRAIN_SMALL]
    else:
        base = ["--task", "language_modeling", "--arch", "transformer_lm_alibi_tiny", *LM_SMALL]
    # a small training set so that an epoch ends within the test; fairseq's own default
    # of one data-loading worker (the later flag wins)
    return run_cli("fairseq-train", data_bin, *base, "--criterion", criterion,
                   "--train-subset", "valid", "--disable-validation", "--num-workers", "1",
                   "--batch-size", "8",
                   "--max-update", updates, "--save-dir", save_dir)


def per_update(result, key="loss"):
    """(epoch, update, value) of each `train_inner` line (--log-interval 1)."""
    out = []
    for line in (result.stdout + result.stderr).splitlines():
        if "| train_inner |" not in line:
            continue
        epoch = int(re.search(r"epoch (\d+)", line).group(1))
        update = int(re.search(r"num_updates=(\d+)", line).group(1))
        out.append((epoch, update, float(re.search(rf"[ ,]{key}=([-0-9.e+]+)", line).group(1))))
    return out


@pytest.mark.parametrize("family, criterion", RUNS)
def test_a_run_resumed_mid_epoch_is_the_uninterrupted_run(data_bin, tmp_path, family, criterion):
    straight = per_update(train(data_bin, tmp_path / "straight", family, criterion, END))
    assert [u for _, u, _ in straight] == list(range(1, END + 1))
    resumed, done = [], 0
    for stop in (*STOPS, END):
        resumed += per_update(train(data_bin, tmp_path / "resumed", family, criterion, stop))
        assert resumed[-1][1] == stop
        done = stop
    epoch_at = {u: e for e, u, _ in straight}
    assert [epoch_at[s] for s in STOPS] == [1, 2] and epoch_at[END] == 3, \
        "the stops must fall inside epochs 1 and 2"
    assert resumed == straight  # the same epochs, updates and losses
    a = torch.load(tmp_path / "straight" / "checkpoint_last.pt")
    b = torch.load(tmp_path / "resumed" / "checkpoint_last.pt")
    assert b["optimizer_history"][-1]["num_updates"] == done == END
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=0, atol=0, msg=name)
