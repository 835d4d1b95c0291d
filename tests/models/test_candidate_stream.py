"""The candidate stream inside full models: invariances against plain forward passes
(float64), gradients through both streams, and the model-level scoring API."""

import math

import pytest
import torch

from conftest import build_model

LM_ARCHS = ["transformer_lm_clap_tiny", "transformer_lm_zero_clap_tiny", "transformer_lm_alibi_tiny",
            "transformer_lm_llama_tiny"]
MLM_ARCHS = ["roberta_clap_tiny", "roberta_zero_clap_tiny", "roberta_alibi_tiny"]


def energy_model(data_bin, arch, *extra, task="language_modeling", seed=0):
    """The linear head unless `extra` names another: these invariances compare with the
    plain forward's final state (the seed head's own: tests/inference/test_scoring_rule.py)."""
    model, task_obj = build_model(data_bin, arch, "--energy-head", "linear", *extra, task=task)
    torch.manual_seed(seed)
    for p in model.energy_head.parameters():  # a trained-looking, nonzero energy head
        torch.nn.init.normal_(p, std=0.5)
    return model.double(), task_obj


def full_forward_energy(model, tokens, segment_ids=None):
    """E at the last position of tokens (B, L), by the model's plain forward pass."""
    extra = {} if segment_ids is None else {"segment_ids": segment_ids}
    features, _ = model(tokens, features_only=True, **extra)
    return model.energy_head(features[:, -1])  # (B,)


@pytest.mark.parametrize("arch", LM_ARCHS)
@pytest.mark.parametrize("packed", [False, True])
def test_causal_candidate_energy_equals_full_forward_on_prefix_plus_candidate(data_bin, arch, packed):
    model, task = energy_model(data_bin, arch)
    eos = task.source_dictionary.eos()
    torch.manual_seed(1)
    tokens = torch.randint(4, 300, (2, 11))
    segment_ids = None
    if packed:
        tokens[:, 0] = eos
        tokens[0, 5] = eos  # row 0 packs two documents: positions 0-4 and 5-10
        segment_ids = tokens.eq(eos).long().cumsum(1)
    candidates = torch.randint(4, 300, (2, 3, 11))  # K = 3
    lprobs, energy, cand_energy = model.score_candidates(tokens, candidates, segment_ids=segment_ids)
    plain_logits, _ = model(tokens, **({} if segment_ids is None else {"segment_ids": segment_ids}))
    # lprobs[:, t] is the proposal of the token at t (position 0 has none: uniform)
    torch.testing.assert_close(lprobs[:, 1:], torch.log_softmax(plain_logits[:, :-1].float(), -1))
    torch.testing.assert_close(lprobs[:, 0], torch.full_like(lprobs[:, 0], -math.log(lprobs.size(-1))))
    for p in range(11):
        prefix_seg = None
        if segment_ids is not None:  # the token at p is scored in the document of p - 1
            prefix_seg = torch.cat([segment_ids[:, :p], segment_ids[:, max(p - 1, 0): max(p, 1)]], 1)
        data = full_forward_energy(model, tokens[:, : p + 1], prefix_seg)
        torch.testing.assert_close(energy[:, p], data, rtol=1e-9, atol=1e-9)
        for k in range(3):
            seq = torch.cat([tokens[:, :p], candidates[:, k, p: p + 1]], dim=1)
            expected = full_forward_energy(model, seq, prefix_seg)
            torch.testing.assert_close(cand_energy[:, k, p], expected, rtol=1e-9, atol=1e-9)


def test_candidate_equal_to_the_data_token_scores_like_the_data_stream(data_bin):
    model, _ = energy_model(data_bin, "transformer_lm_zero_clap_tiny")
    tokens = torch.randint(4, 300, (3, 9))
    _, energy, cand_energy = model.score_candidates(tokens, tokens.unsqueeze(1))
    torch.testing.assert_close(cand_energy[:, 0], energy, rtol=1e-9, atol=1e-9)


