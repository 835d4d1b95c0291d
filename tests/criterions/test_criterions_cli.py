"""monarc, nce and cwt through the real `fairseq-train`, on both model families:
training runs, resume equals an uninterrupted run (sampling included), wrong
combinations fail at start-up with one clear line."""

import re

import pytest
import torch

from conftest import LM_SMALL, TRAIN_SMALL, error_line, run_cli

pytestmark = pytest.mark.slow

CRITERIONS = ["monarc", "nce", "cwt"]


def train(data_bin, save_dir, family, criterion, *extra, updates=3, check=True):
    if family == "masked":
        base = ["--task", "masked_lm", "--arch", "roberta_zero_clap_tiny", *TRAIN_SMALL]
    else:  # "causal", or "llama": rotary, RMSNorm, SwiGLU, grouped heads
        arch = "transformer_lm_llama_tiny" if family == "llama" else "transformer_lm_alibi_tiny"
        base = ["--task", "energy_language_modeling", "--document-attention",
                "--arch", arch, *LM_SMALL]
    return run_cli("fairseq-train", data_bin, *base, "--criterion", criterion,
                   "--max-update", updates, "--save-dir", save_dir, *extra, check=check)


def logged(result, key):
    """Values of `key` in fairseq's per-update `train_inner` lines (--log-interval 1)."""
    text = result.stdout + result.stderr
    lines = [line for line in text.splitlines() if "| train_inner |" in line]
    return [float(m) for line in lines for m in re.findall(rf"[ ,]{key}=([-0-9.e+]+|nan|inf)", line)]


@pytest.mark.parametrize("family", ["causal", "masked", "llama"])
@pytest.mark.parametrize("criterion", CRITERIONS)
def test_each_criterion_trains_each_family(data_bin, tmp_path, family, criterion):
    result = train(data_bin, tmp_path, family, criterion)
    losses = logged(result, "loss")
    assert len(losses) >= 3 and all(map(lambda x: x == x and abs(x) < 1e3, losses))
    if criterion == "cwt":
        assert logged(result, "cwt_acc")
    else:  # the energy metrics are logged, and Z = exp(-E(y)) starts at 1 (E = 0)
        for key in ("lm_loss", "ebm_loss", "elm_loss", "z", "energy_acc", "energy_gap", "tie_share"):
            assert logged(result, key), key
        assert abs(logged(result, "z")[0] - 1.0) < 1e-3
    assert (tmp_path / "checkpoint_last.pt").exists()


def test_the_llama_preset_trains_with_cross_entropy(data_bin, tmp_path):
    result = train(data_bin, tmp_path, "llama", "cross_entropy")
    losses = logged(result, "loss")
    assert len(losses) >= 3 and all(x == x and 0 < x < 1e3 for x in losses)


@pytest.mark.parametrize("family", ["causal", "masked"])
def test_monarc_resume_reproduces_the_uninterrupted_run(data_bin, tmp_path, family):
    straight = train(data_bin, tmp_path / "straight", family, "monarc", updates=4)
    train(data_bin, tmp_path / "resumed", family, "monarc", updates=2)
    resumed = train(data_bin, tmp_path / "resumed", family, "monarc", updates=4)
    # the losses of updates 3 and 4 (samples drawn from the re-seeded RNG) are identical
    assert logged(resumed, "ebm_loss")[-2:] == logged(straight, "ebm_loss")[-2:]
    assert logged(resumed, "loss")[-2:] == logged(straight, "loss")[-2:]
    a = torch.load(tmp_path / "straight" / "checkpoint_last.pt")["model"]
    b = torch.load(tmp_path / "resumed" / "checkpoint_last.pt")["model"]
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("criterion", ["monarc", "nce"])
def test_energy_criterion_on_a_stock_model_fails_clearly(data_bin, tmp_path, criterion):
    result = run_cli("fairseq-train", data_bin, "--task", "language_modeling", "--arch",
                     "transformer_lm", *LM_SMALL, "--criterion", criterion, "--max-update", "1",
                     "--save-dir", tmp_path, check=False)
    assert result.returncode != 0
    last = error_line(result.stderr)
    assert f"--criterion {criterion} needs a model with a candidate stream" in last


def test_cwt_with_an_output_dim_unlike_the_embedding_fails_clearly(data_bin, tmp_path):
    result = run_cli("fairseq-train", data_bin, "--task", "language_modeling", "--arch",
                     "transformer_lm_clap_tiny", *LM_SMALL, "--decoder-output-dim", "16",
                     "--criterion", "cwt", "--max-update", "1", "--save-dir", tmp_path, check=False)
    assert result.returncode != 0
    assert "output dim 16 != embedding dim 32" in error_line(result.stderr)


