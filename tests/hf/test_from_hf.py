"""energy-lm-from-hf: a tiny GPT-2 / RoBERTa comes in exactly (log-probs within 1e-5 in
float32, 1e-10 in float64), each known pitfall changes them measurably (so the
agreement check would catch it), and the dictionary, the output mask, the hub and the
refusals behave as documented."""

import json
import math

import pytest
import torch

from conftest import error_line, load_script, run_cli
from hf_models import (  # noqa: F401  (fixtures)
    gpt2_import, load_fairseq, roberta_import, save_gpt2, save_roberta)

from energy_lm.hf import agreement
from energy_lm.hf.errors import BridgeError
from energy_lm.hf.from_hf import convert
from energy_lm.data.hf_vocabulary import VocabularyMap


def _index(out, model):
    return VocabularyMap.load(out).fairseq_index(model.decoder.dictionary if hasattr(
        model, "decoder") else model.encoder.dictionary)


def _causal(out, source, dtype=torch.float64):
    model, _ = load_fairseq(out)
    vocab = VocabularyMap.load(out)
    ids = agreement.probe_ids(json.loads((out / "tokenizer.json").read_text()), vocab.size)
    return model, agreement.causal(model, source, ids, vocab.specials["</s>"],
                                   _index(out, model), dtype)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_gpt2_log_probs_equal_the_source(gpt2_import, dtype, tolerance):
    source, _, out = gpt2_import
    _, measured = _causal(out, source, dtype)
    assert measured.max_abs_diff <= tolerance and measured.masked_mass == 0.0
    assert measured.positions > 20


# fairseq computes the erf GELU in float32 whatever the input (fairseq.modules.gelu), so a
# float64 comparison of an erf-GELU model is exact only to float32's precision
ERF_GELU_FLOAT64 = 1e-6


@pytest.mark.parametrize("variant,tolerance", [
    (dict(eos_first=False, tie_word_embeddings=False), 1e-10),  # GPT-2's layout, untied
    (dict(layer_norm_epsilon=1e-6, activation_function="gelu"), ERF_GELU_FLOAT64),
    (dict(activation_function="relu", n_inner=48), 1e-10),
])
def test_gpt2_variants_come_in_exactly(tmp_path, variant, tolerance):
    source = save_gpt2(tmp_path / "src", **variant)
    convert(str(tmp_path / "src"), tmp_path / "out")
    _, measured = _causal(tmp_path / "out", source)
    assert measured.max_abs_diff <= tolerance


def test_the_dictionary_maps_every_source_id_and_masks_the_rest(gpt2_import):
    source, _, out = gpt2_import
    model, _ = load_fairseq(out)
    d = model.decoder.dictionary
    eos = source.config.eos_token_id
    decimal = [s for s in d.symbols if s.isdigit()]
    # every source id once, as its decimal string; the end-of-text token is </s>
    assert sorted(map(int, decimal)) == [i for i in range(source.config.vocab_size) if i != eos]
    assert len(d) % 8 == 0
    embed = model.decoder.embed_tokens.weight
    wte = source.transformer.wte.weight
    assert torch.equal(embed[d.eos()], wte[eos])
    assert torch.equal(embed[d.index("5")], wte[5])
    unused = [i for i, s in enumerate(d.symbols) if not s.isdigit() and s != "</s>"]
    assert unused[:3] == [d.bos(), d.pad(), d.unk()] and len(unused) >= 3
    logits = model(torch.tensor([[d.eos(), d.index("7"), d.index("9")]]))[0]
    probs = torch.softmax(logits.double(), dim=-1)
    assert float(probs[..., unused].sum()) == 0.0  # exactly zero: never proposed
    assert math.isclose(float(probs.sum(-1).mean()), 1.0, rel_tol=1e-9)


