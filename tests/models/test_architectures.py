"""The registered presets, built through fairseq's own parser and task, in-process."""

import pytest
import torch
from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.models import ARCH_MODEL_REGISTRY
from fairseq.models.roberta.model import RobertaLMHead

import energy_lm.modules.attention as attention_module
from energy_lm.modules.attention import SelfAttention
from energy_lm.modules.clap import ClapEmbedding, ClapHead

from conftest import build_model

ROBERTA = [f"roberta_{v}_{s}" for v in ("clap", "alibi", "zero_clap") for s in ("tiny", "base", "large")]
LM = [f"transformer_lm_{v}_{s}" for v in ("clap", "alibi", "zero_clap") for s in ("tiny", "base", "large")]


def build(data_bin, arch, *extra, task="masked_lm"):
    return build_model(data_bin, arch, *extra, task=task)


def test_every_preset_is_registered():
    for arch in ROBERTA + LM:
        assert arch in ARCH_MODEL_REGISTRY, arch


@pytest.mark.parametrize("size,layers,dim,heads", [("tiny", 4, 256, 4), ("base", 12, 768, 12),
                                                   ("large", 24, 1024, 16)])
def test_preset_sizes_reach_the_model_config(data_bin, size, layers, dim, heads):
    # the config fairseq-train builds (no model is instantiated)
    for arch, task in ((f"roberta_clap_{size}", "masked_lm"), (f"transformer_lm_clap_{size}", "language_modeling")):
        argv = [str(data_bin), "--task", task, "--arch", arch]
        cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
        side = "encoder" if arch.startswith("roberta") else "decoder"
        assert (getattr(cfg.model, f"{side}_layers"), getattr(cfg.model, f"{side}_embed_dim"),
                getattr(cfg.model, f"{side}_attention_heads")) == (layers, dim, heads)


@pytest.mark.parametrize("arch", [a for a in ROBERTA if a.endswith("tiny")])
def test_roberta_preset_structure(data_bin, arch):
    model, _ = build(data_bin, arch)
    enc = model.encoder.sentence_encoder
    clap, alibi = "clap" in arch, "alibi" in arch or "zero" in arch
    assert isinstance(model.encoder.lm_head, ClapHead if clap else RobertaLMHead)
    assert isinstance(enc.embed_tokens, ClapEmbedding) == clap
    assert (enc.embed_positions is None) == alibi
    assert enc.attention_pattern.alibi == ("symmetric" if alibi else "none")
    attns = [layer.self_attn for layer in enc.layers]
    assert all(isinstance(a, SelfAttention) and a.pattern is enc.attention_pattern for a in attns)


@pytest.mark.parametrize("arch", [a for a in LM if a.endswith("tiny")])
def test_lm_preset_structure(data_bin, arch):
    model, _ = build(data_bin, arch, task="language_modeling")
    dec = model.decoder
    clap, alibi = "clap" in arch, "alibi" in arch or "zero" in arch
    assert isinstance(dec.output_projection, ClapHead) == clap
    assert (dec.embed_positions is None) == alibi
    assert dec.attention_pattern.causal and dec.attention_pattern.alibi == ("causal" if alibi else "none")


def test_flags_override_presets(data_bin):
    model, task = build(data_bin, "roberta_clap_tiny", "--alibi", "shifted", "--initial-beta", "4",
                        "--mask-embedding", "zero")
    enc = model.encoder.sentence_encoder
    assert enc.attention_pattern.alibi == "shifted" and enc.embed_positions is None
    assert model.encoder.lm_head.beta.item() == 4.0
    assert enc.embed_tokens.zero_index == task.source_dictionary.index("<mask>")


@pytest.mark.parametrize("arch,task", [("roberta_zero_clap_tiny", "masked_lm"),
                                       ("roberta_clap_tiny", "masked_lm"),
                                       ("transformer_lm_zero_clap_tiny", "language_modeling"),
                                       ("transformer_lm_clap_tiny", "language_modeling")])
