"""energy-lm-from-hf / energy-lm-to-hf for today's rotary families (LlamaForCausalLM,
Qwen2ForCausalLM, StableLmForCausalLM, GPTNeoXForCausalLM): tiny random models with
grouped heads, partial rotary and perturbed norms and biases come in with the source's
log-probs (1e-5 in float32, 1e-10 in float64; GPT-NeoX's erf GELU runs in float32 in
fairseq, so 1e-6 there), each pitfall of the maps changes them measurably, they go out
to the stock class and back bit-identical, and what a family cannot represent stops in
one line naming the config field."""

import json

import pytest
import torch

from hf_models import (  # noqa: F401  (fixtures)
    llama_import, load_fairseq, neox_import, qwen2_import, save_llama, save_neox, stablelm_import)

from energy_lm.data.hf_vocabulary import VocabularyMap
from energy_lm.hf import agreement
from energy_lm.hf.errors import BridgeError
from energy_lm.hf.from_hf import convert as from_hf
from energy_lm.hf.to_hf import convert as to_hf

FAMILIES = ["llama", "qwen2", "stablelm", "neox"]
CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
           "stablelm": "StableLmForCausalLM", "neox": "GPTNeoXForCausalLM"}
ERF_GELU_FLOAT64 = 1e-6  # fairseq's erf GELU computes in float32 whatever the input


def measure(out, source, model=None, dtype=torch.float64):
    if model is None:
        model, _ = load_fairseq(out)
    vocab = VocabularyMap.load(out)
    index = vocab.fairseq_index(model.decoder.dictionary)
    ids = agreement.probe_ids(json.loads((out / "tokenizer.json").read_text()), vocab.size)
    return agreement.causal(model, source, ids, vocab.specials["</s>"], index, dtype)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("family", FAMILIES)
def test_log_probs_equal_the_source(request, family, dtype, tolerance):
    source, _, out = request.getfixturevalue(f"{family}_import")
    measured = measure(out, source, dtype=dtype)
    if family == "neox" and dtype == torch.float64:
        tolerance = ERF_GELU_FLOAT64
    assert measured.max_abs_diff <= tolerance and measured.masked_mass == 0.0
    assert measured.positions > 20
    args = (out / "train-args.txt").read_text().split()
    value = {flag: args[args.index(flag) + 1] for flag in ("--attention-bias", "--rotary-fraction")}
    assert value["--attention-bias"] == {"llama": "none", "neox": "all"}.get(family, "qkv")
    assert float(value["--rotary-fraction"]) == (1.0 if family in ("llama", "qwen2") else 0.5)
    if family != "neox":  # grouped heads came in as such
        assert args[args.index("--kv-heads") + 1] == "2"


def _rope_base(model):
    model.decoder.rotary.inv_freq.mul_(1.01)
    model.decoder.rotary._tables.clear()


def _interleaved_rotary(model):  # rotating pairs (2i, 2i+1) instead of (i, i + d/2)
    for layer in model.decoder.layers:
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
            w = proj.weight.data
            heads = w.size(0) // 8
            proj.weight.data = w.view(heads, 2, 4, -1).transpose(1, 2).reshape_as(w).clone()


def _norm_eps(model):
    model.decoder.layer_norm.eps = 1e-2


def _gate_and_up_swapped(model):
    for layer in model.decoder.layers:
        fc1 = layer.fc1
        fc1.gate.weight.data, fc1.up.weight.data = fc1.up.weight.data.clone(), fc1.gate.weight.data.clone()


def _key_heads_repeated_wrongly(model):  # heads grouped (0, 1, 0, 1) instead of (0, 0, 1, 1)
    for layer in model.decoder.layers:
        w = layer.self_attn.k_proj.weight.data
        layer.self_attn.k_proj.weight.data = w.view(2, 8, -1).flip(0).reshape_as(w).clone()


def _rotary_fraction(model):  # every dim rotated instead of half of them
    from energy_lm.modules.rotary import Rotary

    rotary = Rotary(8, 1.0, model.decoder.rotary.base)
    for layer in model.decoder.layers:
        layer.self_attn.rotary = rotary


