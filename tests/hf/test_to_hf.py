"""energy-lm-to-hf: what stock transformers loads from the export gives the fairseq
model's log-probs; an import exported and imported again is bit-identical, energy head
included; models trained here on our own BPE keep their tokenization; what cannot be
represented is refused in one line, with nothing written."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import error_line, run_cli
from hf_models import gpt2_import, load_fairseq, perturb, roberta_import  # noqa: F401

from energy_lm.hf import agreement, fairseq_checkpoint
from energy_lm.hf.errors import BridgeError
from energy_lm.hf.from_hf import convert as from_hf
from energy_lm.hf.to_hf import convert as to_hf

SMALL = {"lm": ["--decoder-layers", "2", "--decoder-embed-dim", "32",
                "--decoder-ffn-embed-dim", "64", "--decoder-attention-heads", "4"],
         "mlm": ["--encoder-layers", "2", "--encoder-embed-dim", "32",
                 "--encoder-ffn-embed-dim", "64", "--encoder-attention-heads", "4"]}


def _states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("which", ["gpt2", "roberta"])
def test_an_import_goes_out_and_comes_back_bit_identical(request, tmp_path, which):
    _, src, out = request.getfixturevalue(f"{which}_import")
    result = to_hf(out / "model.pt", tmp_path / "hf")
    assert result["agreement"].max_abs_diff <= 1e-5
    exported = json.loads((tmp_path / "hf" / "config.json").read_text())
    source = json.loads((src / "config.json").read_text())
    assert exported["vocab_size"] == source["vocab_size"]  # the source's ids, no specials added
    assert exported["energy_lm"]["energy_head"] == "seed"
    from_hf(str(tmp_path / "hf"), tmp_path / "again")
    first = torch.load(out / "model.pt", weights_only=True)["model"]
    again = torch.load(tmp_path / "again" / "model.pt", weights_only=True)["model"]
    assert _states_equal(first, again)
    assert (tmp_path / "again" / "dict.txt").read_text() == (out / "dict.txt").read_text()


def test_a_trained_energy_head_round_trips_with_the_same_energies(gpt2_import, tmp_path):
    _, _, out = gpt2_import
    model, _ = load_fairseq(out)
    perturb(model.energy_head, seed=5)  # as if trained: E is no longer 0
    with torch.no_grad():
        model.energy_head.context_proj.weight.normal_()
        model.decoder.embed_positions.weight[-1].normal_()  # the energy's position row
    state = torch.load(out / "model.pt", weights_only=True)
    state["model"] = model.state_dict()
    fairseq_checkpoint.save(state, tmp_path / "trained.pt")
    to_hf(tmp_path / "trained.pt", tmp_path / "hf", data=out)
    head = load_file(str(tmp_path / "hf" / "energy_head.safetensors"))
    assert torch.equal(head["context_proj.weight"], model.energy_head.context_proj.weight)
    from_hf(str(tmp_path / "hf"), tmp_path / "again")
    again, _ = load_fairseq(tmp_path / "again")
    d = model.decoder.dictionary
    tokens = torch.tensor([[d.eos()] + [d.index(str(i)) for i in range(20, 50)]])
    candidates = torch.stack([tokens.roll(s, dims=-1) for s in (1, 2, 3)], dim=1)  # (1, 3, T)
    with torch.no_grad():
        want = model.score_candidates(tokens, candidates, backend="reference")
        got = again.score_candidates(tokens, candidates, backend="reference")
    assert float(want[1].abs().max()) > 1e-3  # a head that is not E = 0
    for w, g in zip(want, got):
        assert torch.equal(w, g)


def _own_checkpoint(data_bin, tmp_path, task, args, seed=0):
    """A model of ours on the embedded corpus's dictionary (untrained, every 1-d parameter
    perturbed), saved as fairseq-train saves one."""
    model, cfg = fairseq_checkpoint.build(data_bin, task, args, 64)
    perturb(model, seed)
    path = tmp_path / "checkpoint.pt"
    fairseq_checkpoint.save(fairseq_checkpoint.checkpoint(model, cfg, data_bin), path)
    return model, path


def _fairseq_ids(data_bin, text):
    from fairseq.data import Dictionary
    from tokenizers import ByteLevelBPETokenizer

    d = Dictionary.load(str(data_bin / "dict.txt"))
    bpe = ByteLevelBPETokenizer(str(data_bin / "vocab.json"), str(data_bin / "merges.txt"),
                                add_prefix_space=False)
    return [d.index(str(i)) for i in bpe.encode(text).ids], d


@pytest.mark.parametrize("arch,extra", [
    ("transformer_lm_clap_tiny", []),                        # CLAP head, sqrt(d) scale, l2 rows
    ("transformer_lm_clap_tiny", ["--untied-head"]),         # an untied Linear head
    ("transformer_lm_energy", ["--decoder-normalize-before", "--decoder-learned-pos",
                               "--share-decoder-input-output-embed", "--activation-fn",
                               "gelu_accurate", "--decoder-input-dim", "32",
                               "--decoder-output-dim", "32"]),  # a tied softmax head
])
def test_a_causal_lm_trained_here_goes_out_as_gpt2(data_bin, tmp_path, arch, extra):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, path = _own_checkpoint(data_bin, tmp_path, "language_modeling",
                                  ["--arch", arch, *SMALL["lm"], *extra])
    result = to_hf(path, tmp_path / "hf", data=data_bin)
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float64)
    d = model.decoder.dictionary
    assert hf.config.vocab_size > len(d)  # BPE tokens the corpus never produced come after
    # every valid document tokenizes as fairseq tokenizes it (no-row tokens read as <unk>)
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    docs = (data_bin.parent / "raw" / "valid.txt").read_text().splitlines()[:10]
    for doc in docs:
        want, _ = _fairseq_ids(data_bin, doc)
        got = [i if i < len(d) else d.unk() for i in tokenizer(doc)["input_ids"]]
        assert got == want
    ids = want[:40]
    measured = agreement.causal(model, hf, ids, d.eos(), torch.arange(len(d)), torch.float64)
    # float64 to float32's precision: the clap preset's erf GELU runs in float32 in fairseq
    assert measured.max_abs_diff <= 1e-6 and measured.masked_mass == 0.0
    assert result["agreement"].max_abs_diff <= 1e-5


def test_a_roberta_with_a_clap_head_goes_out_as_trunk_and_head(data_bin, tmp_path):
    from transformers import AutoModel

    model, path = _own_checkpoint(data_bin, tmp_path, "masked_lm",
                                  ["--arch", "roberta_clap_tiny", *SMALL["mlm"]])
    to_hf(path, tmp_path / "hf", data=data_bin)
    trunk = AutoModel.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    head = load_file(str(tmp_path / "hf" / "lm_head.safetensors"))
    ids, d = _fairseq_ids(data_bin, "The parser reads the arguments.")
    tokens = torch.tensor([[d.bos(), *ids, d.eos()]])
    with torch.no_grad():
        want = torch.log_softmax(model.eval()(tokens)[0][0].double(), -1)
        states = trunk(input_ids=tokens).last_hidden_state[0]
        logits = states @ head["lm_head.weight"].T + head["lm_head.bias"]
    got = torch.log_softmax(logits.double(), -1)
    rows = want.size(-1)  # the dictionary with <mask>; the rest: BPE tokens it lacks
    assert got.size(-1) > rows and float(got[:, rows:].exp().sum()) == 0.0
    assert float((got[:, :rows] - want).abs().max()) <= 1e-5


def test_a_roberta_with_its_own_head_goes_out_as_roberta_for_masked_lm(data_bin, tmp_path):
    model, path = _own_checkpoint(data_bin, tmp_path, "masked_lm",
                                  ["--arch", "roberta_energy", *SMALL["mlm"]])
    result = to_hf(path, tmp_path / "hf", data=data_bin)
    assert result["architecture"] == "RobertaForMaskedLM"
    assert result["agreement"].max_abs_diff <= 1e-5 and result["agreement"].masked_mass == 0


def test_what_cannot_be_represented_is_refused_in_one_line(data_bin, tmp_path):
    _, path = _own_checkpoint(data_bin, tmp_path, "language_modeling",
                              ["--arch", "transformer_lm_alibi_tiny", *SMALL["lm"]])
    result = run_cli("energy-lm-to-hf", path, tmp_path / "out", "--data", data_bin, check=False)
    line = error_line(result.stderr)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert line.startswith("energy-lm-to-hf: error: GPT2LMHeadModel cannot represent causal "
                           "ALiBi") and "BLOOM" in line and "MPT" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    post_norm = tmp_path / "post"
    post_norm.mkdir()
    _, path = _own_checkpoint(data_bin, post_norm, "language_modeling",
                              ["--arch", "transformer_lm_energy", *SMALL["lm"]])
    with pytest.raises(BridgeError, match="post-norm"):
        to_hf(path, tmp_path / "out", data=data_bin)
    # Llama's trunk on a corpus whose dictionary lacks BPE tokens: no RMSNorm head row can
    # give them probability 0 (a LayerNorm's can: GPT-2 above)
    llama = tmp_path / "llama"
    llama.mkdir()
    _, path = _own_checkpoint(data_bin, llama, "language_modeling",
                              ["--arch", "transformer_lm_llama_tiny", *SMALL["lm"]])
    with pytest.raises(BridgeError, match="LlamaForCausalLM cannot represent .* BPE tokens "
                                          "without a dictionary row .* --tokenizer-from"):
        to_hf(path, tmp_path / "out", data=data_bin)
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_without_its_dictionary_is_refused(gpt2_import, tmp_path):
    _, _, out = gpt2_import
    state = torch.load(out / "model.pt", weights_only=True)
    state["cfg"]["task"]["data"] = str(tmp_path / "gone")
    (tmp_path / "lost").mkdir()
    fairseq_checkpoint.save(state, tmp_path / "lost" / "model.pt")
    with pytest.raises(BridgeError, match="no dictionary .* give --data"):
        to_hf(tmp_path / "lost" / "model.pt", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("family", ["lm", "mlm"])
def test_a_headless_checkpoint_goes_out_as_trunk_or_with_a_fresh_head(data_bin, tmp_path, family):
    """--mode mlm: the trunk alone; --mode add_head: the trunk with energy-lm-add-head's
    new head (the L2-normalised input rows of a CLAP model), as the headless workflow
    publishes them."""
    from transformers import AutoModel, AutoModelForCausalLM

    task, arch = (("language_modeling", "transformer_lm_clap_tiny") if family == "lm" else
                  ("masked_lm", "roberta_clap_tiny"))
    model, path = _own_checkpoint(data_bin, tmp_path, task, ["--arch", arch, *SMALL[family]])
    trunk_only = to_hf(path, tmp_path / "mlm", data=data_bin, mode="mlm")
    assert trunk_only["agreement"].max_abs_diff <= 1e-5 and "h - h_hf" in trunk_only["agreement"].what
    config = json.loads((tmp_path / "mlm" / "config.json").read_text())
    assert config["architectures"] == ["GPT2Model" if family == "lm" else "RobertaModel"]
    assert not (tmp_path / "mlm" / "lm_head.safetensors").exists()
    AutoModel.from_pretrained(str(tmp_path / "mlm"))
    to_hf(path, tmp_path / "head", data=data_bin, mode="add_head")
    trunk = model.trunk
    rows = torch.nn.functional.normalize(trunk.embed_tokens.weight.detach(), dim=-1)
    if family == "lm":
        hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "head"))
        head = hf.lm_head.weight.detach()[:rows.size(0)]
    else:
        head = load_file(str(tmp_path / "head" / "lm_head.safetensors"))["lm_head.weight"][:rows.size(0)]
    assert torch.equal(head, rows)


def test_without_transformers_the_commands_say_how_to_install_it(monkeypatch):
    from energy_lm.hf import dependency

    real = dependency.find_spec
    monkeypatch.setattr(dependency, "find_spec",
                        lambda name: None if name == "transformers" else real(name))
    with pytest.raises(BridgeError, match=r"transformers not installed: pip install "
                                          r"'energy-lm\[hf\]'"):
        dependency.require()


def test_a_corrupt_checkpoint_is_one_line(gpt2_import, tmp_path):
    _, _, out = gpt2_import
    bad = tmp_path / "bad.pt"
    bad.write_bytes((out / "model.pt").read_bytes()[:3000])  # truncated
    for data in (None, out):
        with pytest.raises(BridgeError, match="cannot read checkpoint .*truncated, corrupt"):
            to_hf(bad, tmp_path / "hf", data=data)
    assert not (tmp_path / "hf").exists() and not (tmp_path / "hf.partial").exists()
