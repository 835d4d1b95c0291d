"""The scoring rule of the energy path: every target is scored with its energy computed
in exactly the context the LM used to predict it, whatever the padding, the batch and
the packing (float64, so equalities are exact up to rounding)."""

import pytest
import torch

from conftest import build_model

ALIBI_ARCHS = ["transformer_lm_alibi_tiny", "transformer_lm_zero_clap_tiny"]


def energy_model(data_bin, arch, *extra, energy_head="linear"):
    model, task = build_model(data_bin, arch, "--energy-head", energy_head, *extra,
                              task="language_modeling")
    torch.manual_seed(0)
    for p in model.energy_head.parameters():  # a trained-looking, nonzero energy head
        torch.nn.init.normal_(p, std=0.3)
    return model.double().eval(), task.source_dictionary


def energy_by_plain_forward(model, context, token, segments=None):
    """E(token | context) by the model's ordinary forward on context + token: (B,)."""
    seq = torch.cat([context, token[:, None]], dim=1)
    extra = {} if segments is None else {"segment_ids": segments}
    features, _ = model(seq, features_only=True, **extra)
    return model.energy_head(features[:, -1])


def seed_energy_by_plain_forward(model, context, token):
    """The seed head's E(token | context) by a plain forward on context + token: the
    states before the final norm (fairseq's last inner state) of the token and of the
    context's last position, and the LM's log q(token) there: (B,)."""
    seq = torch.cat([context, token[:, None]], dim=1)
    features, extra = model(seq, features_only=True)
    raw = extra["inner_states"][-1].transpose(0, 1)
    log_q = torch.log_softmax(model.output_layer(features[:, -2]), -1).gather(-1, token[:, None])
    return model.energy_head(raw[:, -1], raw[:, -2], log_q[:, 0])


def lm_rows(docs, eos, pad, length=None):
    """fairseq's language-modelling layout of one document per row (--sample-break-mode
    eos): src = [</s>, w...], target = [w..., </s>], right-padded to `length`."""
    length = length or max(len(d) + 1 for d in docs)
    src = torch.full((len(docs), length), pad)
    tgt = torch.full((len(docs), length), pad)
    for b, doc in enumerate(docs):
        row = torch.tensor([eos] + doc + [eos])
        src[b, : len(doc) + 1] = row[:-1]
        tgt[b, : len(doc) + 1] = row[1:]
    return src, tgt