def _qkv_thirds(model):  # GPT-2's split (q, k, v thirds) instead of NeoX's per-head one
    for layer in model.decoder.layers:
        attn = layer.self_attn
        rows = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        fused = rows.view(3, 4, 8, -1).transpose(0, 1).reshape(96, -1)  # NeoX's (H, 3, D) rows
        attn.q_proj.weight.data, attn.k_proj.weight.data, attn.v_proj.weight.data = \
            (t.clone() for t in fused.view(3, 32, -1))


def _sequential_residual(model):
    from dataclasses import replace

    for layer in model.decoder.layers:
        object.__setattr__(layer, "shape", replace(layer.shape, parallel_residual=False))


PITFALLS = [("llama", _rope_base), ("llama", _interleaved_rotary), ("llama", _norm_eps),
            ("llama", _gate_and_up_swapped), ("llama", _key_heads_repeated_wrongly),
            ("neox", _rotary_fraction), ("neox", _qkv_thirds), ("neox", _sequential_residual)]


@pytest.mark.parametrize("family,mistake", PITFALLS, ids=[m.__name__ for _, m in PITFALLS])
def test_each_pitfall_is_caught(request, family, mistake):
    source, _, out = request.getfixturevalue(f"{family}_import")
    model, _ = load_fairseq(out)
    with torch.no_grad():
        mistake(model)
    assert measure(out, source, model).max_abs_diff > 1e-4


@pytest.mark.parametrize("variant", [
    dict(attention_bias=True, mlp_bias=True, tie_word_embeddings=True),
    dict(rms_norm_eps=1e-6, num_key_value_heads=1, intermediate_size=40),
], ids=["biases-tied", "multi-query"])
def test_llama_variants_come_in_exactly(tmp_path, variant):
    source = save_llama(tmp_path / "src", **variant)
    from_hf(str(tmp_path / "src"), tmp_path / "out")
    assert measure(tmp_path / "out", source).max_abs_diff <= 1e-10


def save(family, folder, **change):
    if family in ("stablelm", "neox"):
        return save_neox(folder, stablelm=family == "stablelm", **change)
    return save_llama(folder, qwen2=family == "qwen2", **change)


@pytest.mark.parametrize("family,change,field", [
    ("qwen2", dict(use_sliding_window=True, sliding_window=16), "config.use_sliding_window"),
    ("llama", dict(rope_parameters={"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0}),
     "config.rope_parameters['rope_type']='linear'"),
    ("llama", dict(head_dim=16), "config.head_dim=16"),
    ("llama", dict(hidden_act="gelu"), "config.hidden_act='gelu'"),
    ("stablelm", dict(qk_layernorm=True), "config.qk_layernorm=True"),
    ("stablelm", dict(use_parallel_residual=True), "config.use_parallel_residual=True"),
    ("neox", dict(rope_parameters={"rope_type": "default", "rope_theta": 500.0,
                                   "partial_rotary_factor": 0.1}),
     "config.rope_parameters['partial_rotary_factor']=0.1"),
], ids=["sliding-window", "rope-scaling", "head-dim", "activation", "qk-norm",
        "stablelm-parallel", "rotary-fraction"])
def test_what_it_cannot_represent_names_the_field(tmp_path, family, change, field):
    save(family, tmp_path / "src", **change)
    with pytest.raises(BridgeError, match=field.replace("[", r"\[").replace("]", r"\]")):
        from_hf(str(tmp_path / "src"), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


@pytest.mark.parametrize("family", FAMILIES)
def test_an_import_goes_out_to_its_class_and_comes_back_bit_identical(request, tmp_path, family):
    from transformers import AutoModelForCausalLM

    source, src, out = request.getfixturevalue(f"{family}_import")
    result = to_hf(out / "model.pt", tmp_path / "hf")
    assert result["architecture"] == CLASSES[family]
    assert result["agreement"].max_abs_diff <= 1e-5
    stock = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float64)
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 8, 120]])
    with torch.no_grad():  # the same stock class with the same weights: the same logits
        torch.testing.assert_close(stock(input_ids=ids).logits, source.double()(input_ids=ids).logits,
                                   rtol=1e-10, atol=1e-10)
    from_hf(str(tmp_path / "hf"), tmp_path / "again")
    first = torch.load(out / "model.pt", weights_only=True)["model"]
    again = torch.load(tmp_path / "again" / "model.pt", weights_only=True)["model"]
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
