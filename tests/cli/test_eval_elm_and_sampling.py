"""ELM evaluation (K-sample log Z against exact Z by enumerating the vocabulary) and
energy-based generation (SIR), in-process and through the command line / hub."""

import json
import re

import pytest
import torch

from conftest import LM_SMALL, build_model, error_line, run_cli
from energy_lm.cli.eval_elm import evaluate, report
from energy_lm.inference.log_z import exact_log_z_of
from energy_lm.inference.sir_sampler import sir_sample


def energy_lm(data_bin, seed=0, std=0.5):
    """The linear head, randomised (its energies are of a known, moderate size, which the
    estimate's tolerances below assume)."""
    model, task = build_model(data_bin, "transformer_lm_zero_clap_tiny", "--decoder-layers", "1",
                              "--energy-head", "linear", task="language_modeling")
    torch.manual_seed(seed)
    for p in model.energy_head.parameters():
        torch.nn.init.normal_(p, std=std)
    return model, task


def lm_batch(src, target):
    return {"net_input": {"src_tokens": src}, "target": target}


def test_exact_log_z_by_enumeration_matches_a_direct_sum(data_bin):
    model, task = energy_lm(data_bin)
    src = torch.randint(4, 300, (1, 4))
    target = torch.cat([src[:, 1:], torch.randint(4, 300, (1, 1))], dim=1)
    with torch.no_grad():
        log_z = exact_log_z_of(model, lm_batch(src, target), chunk=97)  # (1, 4); odd chunk
        vocab = len(task.source_dictionary)
        full = torch.cat([src, target[:, -1:]], dim=1)  # position 4 follows the block
        all_tokens = torch.arange(vocab).view(1, -1, 1).expand(1, vocab, 4)
        lprobs, _, cand_energy = model.score_candidates(
            full, torch.cat([full[:, None, :1].expand(1, vocab, 1), all_tokens], dim=2))
    direct = torch.logsumexp(lprobs[:, 1:] - cand_energy[:, :, 1:].permute(0, 2, 1), dim=-1)
    torch.testing.assert_close(log_z, direct, rtol=1e-5, atol=1e-5)


def test_elm_estimate_approaches_exact_z_and_is_labelled(data_bin):
    model, task = energy_lm(data_bin)
    torch.manual_seed(3)
    src = torch.randint(4, 300, (2, 6))
    target = torch.cat([src[:, 1:], torch.randint(4, 300, (2, 1))], dim=1)
    batch = lm_batch(src, target)
    g = torch.Generator().manual_seed(0)
    result = evaluate(model, [batch], num_samples=400, topk=8, exact_z_batches=1, generator=g)
    assert result["tokens"] == result["exact_tokens"] == 12  # every target, the last too
    # the energies are far from zero, so Z is far from 1 ...
    assert abs(result["elm_exact"] - result["elm_z1"]) > 0.05
    # ... the estimate finds it within its standard error (plus Jensen's bias) ...
    assert abs(result["elm_est"] - result["elm_exact"]) < 4 * result["elm_est_stderr"] + 0.01
    # ... and the head-only bound is below the exact figure, for certain
    assert result["elm_lower"] <= result["elm_exact"] + 1e-6
    few = evaluate(model, [batch], num_samples=4, topk=8, generator=g)
    assert few["elm_est_stderr"] > result["elm_est_stderr"]
    text = report(result, "valid", "causal", 8, 400)
    for label in ("exact", "estimate +-", "bound: NLL >=", "the seed's convention", "bias vs exact"):
        assert label in text, (label, text)