@pytest.mark.parametrize("arch", ALIBI_ARCHS + ["transformer_lm_clap_tiny"])
@pytest.mark.parametrize("head", ["linear", "rich", "seed"])
def test_every_target_of_a_padded_batch_is_scored_in_its_own_context(data_bin, arch, head):
    from energy_lm.inference.causal_pass import causal_energy_pass

    model, d = energy_model(data_bin, arch, energy_head=head)
    docs = [[10, 11, 12, 13, 14, 15], [20, 21, 22], [30, 31, 32, 33, 34]]
    src, tgt = lm_rows(docs, d.eos(), d.pad())
    out = causal_energy_pass(model, src, targets=tgt, num_samples=2)
    assert out.scored.sum() == sum(len(doc) + 1 for doc in docs)  # every target, </s> too
    assert out.energy.dtype == torch.float64
    if head in ("linear", "seed"):
        score = energy_by_plain_forward if head == "linear" else seed_energy_by_plain_forward
        for b, doc in enumerate(docs):
            for t in range(len(doc) + 1):  # target t is predicted from src[:t + 1]
                expected = score(model, src[b: b + 1, : t + 1], tgt[b: b + 1, t])
                torch.testing.assert_close(out.energy[b, t], expected[0], rtol=1e-9, atol=1e-9)
    # each row alone, unpadded, gives the same energies and candidate energies
    for b, doc in enumerate(docs):
        n = len(doc) + 1
        alone = causal_energy_pass(model, src[b: b + 1, :n], targets=tgt[b: b + 1, :n],
                                   candidates=out.cand_tokens[b: b + 1, :, :n])
        torch.testing.assert_close(alone.energy[0], out.energy[b, :n], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(alone.cand_energy[0], out.cand_energy[b, :, :n],
                                   rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("arch", ALIBI_ARCHS)
def test_a_packed_block_scores_each_document_as_if_it_were_alone(data_bin, arch):
    """With document attention a packed block must give each document's targets, its
    closing </s> included, the LM log-probs and energies it gets alone."""
    from energy_lm.inference.causal_pass import causal_energy_pass

    model, d = energy_model(data_bin, arch)
    eos = d.eos()
    docs = [[10, 11, 12], [20, 21, 22, 23], [30, 31]]
    stream = [eos] + [t for doc in docs for t in doc + [eos]]
    src, tgt = torch.tensor([stream[:-1]]), torch.tensor([stream[1:]])
    segments = src.eq(eos).long().cumsum(1)
    packed = causal_energy_pass(model, src, targets=tgt, segment_ids=segments, num_samples=1)
    lprobs = torch.log_softmax(packed.logits, -1).gather(-1, tgt[..., None])[..., 0]
    start = 0
    for doc in docs:
        n = len(doc) + 1
        a_src, a_tgt = lm_rows([doc], eos, d.pad())
        alone = causal_energy_pass(model, a_src, targets=a_tgt,
                                   candidates=packed.cand_tokens[:, :, start: start + n])
        a_lprobs = torch.log_softmax(alone.logits, -1).gather(-1, a_tgt[..., None])[..., 0]
        torch.testing.assert_close(lprobs[0, start: start + n], a_lprobs[0], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(packed.energy[0, start: start + n], alone.energy[0],
                                   rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(packed.cand_energy[0, :, start: start + n],
                                   alone.cand_energy[0], rtol=1e-9, atol=1e-9)
        start += n
    # the closing </s> of three documents: three different energies
    closing = packed.energy[0, tgt[0].eq(eos)]
    assert closing.unique().numel() == 3


def test_a_learned_position_model_scores_the_last_target_of_a_full_block(data_bin):
    """A block of the model's full length: the last target's energy sits one position
    past the LM's positions, which the learned table holds as one extra row."""
    from energy_lm.inference.causal_pass import causal_energy_pass

    model, d = energy_model(data_bin, "transformer_lm_clap_tiny", "--tokens-per-sample", "16")
    assert model.max_positions() == 16
    src = torch.randint(4, 300, (2, 16))
    tgt = torch.cat([src[:, 1:], torch.randint(4, 300, (2, 1))], dim=1)
    out = causal_energy_pass(model, src, targets=tgt, num_samples=1)
    assert out.energy.shape == (2, 16) and bool(torch.isfinite(out.energy).all())
    assert out.scored.all()


def test_old_learned_position_checkpoints_gain_the_energy_position(data_bin):
    model, _ = build_model(data_bin, "transformer_lm_clap_tiny", task="language_modeling")
    state = model.state_dict()
    key = "decoder.embed_positions.weight"
    old = state[key][:-1].clone()  # as written before the energy position existed
    state[key] = old
    del state["energy_lm_format"]  # (and before the format buffer)
    model.load_state_dict(state, strict=True)
    table = model.decoder.embed_positions.weight
    assert table.size(0) == old.size(0) + 1
    torch.testing.assert_close(table[-1], old[-1])
    torch.testing.assert_close(table[:-1], old)


@pytest.mark.parametrize("arch", ["transformer_lm_alibi_tiny", "transformer_lm_clap_tiny"])
@pytest.mark.parametrize("head", ["rich", "seed"])
def test_scoring_from_a_first_target_gives_the_full_calls_figures_there(data_bin, arch, head):
    """first_target f: candidates and figures only at positions f..T (what the harness
    scores after a context), each equal to the full call's at that position."""
    from energy_lm.inference.causal_pass import causal_energy_pass

    model, d = energy_model(data_bin, arch, energy_head=head)
    docs = [[10, 11, 12, 13, 14, 15], [20, 21, 22, 23, 24]]
    src, tgt = lm_rows(docs, d.eos(), d.pad())
    full = causal_energy_pass(model, src, targets=tgt, num_samples=3)
    first = 4
    part = causal_energy_pass(model, src, targets=tgt, first_target=first,
                              candidates=full.cand_tokens[:, :, first - 1:])
    assert part.positions[0].tolist() == list(range(first, src.size(1) + 1))
    assert torch.equal(part.tokens, full.tokens[:, first - 1:])
    assert torch.equal(part.scored, full.scored[:, first - 1:])
    torch.testing.assert_close(part.energy, full.energy[:, first - 1:], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(part.cand_energy, full.cand_energy[:, :, first - 1:],
                               rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match=r"first_target must be in \[1, 7\], got 8"):
        causal_energy_pass(model, src, targets=tgt, first_target=8)
