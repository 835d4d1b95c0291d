"""`--sir-candidates` through fairseq's own tools, as a user runs them: fairseq-interactive
samples a MonArc checkpoint's ELM from raw-text prompts and logs the resampling weights,
K = 1 prints exactly what fairseq's own sampling prints, fairseq-generate samples the
language_modeling task's data, and the hub's `sample` does the same in Python."""

import re

import pytest

from conftest import error_line, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(monarc_lm_checkpoint):
    return monarc_lm_checkpoint


def interactive(data_bin, checkpoint, prompts, *flags, check=True, task="language_modeling"):
    bpe = ["--bpe", "energy_byte_bpe", "--bpe-vocab", data_bin / "vocab.json",
           "--bpe-merges", data_bin / "merges.txt"]
    return run_cli("fairseq-interactive", data_bin, "--task", task, "--path",
                   checkpoint, "--input", prompts, "--sampling", "--beam", "1", "--max-len-b",
                   "6", "--seed", "7", "--cpu", *bpe, *flags, check=check)


def hypotheses(out: str):
    return [line for line in out.splitlines() if line.startswith("H-")]


def test_interactive_samples_the_elm_and_k1_is_fairseqs_sampling(data_bin, checkpoint, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Return the\nThe list of\n")
    sir = interactive(data_bin, checkpoint, prompts, "--sir-candidates", "4",
                      "--sir-print-weights")
    out = sir.stdout + sir.stderr
    assert len(hypotheses(sir.stdout)) == 2, out[-3000:]
    steps = re.findall(r"SIR step \d+, sentence \d: kept \S+ \| (.*)", out)
    assert steps and all(len(s.split()) == 4 for s in steps), out[-3000:]  # K = 4 each
    weights = [float(w) for w in re.findall(r":w=([0-9.]+)", steps[0])]
    assert sum(weights) == pytest.approx(1.0, abs=2e-3)
    plain = interactive(data_bin, checkpoint, prompts)
    one = interactive(data_bin, checkpoint, prompts, "--sir-candidates", "1")
    assert hypotheses(one.stdout) == hypotheses(plain.stdout) != []
    other = interactive(data_bin, checkpoint, prompts, "--sir-candidates", "4",
                        task="energy_language_modeling")
    assert len(hypotheses(other.stdout)) == 2, other.stdout[-2000:] + other.stderr[-2000:]
    bad = interactive(data_bin, checkpoint, prompts, "--sir-candidates", "4", "--beam", "2",
                      "--nbest", "2", check=False)
    assert bad.returncode != 0 and "needs --beam 1" in error_line(bad.stderr), bad.stderr[-2000:]


def test_generate_and_the_hub_sample_with_sir(data_bin, checkpoint):
    gen = run_cli("fairseq-generate", data_bin, "--task", "language_modeling", "--path",
                  checkpoint, "--gen-subset", "valid", "--sampling", "--beam", "1",
                  "--sir-candidates", "4", "--max-len-a", "1", "--max-len-b", "4",
                  "--tokens-per-sample", "16", "--batch-size", "4", "--num-shards", "50",
                  "--shard-id", "0", "--cpu", "--seed", "3")
    assert len(hypotheses(gen.stdout)) > 0, gen.stdout[-2000:] + gen.stderr[-2000:]

    from energy_lm.models.transformer_lm_energy import TransformerLMEnergyModel

    lm = TransformerLMEnergyModel.from_pretrained(
        str(checkpoint.parent), checkpoint.name, str(data_bin), bpe="energy_byte_bpe",
        bpe_vocab=str(data_bin / "vocab.json"), bpe_merges=str(data_bin / "merges.txt"))
    first = lm.sample(["Return the", "A"], num_candidates=4, max_new_tokens=5, seed=3)
    again = lm.sample(["Return the", "A"], num_candidates=4, max_new_tokens=5, seed=3)
    assert first == again and first[0].startswith("Return the")
    assert lm.sample("Return the", beam=1, sampling=True, sir_candidates=4, max_len_a=1,
                     max_len_b=5).startswith("Return the")