def test_paired_elm_minus_lm_and_its_per_token_records(data_bin):
    """The paired ELM - LM is the mean of the per-token differences E(x) + log Z (the
    records' own figures), with the standard error of that mean."""
    model, task = energy_lm(data_bin)
    torch.manual_seed(4)
    batches = []
    for n in (5, 7):  # two batches of different lengths, ids as fairseq gives them
        src = torch.randint(4, 300, (2, n))
        target = torch.cat([src[:, 1:], torch.randint(4, 300, (2, 1))], dim=1)
        batches.append(dict(lm_batch(src, target), id=torch.tensor([2 * n, 2 * n + 1])))
    records = []
    result = evaluate(model, batches, num_samples=4, topk=4, exact_z_batches=-1,
                      generator=torch.Generator().manual_seed(0), per_token=records)
    assert len(records) == result["exact_tokens"] == 24
    assert len({(r["id"], r["position"]) for r in records}) == 24  # a key per token
    gains = torch.tensor([r["energy"] + r["log_z"] for r in records], dtype=torch.float64)
    assert result["elm_minus_lm_exact"] == pytest.approx(float(gains.mean()), abs=1e-6)
    assert result["elm_minus_lm_exact"] == pytest.approx(
        result["elm_exact"] - result["lm_on_exact"], abs=1e-6)
    stderr = float(gains.std() / len(gains) ** 0.5)
    assert stderr > 0.01 and result["elm_minus_lm_exact_stderr"] == pytest.approx(stderr,
                                                                                   rel=1e-4)
    lm = sum(r["lm"] for r in records) / len(records)
    assert result["lm_on_exact"] == pytest.approx(lm, abs=1e-6)
    assert "paired per token" in report(result, "valid", "causal", 4, 4)
    partly = []
    evaluate(model, batches, num_samples=4, topk=4, exact_z_batches=1,
             generator=torch.Generator().manual_seed(0), per_token=partly)
    assert len(partly) == 24  # every token; log Z only where it was summed (the first batch)
    assert [r["log_z"] is None for r in partly] == [False] * 10 + [True] * 14
    assert [r["lm"] for r in partly] == pytest.approx([r["lm"] for r in records], abs=1e-9)


def test_a_figure_below_zero_bits_prints_no_perplexity():
    result = {"tokens": 3, "lm": 1.0, "elm_z1": -0.6, "elm_est": -0.61, "elm_est_stderr": 0.01,
              "elm_lower": -0.7}
    text = report(result, "valid", "causal", 4, 8)
    line = next(l for l in text.splitlines() if "Z = 1" in l)
    assert "n/a" in line and "impossible" in line


def test_the_report_warns_when_the_elm_is_above_its_lm_beyond_its_error():
    base = {"tokens": 100, "lm": 6.0, "elm_z1": 5.9, "elm_est_stderr": 0.001,
            "elm_lower": 5.8}
    quiet = report(dict(base, elm_est=6.0015), "valid", "causal", 4, 8)  # within 2 s.e.
    assert "warning" not in quiet
    loud = report(dict(base, elm_est=6.01), "valid", "causal", 4, 8)
    warnings = [line for line in loud.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "+0.0100 bits above the LM" in warnings[0]
    exact = dict(base, elm_est=5.99, exact_tokens=50, lm_on_exact=6.1, elm_exact=6.13,
                 elm_est_on_exact=6.12, elm_est_stderr_on_exact=0.002, elm_lower_on_exact=6.0,
                 elm_minus_lm_exact=0.03, elm_minus_lm_exact_stderr=0.01)
    warnings = [line for line in report(exact, "valid", "causal", 4, 8).splitlines()
                if "warning" in line]
    assert len(warnings) == 1 and "with exact Z the ELM is +0.0300" in warnings[0]


def test_eval_counts_do_not_depend_on_batch_size_or_padding(data_bin):
    """One eos-mode split (right-padded rows of different lengths) scored at batch size 1
    and 3: the same tokens and the same exact figures."""
    model, task = energy_lm(data_bin)
    d = task.source_dictionary
    docs = [[10, 11, 12, 13, 14], [20, 21], [30, 31, 32]]
    rows = []
    for doc in docs:
        row = torch.tensor([d.eos()] + doc + [d.eos()])
        rows.append((row[:-1], row[1:]))

    def batch(items):
        n = max(len(s) for s, _ in items)
        src = torch.full((len(items), n), d.pad())
        tgt = torch.full((len(items), n), d.pad())
        for b, (s, t) in enumerate(items):
            src[b, : len(s)], tgt[b, : len(t)] = s, t
        return lm_batch(src, tgt)

    one = evaluate(model, [batch([r]) for r in rows], topk=4, num_samples=2,
                   exact_z_batches=-1, generator=torch.Generator().manual_seed(0))
    three = evaluate(model, [batch(rows)], topk=4, num_samples=2, exact_z_batches=-1,
                     generator=torch.Generator().manual_seed(0))
    assert one["tokens"] == three["tokens"] == sum(len(doc) + 1 for doc in docs)
    for key in ("lm", "elm_z1", "elm_exact", "elm_lower"):
        assert one[key] == pytest.approx(three[key], abs=1e-5), key


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
                     "--num-samples", "4", "--topk", "4", "--max-batches", "2", "--batch-size",
                     "2", "--tokens-per-sample", "16", "--exact-z", "--exact-z-batches", "1",
                     "--per-token", tmp_path / "tokens.jsonl", "--json", tmp_path / "f.json")
    out = result.stdout
    records = [json.loads(line) for line in (tmp_path / "tokens.jsonl").read_text().splitlines()]
    figures = json.loads((tmp_path / "f.json").read_text())
    assert len(records) == figures["tokens"] > figures["exact_tokens"] > 0
    assert sum(r["log_z"] is not None for r in records) == figures["exact_tokens"]
    assert re.search(r"elm - lm, paired per token\s+[-+][0-9.]+\s+exact \+- [0-9.]+", out), out
    for label, kind in (("lm", "exact"), (r"elm \(Z = 1\)", "convention"),
                        (r"elm \(top-4 \+ tail, K=4\)", "estimate"),
                        ("elm lower bound", "bound"), (r"elm \(exact Z\)", "exact")):
        assert re.search(rf"{label}\s+[0-9.]+\s+[0-9.]+\s+.*{kind}", out), (label, out)
    assert "exact Z:" in result.stderr and "batch 1/2" in result.stderr  # cost, progress
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


