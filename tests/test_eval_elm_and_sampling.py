"""ELM evaluation (K-sample log Z against exact Z by enumerating the vocabulary) and
energy-based generation (SIR), in-process and through the command line / hub."""

import re

import pytest
import torch

from conftest import LM_SMALL, build_model, error_line, run_cli
from energy_lm.eval_elm import evaluate, exact_log_z_batch
from energy_lm.sampling import sir_sample


def energy_lm(data_bin, seed=0, std=0.5):
    model, task = build_model(data_bin, "transformer_lm_zero_clap_tiny", "--decoder-layers", "1",
                              task="language_modeling")
    torch.manual_seed(seed)
    for p in model.energy_head.parameters():
        torch.nn.init.normal_(p, std=std)
    return model, task


def test_exact_log_z_by_enumeration_matches_a_direct_sum(data_bin):
    model, task = energy_lm(data_bin)
    src = torch.randint(4, 300, (1, 4))
    log_z = exact_log_z_batch(model, src, chunk=97)  # (1, 3); an odd chunk size on purpose
    vocab = len(task.source_dictionary)
    all_tokens = torch.arange(vocab).view(1, -1, 1).expand(1, vocab, 3)
    lprobs, _, cand_energy = model.score_candidates(
        src, torch.cat([src[:, None, :1].expand(1, vocab, 1), all_tokens], dim=2))
    direct = torch.logsumexp(lprobs[:, :-1] - cand_energy[:, :, 1:].permute(0, 2, 1), dim=-1)
    torch.testing.assert_close(log_z, direct, rtol=1e-5, atol=1e-5)


def test_k_sample_elm_estimate_approaches_exact_z(data_bin):
    model, task = energy_lm(data_bin)
    torch.manual_seed(3)
    src = torch.randint(4, 300, (2, 6))
    target = torch.cat([src[:, 1:], torch.randint(4, 300, (2, 1))], dim=1)
    batch = {"net_input": {"src_tokens": src}, "target": target}
    result = evaluate(model, [batch], num_samples=400, exact_z=True, pad=task.source_dictionary.pad())
    assert result["tokens"] == 10
    # the energies are far from zero, so Z is far from 1 ...
    assert abs(result["elm_exact"] - result["elm_z1"]) > 0.05
    # ... and the K-sample estimate finds it, within its standard error (plus Jensen's bias)
    assert abs(result["elm_k"] - result["elm_exact"]) < 4 * result["elm_k_stderr"] + 0.01
    few = evaluate(model, [batch], num_samples=4, exact_z=False, pad=task.source_dictionary.pad())
    assert few["elm_k_stderr"] > result["elm_k_stderr"]


def plain_sample(model, prefix, steps, generator, pad):
    """Ancestral sampling from the LM alone, written out for the test."""
    tokens = prefix
    for _ in range(steps):
        logits = model(tokens)[0][:, -1].float()
        logits[:, pad] = float("-inf")
        nxt = torch.multinomial(torch.softmax(logits, -1), 1, replacement=True, generator=generator)
        tokens = torch.cat([tokens, nxt], dim=1)
    return tokens


def test_sir_with_one_candidate_is_plain_lm_sampling(data_bin):
    model, task = energy_lm(data_bin)
    pad = task.source_dictionary.pad()
    prefix = torch.randint(4, 300, (2, 3))
    expected = plain_sample(model, prefix, 6, torch.Generator().manual_seed(7), pad)
    got = sir_sample(model, prefix, 6, num_candidates=1, pad=pad,
                     generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.stack(got), expected)


def test_sir_with_many_candidates_prefers_low_energy(data_bin):
    model, task = energy_lm(data_bin, std=2.0)
    pad = task.source_dictionary.pad()
    prefix = torch.randint(4, 300, (64, 3))

    def mean_energy(k):
        rows = torch.stack(sir_sample(model, prefix, 1, num_candidates=k, pad=pad,
                                      generator=torch.Generator().manual_seed(11)))
        _, energy, _ = model.score_candidates(rows, rows.unsqueeze(1))
        return float(energy[:, -1].mean())

    assert mean_energy(16) < mean_energy(1) - 0.2
    a = sir_sample(model, prefix[:2], 4, 4, pad=pad, generator=torch.Generator().manual_seed(5))
    b = sir_sample(model, prefix[:2], 4, 4, pad=pad, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.slow
def test_eval_elm_cli_and_hub_sampling_on_a_trained_checkpoint(data_bin, tmp_path):
    run_cli("fairseq-train", data_bin, "--task", "language_modeling", "--arch",
            "transformer_lm_clap_tiny", *LM_SMALL, "--criterion", "monarc", "--max-update", "3",
            "--save-dir", tmp_path)
    result = run_cli("energy-lm-eval-elm", data_bin, "--path", tmp_path / "checkpoint_last.pt",
                     "--num-samples", "4", "--max-batches", "2", "--batch-size", "2",
                     "--tokens-per-sample", "16", "--exact-z")
    out = result.stdout
    for label in ("lm", r"elm \(Z=1\)", r"elm \(K\)", r"elm \(exact Z\)"):
        assert re.search(rf"{label}\s+[0-9.]+ bits\s+ppl [0-9.]+", out), (label, out)
    bad = run_cli("energy-lm-eval-elm", data_bin, "--path", tmp_path / "missing.pt", check=False)
    assert bad.returncode == 2 and "checkpoint not found" in error_line(bad.stderr)

    from energy_lm.models.transformer_lm_energy import TransformerLMEnergyModel

    vocab, merges = data_bin / "vocab.json", data_bin / "merges.txt"
    lm = TransformerLMEnergyModel.from_pretrained(
        str(tmp_path), "checkpoint_last.pt", str(data_bin), bpe="energy_byte_bpe",
        bpe_vocab=str(vocab), bpe_merges=str(merges))
    first = lm.sample("Return the", num_candidates=4, max_new_tokens=5, seed=3)
    again = lm.sample("Return the", num_candidates=4, max_new_tokens=5, seed=3)
    assert isinstance(first, str) and first.startswith("Return the") and first == again