def test_candidate_stream_with_padding_ignores_pad_keys(data_bin):
    model, task = energy_model(data_bin, "transformer_lm_alibi_tiny")
    pad = task.source_dictionary.pad()
    tokens = torch.randint(4, 300, (2, 8))
    tokens[1, 6:] = pad  # right padding
    cands = torch.randint(4, 300, (2, 1, 8))
    _, energy, cand_energy = model.score_candidates(tokens, cands)
    alone = model.score_candidates(tokens[1:, :6], cands[1:, :, :6])
    torch.testing.assert_close(cand_energy[1:, :, :6], alone[2], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(energy[1:, :6], alone[1], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("arch", MLM_ARCHS)
def test_masked_candidate_energy_equals_full_forward_with_the_token_in_place(data_bin, arch):
    """With one layer, a candidate at i sees the other positions' embeddings and itself:
    exactly what position i sees in a full forward with the candidate put at i."""
    model, task = energy_model(data_bin, arch, "--encoder-layers", "1", task="masked_lm")
    d = task.source_dictionary
    src = torch.randint(4, 300, (2, 12))
    src[:, 0] = d.bos()
    targets = torch.full_like(src, d.pad())
    masked = [(0, 3), (0, 7), (1, 5)]  # row 0: two masked positions, row 1: one
    for b, i in masked:
        targets[b, i] = src[b, i]
        src[b, i] = d.index("<mask>")
    out = model.energy_pass(src, targets, num_samples=2)
    assert out.scored.tolist() == [[True, True], [True, False]]
    for slot, (b, i) in enumerate([(0, 3), (0, 7), (1, 5)]):
        s = slot if b == 0 else 0
        for token, energy in [(targets[b, i], out.energy[b, s])] + [
                (out.cand_tokens[b, k, s], out.cand_energy[b, k, s]) for k in range(2)]:
            filled = src[b: b + 1].clone()
            filled[0, i] = token
            features, _ = model(filled, features_only=True)
            expected = model.energy_head(features[0, i])
            torch.testing.assert_close(energy, expected, rtol=1e-9, atol=1e-9)
    # the MLM logits at the masked positions are the model's own
    logits = model(src)[0]
    torch.testing.assert_close(out.logits[0, 1], logits[0, 7])


def test_energy_gradients_reach_the_trunk_through_the_data_stream(data_bin):
    """E(y) at position p depends on the data tokens before p (through their recorded
    keys/values): the gradient must reach their embeddings."""
    model, _ = energy_model(data_bin, "transformer_lm_zero_clap_tiny")
    tokens = torch.randint(4, 300, (1, 6))
    cands = torch.randint(4, 300, (1, 1, 6))
    _, _, cand_energy = model.score_candidates(tokens, cands)
    embed = model.decoder.embed_tokens.weight
    (grad,) = torch.autograd.grad(cand_energy[0, 0, 5], embed)
    for t in tokens[0, :5].tolist():
        assert grad[t].abs().sum() > 0
    assert grad[cands[0, 0, 5]].abs().sum() > 0


def test_data_stream_is_unchanged_by_a_paired_forward(data_bin):
    model, _ = energy_model(data_bin, "transformer_lm_clap_tiny")
    tokens = torch.randint(4, 300, (2, 7))
    before = model(tokens)[0]
    model.score_candidates(tokens, torch.randint(4, 300, (2, 2, 7)))
    torch.testing.assert_close(model(tokens)[0], before, rtol=0, atol=0)


def test_no_stage_survives_a_paired_pass_that_raised(data_bin):
    from energy_lm.modules.paired_pass import current_stage

    model, _ = energy_model(data_bin, "transformer_lm_clap_tiny")
    tokens = torch.randint(4, 300, (2, 7))
    before = model(tokens)[0]
    pattern = model.decoder.attention_pattern
    paired = model.paired_pass(tokens)
    for name, stage in (("data", lambda: paired.recording()), ("candidates", lambda:
                        paired.candidates(torch.zeros(2, 1, dtype=torch.long)))):
        with pytest.raises(RuntimeError, match="inside"):
            with stage():
                assert current_stage(pattern) is not None
                if name == "data":
                    model(tokens)  # records the data stream, then the pass fails
                raise RuntimeError("raised inside the pass")
        assert current_stage(pattern) is None  # the layers run as plain fairseq again
    torch.testing.assert_close(model(tokens)[0], before, rtol=0, atol=0)


def test_a_paired_pass_records_only_its_own_models_layers(data_bin):
    """The stage a layer runs in is found through the `with` block, and only by the
    model the pass was built for: another model run inside it records nothing and
    computes what it computes outside."""
    model, _ = energy_model(data_bin, "transformer_lm_clap_tiny")
    other, _ = energy_model(data_bin, "transformer_lm_clap_tiny", seed=1)
    tokens = torch.randint(4, 300, (2, 7))
    alone = other(tokens)[0]
    paired = model.paired_pass(tokens)
    with paired.recording():
        inside = other(tokens)[0]
    assert not paired.records
    torch.testing.assert_close(inside, alone, rtol=0, atol=0)
    with paired.recording():
        model(tokens)
    assert len(paired.records) == len(model.decoder.layers)
    with pytest.raises(RuntimeError, match="no data stream"):
        with model.paired_pass(tokens).candidates(torch.zeros(2, 1, dtype=torch.long)):
            pass


def test_activation_checkpointing_is_refused_with_one_clear_error(data_bin):
    model, _ = build_model(data_bin, "transformer_lm_clap_tiny", "--checkpoint-activations",
                           task="language_modeling")
    with pytest.raises(ValueError, match="checkpoint-activations"):
        model.score_candidates(torch.randint(4, 300, (1, 5)), torch.randint(4, 300, (1, 1, 5)))


def test_old_checkpoints_without_an_energy_head_load_with_zero_energy(data_bin):
    model, _ = build_model(data_bin, "transformer_lm_clap_tiny", task="language_modeling")
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("energy_head")}
    for p in model.energy_head.parameters():
        torch.nn.init.normal_(p)
    model.load_state_dict(state, strict=True)
    d = model.energy_head.dim
    energy = model.energy_head(torch.randn(5, d), torch.randn(5, d), -torch.rand(5))
    assert not energy.any()  # the fresh head's E = 0


@pytest.mark.parametrize("arch,task", [("transformer_lm_clap_tiny", "language_modeling"),
                                       ("roberta_clap_tiny", "masked_lm")])
@pytest.mark.parametrize("head", ["rich", "seed"])
def test_context_energy_heads_run_and_start_at_zero(data_bin, arch, task, head):
    model, _ = build_model(data_bin, arch, "--energy-head", head, task=task)
    assert model.energy_head.kind == head
    tokens = torch.randint(4, 300, (2, 8))
    if task == "language_modeling":
        _, energy, cand_energy = model.score_candidates(tokens, torch.randint(4, 300, (2, 2, 8)))
    else:
        targets = torch.full_like(tokens, 1)
        targets[:, 3] = tokens[:, 3]
        out = model.energy_pass(tokens, targets, num_samples=2)
        energy, cand_energy = out.energy, out.cand_energy
    assert not energy.any() and not cand_energy.any()  # zero-initialised: E = 0


@pytest.mark.parametrize("arch", ["roberta_zero_clap_tiny", "roberta_alibi_tiny"])
def test_masked_seed_energy_reads_the_masked_positions_state_as_context(data_bin, arch):
    """Masked family, seed head: E(y at i) pairs y's state at i (a one-layer model: the
    plain forward with y put at i) with the data stream's state at the masked position,
    both before the final norm, and log q(y) of the MLM head there."""
    model, task = energy_model(data_bin, arch, "--encoder-layers", "1", "--energy-head",
                               "seed", task="masked_lm")
    d = task.source_dictionary
    src = torch.randint(4, 300, (1, 10))
    targets = torch.full_like(src, d.pad())
    targets[0, 4] = src[0, 4]
    src[0, 4] = d.index("<mask>")
    out = model.energy_pass(src, targets, num_samples=3)

    def raw_states(tokens):
        features, extra = model(tokens, features_only=True, return_all_hiddens=True)
        return features, extra["inner_states"][-1].transpose(0, 1)

    features, masked_raw = raw_states(src)
    log_q = torch.log_softmax(model.output_layer(features[:, 4:5]), -1)[0, 0]
    for token, energy in [(targets[0, 4], out.energy[0, 0])] + [
            (out.cand_tokens[0, k, 0], out.cand_energy[0, k, 0]) for k in range(3)]:
        filled = src.clone()
        filled[0, 4] = token
        _, raw = raw_states(filled)
        expected = model.energy_head(raw[0, 4], masked_raw[0, 4], log_q[token])
        torch.testing.assert_close(energy, expected, rtol=1e-9, atol=1e-9)


def test_a_checkpoint_with_another_energy_head_continues_with_a_fresh_one(data_bin):
    """An adaptation with --energy-head seed from a linear-head checkpoint: the trunk
    loads, the new head starts at its own E = 0 state."""
    old, _ = build_model(data_bin, "transformer_lm_alibi_tiny", "--energy-head", "linear",
                         task="language_modeling")
    torch.nn.init.normal_(old.energy_head.proj.weight)
    new, _ = build_model(data_bin, "transformer_lm_alibi_tiny", "--energy-head", "seed",
                         task="language_modeling")
    state = old.state_dict()
    new.upgrade_state_dict_named(state, "")
    new.load_state_dict(state, strict=True)
    assert not new.energy_head.context_proj.weight.any()
    torch.testing.assert_close(new.decoder.layers[0].fc1.weight, old.decoder.layers[0].fc1.weight)