def masked_batches(task, count=2):
    task.load_dataset("valid")
    itr = task.get_batch_iterator(dataset=task.dataset("valid"), max_sentences=2, seed=1)
    return [b for _, b in zip(range(count), itr.next_epoch_itr(shuffle=False))]


def test_masked_models_are_evaluated_at_their_masked_positions(data_bin):
    model, task = build_model(data_bin, "roberta_zero_clap_tiny", "--encoder-layers", "1",
                              "--tokens-per-sample", "32", "--energy-head", "linear")
    torch.manual_seed(0)
    for p in model.energy_head.parameters():
        torch.nn.init.normal_(p, std=0.5)
    batches = masked_batches(task)
    masked = sum(int(b["target"].ne(task.source_dictionary.pad()).sum()) for b in batches)
    g = torch.Generator().manual_seed(0)
    result = evaluate(model, batches, num_samples=64, topk=8, exact_z_batches=-1, generator=g)
    assert result["tokens"] == result["exact_tokens"] == masked > 0
    assert result["elm_lower"] <= result["elm_exact"] + 1e-6
    assert abs(result["elm_est"] - result["elm_exact"]) < 4 * result["elm_est_stderr"] + 0.02
    # the masking is the task's seeded one: a second pass over the split sees the same
    again = evaluate(model, masked_batches(task), num_samples=64, topk=8, generator=g)
    assert again["tokens"] == masked and again["lm"] == pytest.approx(result["lm"], abs=1e-6)


@pytest.mark.slow
def test_eval_elm_cli_on_a_masked_checkpoint(data_bin, tmp_path):
    from conftest import TRAIN_SMALL

    run_cli("fairseq-train", data_bin, "--task", "masked_lm", "--arch", "roberta_zero_clap_tiny",
            *TRAIN_SMALL, "--criterion", "monarc", "--max-update", "2", "--save-dir", tmp_path)
    result = run_cli("energy-lm-eval-elm", data_bin, "--path", tmp_path / "checkpoint_last.pt",
                     "--num-samples", "4", "--topk", "4", "--max-batches", "2", "--batch-size",
                     "2", "--exact-z")
    assert "masked positions of a fixed seeded masking" in result.stdout
    assert re.search(r"elm \(exact Z\)\s+[0-9.]+", result.stdout), result.stdout


@pytest.mark.slow
def test_eval_elm_counts_and_figures_do_not_depend_on_the_batch_size(data_bin, tmp_path):
    """An eos-mode split (one document per row, right-padded) at batch size 1 and 8:
    the same scored tokens, the same exact figures (the estimate's tail samples differ)."""
    run_cli("fairseq-train", data_bin, "--task", "language_modeling", "--arch",
            "transformer_lm_alibi_tiny", *LM_SMALL, "--sample-break-mode", "eos",
            "--tokens-per-sample", "2048",
            "--criterion", "monarc", "--max-update", "3", "--save-dir", tmp_path)
    results = {}
    for size in (1, 8):
        out = tmp_path / f"bs{size}.json"
        run_cli("energy-lm-eval-elm", data_bin, "--path", tmp_path / "checkpoint_last.pt",
                "--batch-size", size, "--topk", "4", "--num-samples", "2", "--cpu",
                "--json", out)
        results[size] = json.loads(out.read_text())
    one, eight = results[1], results[8]
    assert one["tokens"] == eight["tokens"] > 0
    for key in ("lm", "elm_z1", "elm_lower"):
        assert one[key] == pytest.approx(eight[key], abs=2e-5), key