def test_masked_symbols_are_never_proposed_as_candidates(gpt2_import):
    from energy_lm.sampling.proposal import sample_tokens

    _, _, out = gpt2_import
    model, _ = load_fairseq(out)
    d = model.decoder.dictionary
    tokens = torch.tensor([[d.eos()] + [d.index(str(i)) for i in range(10, 40)]])
    logits = model(tokens)[0]  # (1, T, V)
    draws = sample_tokens(logits, num_samples=2000, generator=torch.Generator().manual_seed(0))
    unused = torch.tensor([i for i, s in enumerate(d.symbols) if not s.isdigit() and s != "</s>"])
    assert not torch.isin(draws, unused).any()
    out_pass = model.energy_pass(tokens, tokens.roll(-1, 1), num_samples=64)
    assert not torch.isin(out_pass.cand_tokens, unused).any()


# each pitfall of the GPT-2 conversion (benchmarks/hf_bridge.py, which prints their
# cost), applied to a correct import: the agreement it leaves must be far from exact, so
# the import's check and the exactness tests above would catch it
PITFALLS = load_script("benchmarks/hf_bridge.py").PITFALLS


@pytest.mark.parametrize("mistake", PITFALLS, ids=[m.__name__ for m in PITFALLS])
def test_each_gpt2_pitfall_is_caught(gpt2_import, mistake):
    source, _, out = gpt2_import
    model, _ = load_fairseq(out)
    vocab = VocabularyMap.load(out)
    ids = agreement.probe_ids(json.loads((out / "tokenizer.json").read_text()), vocab.size)
    mistake(model)
    measured = agreement.causal(model, source, ids, vocab.specials["</s>"], _index(out, model),
                                torch.float64)
    assert measured.max_abs_diff > 1e-4 or measured.masked_mass > 1e-4  # 10x the test's 1e-5


def test_a_state_dict_without_the_decoder_version_loses_its_final_norm(gpt2_import):
    """fairseq's upgrade drops decoder.layer_norm when decoder.version < 3 (and strict
    loading still passes): the converter writes the version."""
    _, _, out = gpt2_import
    state = torch.load(out / "model.pt", weights_only=True)["model"]
    assert float(state["decoder.version"][0]) >= 3
    model, _ = load_fairseq(out)
    assert model.decoder.layer_norm is not None


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5),
                                             (torch.float64, ERF_GELU_FLOAT64)])
def test_roberta_log_probs_equal_the_source(roberta_import, dtype, tolerance):
    source, _, out = roberta_import
    model, _ = load_fairseq(out)
    vocab = VocabularyMap.load(out)
    index = _index(out, model)
    ids = agreement.probe_ids(json.loads((out / "tokenizer.json").read_text()), vocab.size)
    measured = agreement.masked(model, source, ids, vocab.specials["<s>"],
                                vocab.specials["</s>"], vocab.specials["<mask>"], index, dtype)
    assert measured.max_abs_diff <= tolerance
    d = model.encoder.dictionary
    assert d.index("<mask>") == len(d) - 1 == int(index[vocab.specials["<mask>"]])
    # the token-type row is folded into the positions: without it, far from exact
    with torch.no_grad():
        model.encoder.sentence_encoder.embed_positions.weight[2:] -= \
            source.roberta.embeddings.token_type_embeddings.weight[0].to(dtype)
    unfolded = agreement.masked(model, source, ids, vocab.specials["<s>"],
                                vocab.specials["</s>"], vocab.specials["<mask>"], index, dtype)
    assert unfolded.max_abs_diff > 1e-3


def test_a_roberta_without_its_head_keeps_the_trunk_exactly(tmp_path, caplog):
    source = save_roberta(tmp_path / "src", with_head=False)
    with caplog.at_level("WARNING"):
        convert(str(tmp_path / "src"), tmp_path / "out")
    assert any("no LM head" in r.message for r in caplog.records)
    model, _ = load_fairseq(tmp_path / "out")
    index = VocabularyMap.load(tmp_path / "out").fairseq_index(model.encoder.dictionary)
    ids = torch.tensor([[0, 40, 41, 99, 120, 2]])
    with torch.no_grad():
        want = source.double()(input_ids=ids).last_hidden_state
        got = model.double()(index[ids], features_only=True)[0]
    assert float((got - want).abs().max()) <= ERF_GELU_FLOAT64


