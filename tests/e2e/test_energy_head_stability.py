"""No energy head blows up the LM it is added to (issue 20's stability test).

A CE-trained transformer_lm_alibi_tiny (blocks of 128, batch 16: the study's settings)
continues for 30 updates under MonArc with `--energy-head rich --energy-weight 4
--num-candidates 4` at lr 1e-3 with no warmup, the flags that, before the bilinear term
was scaled by 1/sqrt(d), took z to 16 and the LM loss 0.19 bits up within 25 updates on
this corpus from a 100-update base (5.5 and 0.5 bits on the Debian corpus), and at 1/sqrt(d) still swung z from
3.9 to 0.35 and the LM 0.13 bits up in 15 updates. Now z stays within [0.5, 2] and the
LM loss within 0.05 bits of its start (the first log record, updates 1-5) at every log
point of the first 30 updates (the blow-ups above came within 25).
"""

import json

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow

STUDY = ["--task", "language_modeling", "--arch", "transformer_lm_alibi_tiny",
         "--sample-break-mode", "none", "--tokens-per-sample", "128", "--batch-size", "16",
         "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--adam-eps", "1e-6",
         "--weight-decay", "0.01", "--lr", "1e-3", "--lr-scheduler", "polynomial_decay",
         "--dropout", "0.1", "--attention-dropout", "0.0", "--clip-norm", "1.0", "--cpu",
         "--no-epoch-checkpoints", "--no-last-checkpoints", "--log-format", "json",
         "--log-interval", "5", "--num-workers", "0", "--seed", "1"]
CONTINUE = ["--reset-optimizer", "--reset-lr-scheduler", "--reset-dataloader",
            "--reset-meters", "--warmup-updates", "0", "--max-update", "30",
            "--total-num-update", "30"]


def train_records(result) -> list:
    records = []
    for line in (result.stdout + result.stderr).splitlines():
        if '"num_updates"' in line and '"lm_loss"' in line and "{" in line:
            record = json.loads(line[line.index("{"):])
            if "valid_loss" not in record and "train_loss" not in record:  # train_inner only
                records.append(record)
    return records


def test_the_rich_head_continuation_keeps_z_and_the_lm_loss_where_they_start(data_bin,
                                                                           tmp_path):
    base = tmp_path / "base"
    run_cli("fairseq-train", data_bin, *STUDY, "--criterion", "cross_entropy",
            "--max-update", "60", "--total-num-update", "60", "--warmup-updates", "20",
            "--save-dir", base)
    result = run_cli("fairseq-train", data_bin, *STUDY, "--criterion", "monarc",
                     "--energy-head", "rich", "--energy-weight", "4", "--num-candidates", "4",
                     "--restore-file", base / "checkpoint_best.pt", *CONTINUE,
                     "--save-dir", tmp_path / "rich")
    rich = {int(r["num_updates"]): r for r in train_records(result)}
    assert sorted(rich) == list(range(5, 31, 5))
    curve = "\n".join(f"{u}: lm {r['lm_loss']} z {r['z']} gnorm {r['gnorm']}"
                       for u, r in sorted(rich.items()))
    start = float(rich[5]["lm_loss"])
    for record in rich.values():
        assert 0.5 <= float(record["z"]) <= 2.0, curve
        assert float(record["lm_loss"]) <= start + 0.05, curve
