"""The causal family's architecture of today's LMs (rotary positions, RMSNorm, a gated
FFN, grouped-query attention, biases off, GPT-NeoX's parallel residual): each part
against an independent computation, the flags that do not combine, and the preset."""

import pytest
import torch

from conftest import build_model
from energy_lm.modules.gated_ffn import GatedProjection
from energy_lm.modules.rms_norm import RMSNorm
from energy_lm.modules.rotary import Rotary

LLAMA = "transformer_lm_llama_tiny"
# GPT-NeoX's layer: LayerNorm, a quarter of each head rotated, biases, parallel residual
NEOX_FLAGS = ("--norm", "layer", "--gated-ffn", "none", "--attention-bias", "all",
              "--rotary-fraction", "0.25", "--parallel-residual", "--kv-heads", "0",
              "--activation-fn", "gelu")


def build(data_bin, *extra):
    model, task = build_model(data_bin, LLAMA, *extra, task="language_modeling")
    return model, task


def perturb(model, seed=0):
    """Norm weights and biases away from 1 and 0 (an untrained model hides their use)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


def test_rotary_is_a_complex_rotation_of_the_rotated_dims():
    rotary = Rotary(head_dim=12, fraction=2 / 3, base=500.0)  # 8 rotated, 4 pass through
    x = torch.randn(2, 3, 5, 12, dtype=torch.float64)
    pos = torch.tensor([0, 1, 7, 30, 2])
    got = rotary(x, pos)
    half = 4
    z = torch.complex(x[..., :half], x[..., half:8])  # pair (i, i + half)
    angle = pos[:, None].double() * 500.0 ** (-torch.arange(half, dtype=torch.float64) * 2 / 8)
    turned = z * torch.exp(1j * angle)
    want = torch.cat([turned.real, turned.imag, x[..., 8:]], dim=-1)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # angles are float32


def test_rotary_scores_depend_on_the_distance_only():
    rotary = Rotary(head_dim=8)
    q, k = torch.randn(2, 1, 1, 8), torch.randn(2, 1, 1, 8)
    scores = [(rotary(q, torch.tensor([i + 3])) * rotary(k, torch.tensor([i]))).sum()
              for i in (0, 5, 40)]
    torch.testing.assert_close(torch.stack(scores), scores[0].expand(3), rtol=1e-5, atol=1e-5)


def test_rotary_per_row_positions_equal_shared_ones():
    rotary = Rotary(head_dim=8)
    x = torch.randn(2, 3, 4, 8)
    pos = torch.tensor([[0, 1, 2, 3], [5, 6, 7, 8]])
    rows = rotary(x, pos)
    for b in range(2):
        torch.testing.assert_close(rows[b], rotary(x[b:b + 1], pos[b])[0])


@pytest.mark.parametrize("fraction,why", [(0.1, "rotates 0"), (0.375, "rotates 3"), (1.5, "in \\(0, 1\\]")])
def test_bad_rotary_fraction_is_one_line(fraction, why):
    with pytest.raises(ValueError, match=why):
        Rotary(head_dim=8, fraction=fraction)


def test_rms_norm_is_its_formula():
    norm = RMSNorm(6, eps=1e-3)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 6))
    x = torch.randn(4, 6, dtype=torch.float64)
    want = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-3) * norm.weight.double()
    torch.testing.assert_close(norm(x.float()).double(), want, rtol=1e-5, atol=1e-6)


def test_llama_preset_structure(data_bin):
    model, _ = build(data_bin)
    dec = model.decoder
    assert dec.embed_positions is None and dec.rotary.dims == dec.embed_dim // 4
    assert isinstance(dec.layer_norm, RMSNorm) and dec.embed_scale == 1.0
    for layer in dec.layers:
        attn = layer.self_attn
        assert attn.rotary is dec.rotary and attn.kv_heads == 2 and attn.num_heads == 4
        assert attn.k_proj.weight.shape == (dec.embed_dim // 2, dec.embed_dim)
        assert all(p.bias is None for p in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj))
        assert isinstance(layer.fc1, GatedProjection) and layer.fc2.bias is None
        assert isinstance(layer.self_attn_layer_norm, RMSNorm)
        assert isinstance(layer.final_layer_norm, RMSNorm)


def test_qwen2_biases_are_on_q_k_v_only(data_bin):
    model, _ = build(data_bin, "--attention-bias", "qkv")
    attn = model.decoder.layers[0].self_attn
    assert all(p.bias is not None for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    assert attn.out_proj.bias is None


def test_grouped_heads_equal_the_same_model_with_its_key_value_heads_repeated(data_bin):
    grouped, _ = build(data_bin)
    perturb(grouped)
    full, _ = build(data_bin, "--kv-heads", "4")
    state = grouped.state_dict()
    head_dim = grouped.decoder.embed_dim // 4
    for key in list(state):
        if key.endswith(("k_proj.weight", "v_proj.weight")):  # (2 D, C) -> (4 D, C)
            w = state[key]
            state[key] = w.view(2, head_dim, -1).repeat_interleave(2, 0).reshape(4 * head_dim, -1)
    full.load_state_dict(state)
    tokens = torch.randint(4, 200, (2, 13))
    torch.testing.assert_close(grouped.double()(tokens)[0], full.double()(tokens)[0],
                               rtol=1e-10, atol=1e-10)


def test_parallel_residual_layer_is_its_formula(data_bin):
    model, _ = build(data_bin, *NEOX_FLAGS)
    perturb(model)
    layer = model.decoder.layers[0].double()
    x = torch.randn(7, 2, model.decoder.embed_dim, dtype=torch.float64)  # (T, B, C)
    attn, _ = layer.self_attn(layer.self_attn_layer_norm(x), None, None)
    ffn = layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(x))))  # fairseq's gelu
    got, _, _ = layer(x)
    torch.testing.assert_close(got, x + attn + ffn, rtol=1e-10, atol=1e-10)


def test_gated_ffn_is_silu_gate_times_up(data_bin):
    model, _ = build(data_bin)
    fc1 = model.decoder.layers[0].fc1
    x = torch.randn(3, model.decoder.embed_dim)
    gate, up = fc1.gate(x), fc1.up(x)
    torch.testing.assert_close(fc1(x), gate * torch.sigmoid(gate) * up)


@pytest.mark.parametrize("flags", [(), NEOX_FLAGS], ids=["llama", "neox"])
def test_incremental_decoding_equals_the_full_pass(data_bin, flags):
    model, _ = build(data_bin, *flags)
    perturb(model)
    tokens = torch.randint(4, 200, (2, 9))
    full = model(tokens)[0]
    state = {}
    steps = [model.decoder(tokens[:, : i + 1], incremental_state=state)[0] for i in range(9)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_a_left_padded_row_scores_its_tokens_as_alone(data_bin):
    """Rotary angles count the pad: only distances matter, so a shifted row agrees (to the
    float32 precision of the angles, computed in float32 as transformers computes them)."""
    model, task = build(data_bin)
    perturb(model)
    model = model.double()
    pad = task.source_dictionary.pad()
    tokens = torch.randint(4, 200, (1, 8))
    padded = torch.cat([torch.full((1, 3), pad), tokens], dim=1)
    alone = model(tokens)[0]
    shifted = model(padded)[0][:, 3:]
    torch.testing.assert_close(shifted, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flags,match", [
    (("--alibi", "causal"), "--rotary-fraction and --alibi are two position encodings"),
    (("--kv-heads", "3"), "--kv-heads 3 must divide --decoder-attention-heads 4"),
    (("--rotary-fraction", "0.1"), "rotates 0: it must be an even number"),
    (("--rotary-base", "1"), "--rotary-base must be > 1"),
], ids=["alibi", "kv-heads", "fraction", "base"])
def test_flags_that_do_not_combine_stop_in_one_line(data_bin, flags, match):
    with pytest.raises(ValueError, match=match):
        build(data_bin, *flags)


def test_parallel_residual_needs_pre_norm():
    # (fairseq's bool flags cannot be turned off on the command line: the config's check)
    from argparse import Namespace

    from energy_lm.models.transformer_lm_energy import _check_architecture

    args = Namespace(decoder_attention_heads=4, decoder_embed_dim=32, kv_heads=0,
                     rotary_fraction=0.0, rotary_base=10000.0, alibi="none",
                     parallel_residual=True, decoder_normalize_before=False, gated_ffn="none")
    with pytest.raises(ValueError, match="--parallel-residual needs pre-norm"):
        _check_architecture(args)