def test_exact_z_on_random_blocks_scores_only_those(monarc_lm_checkpoint, data_bin, tmp_path):
    """--blocks N --exact-z: N blocks drawn with --block-seed, all with exact Z, each
    token's record keeping its block's id (the studies cluster their errors by it)."""
    runs = {}
    for seed in (1, 1, 2):
        out = tmp_path / f"tokens{len(runs)}.jsonl"
        run_cli("energy-lm-eval-elm", data_bin, "--path", monarc_lm_checkpoint, "--exact-z",
                "--blocks", "3", "--block-seed", str(seed), "--batch-size", "2", "--per-token", out,
                "--topk", "4", "--num-samples", "4")
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        runs[len(runs)] = rows
        assert len({r["id"] for r in rows}) == 3 and all(r["log_z"] is not None for r in rows)
    assert runs[0] == runs[1]  # the same draw
    assert {r["id"] for r in runs[0]} != {r["id"] for r in runs[2]}
    refused = run_cli("energy-lm-eval-elm", data_bin, "--path", monarc_lm_checkpoint,
                      "--blocks", "3", "--max-batches", "2", check=False)
    assert refused.returncode != 0 and "drop --max-batches" in refused.stderr


def test_the_scaled_elm_is_the_elm_at_one_and_the_lm_at_zero(data_bin):
    """--fit-scale-on's figures: with the energy scaled by 1 they are the ELM's, by 0 the
    LM's (estimate and exact Z alike; float32 model: within 1e-6 bits), and between they
    are the ELM q exp(-a E) / Z_a."""
    model, task = energy_lm(data_bin)
    torch.manual_seed(3)
    src = torch.randint(4, 300, (2, 6))
    target = torch.cat([src[:, 1:], torch.randint(4, 300, (2, 1))], dim=1)
    batch = lm_batch(src, target)

    def run(scale):
        return evaluate(model, [batch], num_samples=8, topk=8, exact_z_batches=1,
                        generator=torch.Generator().manual_seed(0), scale=scale)

    one, zero, half = run(1.0), run(0.0), run(0.5)
    assert one["elm_scaled_est"] == pytest.approx(one["elm_est"], abs=1e-6)
    assert one["elm_scaled_exact"] == pytest.approx(one["elm_exact"], abs=1e-6)
    assert zero["elm_scaled_est"] == pytest.approx(zero["lm"], abs=1e-6)
    assert zero["elm_scaled_exact"] == pytest.approx(zero["lm_on_exact"], abs=1e-6)
    assert zero["elm_scaled_minus_lm_exact"] == pytest.approx(0.0, abs=1e-6)
    assert half["elm_est"] == one["elm_est"]  # the unscaled figures do not move
    assert min(half["elm_scaled_exact"], one["elm_exact"], half["lm_on_exact"]) < \
        max(half["elm_scaled_exact"], one["elm_exact"], half["lm_on_exact"])
    text = report(dict(half, scale_split="valid"), "test", "causal", 8, 8)
    assert "a = 0.500 fitted on valid" in text and "elm (scale a) - lm" in text


def test_fit_scale_on_another_split(monarc_lm_checkpoint, data_bin, tmp_path):
    """The scale is fitted on --fit-scale-on and reported on --split; the same split for
    both is refused in one line; --split's own figures do not change with the fit."""
    out, plain = tmp_path / "fit.json", tmp_path / "plain.json"
    common = ["--path", monarc_lm_checkpoint, "--split", "test", "--max-batches", "2",
              "--batch-size", "2", "--topk", "4", "--num-samples", "4"]
    fitted = run_cli("energy-lm-eval-elm", data_bin, *common, "--fit-scale-on", "valid",
                     "--json", out)
    run_cli("energy-lm-eval-elm", data_bin, *common, "--json", plain)
    result, base = json.loads(out.read_text()), json.loads(plain.read_text())
    assert 0.0 <= result["scale"] <= 4.0 and result["scale_split"] == "valid"
    assert "energy scale fitted on valid" in fitted.stderr
    assert "fitted on valid" in fitted.stdout
    assert result["elm_est"] == base["elm_est"] and result["lm"] == base["lm"]
    refused = run_cli("energy-lm-eval-elm", data_bin, *common, "--fit-scale-on", "test",
                      check=False)
    assert refused.returncode != 0 and "fit the scale on another split" in refused.stderr
    missing = run_cli("energy-lm-eval-elm", data_bin, *common, "--fit-scale-on", "nosuch",
                      check=False)
    assert missing.returncode != 0 and "no split 'nosuch'" in missing.stderr.strip().splitlines()[-1]