def test_the_hub_encodes_as_the_source_tokenizer(gpt2_import, roberta_import):
    from fairseq.models.roberta import RobertaModel
    from transformers import AutoTokenizer

    from energy_lm.models.transformer_lm_energy import TransformerLMEnergyModel

    text = "The parser reads the arguments, and the encoder writes JSON."
    _, src, out = gpt2_import
    lm = TransformerLMEnergyModel.from_pretrained(str(out))  # no other argument
    vocab = VocabularyMap.load(out)
    want = vocab.symbols(AutoTokenizer.from_pretrained(str(src))(text)["input_ids"])
    got = [lm.task.source_dictionary[i] for i in lm.encode(text).tolist()]
    assert got == want + ["</s>"] and lm.decode(lm.encode(text)) == text
    _, src, out = roberta_import
    roberta = RobertaModel.from_pretrained(str(out))  # fairseq's own class, no argument
    want = AutoTokenizer.from_pretrained(str(src))(text)["input_ids"]
    assert roberta.encode(text).tolist() == want  # the identity map: <s> ... </s>
    assert len(roberta.fill_mask("The parser <mask> the arguments.", topk=3)) == 3


def test_an_architecture_it_cannot_represent_is_one_line_and_writes_nothing(tmp_path):
    from transformers import MixtralConfig, MixtralForCausalLM

    src = tmp_path / "mixtral"
    save_gpt2(tmp_path / "tok")  # any tokenizer: the config is refused first
    cfg = MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                        sliding_window=16)
    MixtralForCausalLM(cfg).save_pretrained(src)
    result = run_cli("energy-lm-from-hf", src, tmp_path / "out", check=False)
    line = error_line(result.stderr)
    assert result.returncode == 1 and line.startswith("energy-lm-from-hf: error: MixtralForCausalLM")
    for field in ("config.num_local_experts=4", "config.sliding_window=16", "LlamaForCausalLM"):
        assert field in line
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_refusals_name_the_field(tmp_path):
    save_gpt2(tmp_path / "cross", add_cross_attention=True)
    with pytest.raises(BridgeError, match="config.add_cross_attention"):
        convert(str(tmp_path / "cross"), tmp_path / "o1")
    # a WordPiece tokenizer beside a RoBERTa: not byte-level BPE (a causal model's
    # tokenizer may be anything: tests/hf/test_prepare_with_import.py)
    save_roberta(tmp_path / "wp")
    tok = json.loads((tmp_path / "wp" / "tokenizer.json").read_text())
    tok["model"]["type"] = "WordPiece"
    (tmp_path / "wp" / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(BridgeError, match="model.type is 'WordPiece'"):
        convert(str(tmp_path / "wp"), tmp_path / "o2")
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o2.partial").exists()


def test_a_non_empty_out_needs_force(gpt2_import, tmp_path):
    _, src, _ = gpt2_import
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(BridgeError, match="not empty; --force"):
        convert(str(src), out)
    assert (out / "keep.txt").read_text() == "mine"
    convert(str(src), out, force=True)
    assert (out / "model.pt").is_file() and not (out / "keep.txt").exists()


def test_the_import_is_deterministic(gpt2_import, tmp_path):
    _, src, out = gpt2_import
    convert(str(src), tmp_path / "again")
    first = torch.load(out / "model.pt", weights_only=True)["model"]
    second = torch.load(tmp_path / "again" / "model.pt", weights_only=True)["model"]
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert (out / "train-args.txt").read_text() == (tmp_path / "again" / "train-args.txt").read_text()
