"""The bridge end to end, through the console scripts as a user runs them: a Hugging Face
GPT-2 or Llama comes in, its tokenizer binarizes a corpus, MonArc adapts it with the
stock fairseq-train (the first update's LM loss is the source's cross-entropy: the
energy starts at 0), it goes out to stock transformers with the same log-probs, comes
back with the same energies, and cached SIR sampling from it makes the choices of the
recompute sampler."""

import json

import pytest
import torch

from conftest import run_cli
from hf_models import load_fairseq, save_gpt2, save_llama

from energy_lm.inference.sir_sampler import sir_sample

pytestmark = pytest.mark.slow

COMMON = ["--task", "language_modeling", "--tokens-per-sample", "32", "--batch-size", "4",
          "--optimizer", "adam", "--lr", "1e-3", "--dropout", "0", "--attention-dropout", "0",
          "--seed", "3", "--log-format", "json", "--log-interval", "1", "--num-workers", "0"]


def update_record(stdout: str, update: int) -> dict:
    for line in stdout.splitlines():
        if f'"num_updates": "{update}"' in line and "{" in line:
            return json.loads(line[line.index("{"):])
    raise AssertionError(f"no update-{update} record in:\n{stdout[-2000:]}")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_import_prepare_adapt_export_reimport(corpus_dir, tmp_path, family):
    from transformers import AutoModelForCausalLM

    (save_gpt2 if family == "gpt2" else save_llama)(tmp_path / family)
    imported = tmp_path / f"{family}-fairseq"
    run_cli("energy-lm-from-hf", tmp_path / family, imported)
    corpus = tmp_path / "corpus"
    run_cli("energy-lm-prepare", "text", "--out", corpus, "--train", corpus_dir / "raw" / "train.txt",
            "--valid", corpus_dir / "raw" / "valid.txt", "--tokenizer-from", imported)
    data = corpus / "data-bin"
    arch = (imported / "train-args.txt").read_text().split()
    restore = ["--restore-file", imported / "model.pt"]
    ce = run_cli("fairseq-train", data, *arch, *COMMON, *restore, "--criterion", "cross_entropy",
                 "--max-update", "1", "--save-dir", tmp_path / "ce")
    monarc = run_cli("fairseq-train", data, *arch, *COMMON, *restore, "--criterion", "monarc",
                     "--max-update", "4", "--save-dir", tmp_path / "monarc")
    first = update_record(monarc.stdout, 1)
    assert first["lm_loss"] == update_record(ce.stdout, 1)["loss"]  # the source's CE
    assert float(first["ebm_loss"]) == 0 and first["elm_loss"] == first["lm_loss"]
    evaluated = run_cli("fairseq-eval-lm", data, "--path", imported / "model.pt", "--gen-subset",
                        "valid", "--tokens-per-sample", "32", "--max-sentences", "8")
    assert "Loss (base 2)" in evaluated.stdout + evaluated.stderr
    checkpoint = tmp_path / "monarc" / "checkpoint_last.pt"
    run_cli("energy-lm-to-hf", checkpoint, tmp_path / "hf")  # the dictionary: the run's data
    # stock transformers gives the adapted model's log-probs
    adapted, _ = load_fairseq_checkpoint(checkpoint, data)
    stock = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    d = adapted.decoder.dictionary
    tokens = torch.tensor([[d.eos()] + [d.index(str(i)) for i in range(30, 60)]])
    source_ids = torch.tensor([[int(d[i]) if d[i].isdigit() else 0 for i in tokens[0]]])
    source_ids[0, 0] = stock.config.eos_token_id
    with torch.no_grad():
        want = torch.log_softmax(adapted(tokens)[0].double(), -1)
        got = torch.log_softmax(stock(input_ids=source_ids).logits.double(), -1)
    index = torch.tensor([d.index(str(i)) if i != stock.config.eos_token_id else d.eos()
                          for i in range(stock.config.vocab_size)])
    assert float((want[..., index] - got).abs().max()) <= 1e-5
    # ...and energy-lm-from-hf brings back the same energies
    run_cli("energy-lm-from-hf", tmp_path / "hf", tmp_path / "again")
    again, _ = load_fairseq(tmp_path / "again")
    candidates = torch.stack([tokens.roll(s, dims=-1) for s in (1, 2)], dim=1)
    with torch.no_grad():
        e_want = adapted.score_candidates(tokens, candidates, backend="reference")
        e_got = again.score_candidates(tokens, candidates, backend="reference")
    assert float(e_want[1].abs().max()) > 0  # MonArc moved the energy off 0
    for w, g in zip(e_want, e_got):
        assert torch.allclose(w, g, rtol=0, atol=1e-6)
    # cached SIR (the decode cache: rotary angles and grouped heads for Llama) chooses as
    # the recompute sampler does, from the same random numbers, on prompts of two lengths
    prompts = [tokens[0, :5], tokens[0, :9]]
    runs = [sir_sample(adapted.double(), prompts, 6, num_candidates=4, eos=None, pad=d.pad(),
                       generator=torch.Generator().manual_seed(7), cached=cached)
            for cached in (True, False)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def load_fairseq_checkpoint(path, data):
    from fairseq import checkpoint_utils

    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(path)], arg_overrides={"data": str(data)})
    return models[0].eval(), task