def test_headless_checkpoint_gets_a_head_and_fine_tunes_with_cross_entropy(data_bin, tmp_path):
    for family, task_args, crit in (
            ("causal", ["--task", "language_modeling", "--arch", "transformer_lm_clap_tiny",
                        *LM_SMALL], "cross_entropy"),
            ("masked", ["--task", "masked_lm", "--arch", "roberta_clap_tiny", *TRAIN_SMALL],
             "masked_lm")):
        headless = tmp_path / family / "headless"
        run_cli("fairseq-train", data_bin, *task_args, "--criterion", "cwt", "--max-update", "2",
                "--save-dir", headless)
        headed = tmp_path / family / "headed.pt"
        run_cli("energy-lm-add-head", headless / "checkpoint_last.pt", headed)
        state = torch.load(headed)
        key = "decoder.output_projection.weight" if family == "causal" else "encoder.lm_head.weight"
        embed = state["model"]["decoder.embed_tokens.weight" if family == "causal"
                               else "encoder.sentence_encoder.embed_tokens.weight"]
        # a copy of the (L2-normalised, as the trunk saw them) input embedding rows
        torch.testing.assert_close(state["model"][key], torch.nn.functional.normalize(embed, dim=-1))
        result = run_cli("fairseq-train", data_bin, *task_args, "--untied-head", "--criterion", crit,
                         "--max-update", "4", "--restore-file", headed, "--reset-optimizer",
                         "--reset-dataloader", "--reset-meters", "--reset-lr-scheduler",
                         "--save-dir", tmp_path / family / "finetuned")
        assert logged(result, "loss")
        final = torch.load(tmp_path / family / "finetuned" / "checkpoint_last.pt")["model"]
        # untied: the head trained apart from the embedding
        assert not torch.equal(final[key], final["decoder.embed_tokens.weight" if family == "causal"
                                                  else "encoder.sentence_encoder.embed_tokens.weight"])


def test_hydra_train_runs_the_monarc_yaml(data_bin, tmp_path):
    from energy_lm.configs import config_dir

    run_cli("fairseq-hydra-train", "--config-dir", config_dir("pretraining"), "--config-name", "transformer_lm_zero_clap_tiny_monarc",
            f"task.data={data_bin}", "optimization.max_update=2", f"checkpoint.save_dir={tmp_path}",
            "common.cpu=true", "dataset.num_workers=0", "criterion.energy_weight=3.0",
            f"hydra.run.dir={tmp_path / 'hydra'}")
    state = torch.load(tmp_path / "checkpoint_last.pt")
    assert state["cfg"]["criterion"]["_name"] == "monarc"
    assert state["cfg"]["criterion"]["energy_weight"] == 3.0  # the override, not the yaml's 2.0
    assert "energy_head.context_proj.weight" in state["model"]  # the default (seed) head


def test_the_logged_valid_elm_estimate_agrees_with_eval_elm(data_bin, tmp_path):
    """The validation's elm_est is what energy-lm-eval-elm estimates on the same split
    (same estimator, its own tail samples): within a few of its standard errors, so the
    log and the evaluation say the same about the ELM against the LM."""
    import json
    import math

    result = run_cli("fairseq-train", data_bin, "--task", "language_modeling", "--arch",
                     "transformer_lm_alibi_tiny", *LM_SMALL, "--criterion", "monarc",
                     "--max-update", "20", "--save-dir", tmp_path, "--log-format", "json",
                     "--valid-topk", "8", "--valid-tail-samples", "8",
                     "--best-checkpoint-metric", "elm_est")  # early stopping on the ELM
    valid = [json.loads(line[line.index("{"):]) for line in result.stdout.splitlines()
             if '"valid_elm_est"' in line][-1]
    out = tmp_path / "eval.json"
    run_cli("energy-lm-eval-elm", data_bin, "--path", tmp_path / "checkpoint_last.pt",
            "--topk", "8", "--num-samples", "8", "--json", out)
    evaluated = json.loads(out.read_text())
    bias = float(valid["valid_elm_est_bias"])
    assert 0 <= bias < 0.05
    # the ELM against the LM, as the log says it and as eval-elm measures it (fairseq's
    # in-training validation scores its own batching of the split: LM figures 0.01 bits
    # apart here, even for stock fairseq; the difference of the two is what must agree)
    logged_gain = float(valid["valid_elm_est"]) - float(valid["valid_lm_loss"])
    measured_gain = evaluated["elm_est"] - evaluated["lm"]
    z1_gain = float(valid["valid_elm_loss"]) - float(valid["valid_lm_loss"])
    stderr = evaluated["elm_est_stderr"]
    assert abs(logged_gain - measured_gain) < 4 * math.sqrt(2) * stderr + 2e-3
    assert abs(z1_gain - measured_gain) > abs(logged_gain - measured_gain)
    # the checkpoints are scored by the ELM's estimate (what checkpoint_best follows)
    import re

    scores = re.findall(r"Saved checkpoint .*score ([0-9.]+)\)", result.stdout + result.stderr)
    assert scores and float(scores[-1]) == pytest.approx(float(valid["valid_elm_est"]), abs=1e-3)
    # the log's own figure of it
    # (lm_loss is logged to 3 decimals, elm_est and elm_gain to 4)
    assert float(valid["valid_elm_gain"]) == pytest.approx(logged_gain, abs=7e-4)