def test_same_logits_with_and_without_the_fast_attention_path(data_bin, arch, task, monkeypatch):
    model, _ = build(data_bin, arch, task=task)
    tokens = torch.randint(4, 200, (2, 17))
    tokens[1, 12:] = 1  # padding
    fast = model(tokens)[0]
    from energy_lm.kernels.sdpa import attention_math

    monkeypatch.setattr(attention_module, "attention", attention_math)  # the layers call it
    slow = model(tokens)[0]
    torch.testing.assert_close(fast[0], slow[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast[1, :12], slow[1, :12], rtol=1e-5, atol=1e-5)


def test_state_dict_names_match_stock_roberta(data_bin):
    ours, _ = build(data_bin, "roberta_alibi_tiny")
    stock, _ = build(data_bin, "roberta_base")
    ours_keys = {k for k in ours.state_dict()  # ours adds the energy head, the
                 # dictionary fingerprint and the checkpoint format
                 if not k.startswith("energy_head.")
                 and k not in ("dictionary_fingerprint", "energy_lm_format")}
    stock_keys = {k for k in stock.state_dict() if "embed_positions" not in k}
    assert ours_keys == stock_keys
    # so stock weights load into the ALiBi model unchanged, with a zero energy head (E = 0)
    # (and no dictionary fingerprint to check)
    for p in ours.energy_head.parameters():
        p.data.fill_(1.0)
    state = {k: v for k, v in stock.state_dict().items() if "embed_positions" not in k}
    ours.load_state_dict(state, strict=True)
    d = ours.energy_head.dim
    assert not ours.energy_head(torch.randn(3, d), torch.randn(3, d), -torch.rand(3)).any()


def test_lm_incremental_decoding_equals_full_pass(data_bin):
    model, _ = build(data_bin, "transformer_lm_zero_clap_tiny", task="language_modeling")
    tokens = torch.randint(4, 200, (2, 9))
    full = model(tokens)[0]
    state = {}
    steps = [model.decoder(tokens[:, : i + 1], incremental_state=state)[0] for i in range(9)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_document_attention_isolates_packed_documents(data_bin):
    from energy_lm.tasks.energy_language_modeling import document_segment_ids

    model, task = build(data_bin, "transformer_lm_zero_clap_tiny", task="language_modeling")
    eos = task.source_dictionary.eos()
    doc_a = torch.randint(4, 200, (5,))
    doc_b = torch.randint(4, 200, (6,))
    # model input: doc B starts at the </s> that ends doc A
    packed = torch.cat([torch.tensor([eos]), doc_a, torch.tensor([eos]), doc_b])[None]
    alone = torch.cat([torch.tensor([eos]), doc_b])[None]
    segments = document_segment_ids(packed, eos)
    assert segments.tolist() == [[1] * 6 + [2] * 7]
    got = model(packed, segment_ids=segments)[0][:, 6:]
    expected = model(alone)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # and without document attention, doc B does see doc A
    assert not torch.allclose(model(packed)[0][:, 6:], expected, atol=1e-4)


def test_base_lm_model_with_clap_flag_normalises_and_ties(data_bin):
    model, _ = build(data_bin, "transformer_lm_energy", "--clap-head", task="language_modeling")
    dec = model.decoder
    assert isinstance(dec.output_projection, ClapHead) and dec.embed_tokens.l2_normalize
    assert dec.output_projection.weight is dec.embed_tokens.weight


def test_clap_with_untied_roberta_weights_is_refused(data_bin):
    with pytest.raises(ValueError, match="untie-weights-roberta"):
        build(data_bin, "roberta_clap_tiny", "--untie-weights-roberta")


def test_learned_positions_start_sinusoidal_at_the_token_row_norm(data_bin):
    """RobertaModel re-initialises every parameter after the encoder is built; the
    sinusoidal start must survive that (it is applied after)."""
    from fairseq.modules.sinusoidal_positional_embedding import SinusoidalPositionalEmbedding

    model, _ = build(data_bin, "roberta_clap_tiny", "--position-init", "sinusoidal")
    table = model.encoder.sentence_encoder.embed_positions.weight.detach()
    pad = model.encoder.sentence_encoder.embed_positions.padding_idx
    rows = torch.cat([table[:pad], table[pad + 1:]])
    torch.testing.assert_close(rows.norm(dim=-1), torch.ones(len(rows)), rtol=1e-4, atol=1e-4)
    expected = SinusoidalPositionalEmbedding.get_embedding(*table.shape, pad)
    torch.testing.assert_close(table, expected / (table.size(1) / 2) ** 0.5)
    normal, _ = build(data_bin, "roberta_clap_tiny")  # default: BERT's init
    assert normal.encoder.sentence_encoder.embed_positions.weight.std() < 0.03
