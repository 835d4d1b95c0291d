"""fill_mask(..., scoring="elm") on a masked energy model: an energy trained against a
weak proposal ranks the right word first where q alone does not; scoring="lm" is
fairseq's own method; the ELM probabilities are q * exp(-E) renormalised over the scored
candidates (exactly, over the whole vocabulary with elm_candidates=None)."""

import pytest
import torch
from fairseq.models.roberta.hub_interface import RobertaHubInterface
from omegaconf import OmegaConf

from conftest import build_model
from energy_lm.inference.elm_fill import elm_fillings
from energy_lm.inference.masked_pass import masked_energy_pass

SENTENCE = "Return the <mask> of the list."


def hub_of(data_bin, seed=0):
    model, task = build_model(data_bin, "roberta_zero_clap_tiny", "--encoder-layers", "1",
                              "--energy-head", "seed")
    torch.manual_seed(seed)
    cfg = OmegaConf.create({"bpe": {"_name": "energy_byte_bpe",
                                    "bpe_vocab": str(data_bin / "vocab.json"),
                                    "bpe_merges": str(data_bin / "merges.txt")}})
    return RobertaHubInterface(cfg, task, model.eval()), model, task


def masked(hub, task, word):
    from energy_lm.patches.elm_fill_mask import _tokens

    tokens = _tokens(hub, SENTENCE)
    index = int((tokens == task.mask_idx).nonzero()[0])
    ids = hub.task.source_dictionary.encode_line(hub.bpe.encode(word), append_eos=False,
                                                 add_if_not_exist=False).long()
    assert ids.numel() == 1, "the test's word must be one BPE token"
    return tokens, index, int(ids[0])


def train_energy_towards(model, tokens, index, right, steps=150):
    """The energy head alone, trained by a contrastive loss on the data token against
    samples of the model's own (untrained, weak) MLM head."""
    pad = model._trunk().padding_idx
    targets = torch.full_like(tokens, pad)
    targets[index] = right
    opt = torch.optim.Adam(model.energy_head.parameters(), lr=3e-2)
    torch.manual_seed(1)
    for _ in range(steps):
        out = masked_energy_pass(model, tokens[None], targets[None], num_samples=16)
        e = torch.cat([out.energy[:, None, 0], out.cand_energy[:, :, 0]], dim=1)  # (1, 1+K)
        loss = torch.logsumexp(-e, dim=1) + e[:, 0]  # -log softmax(-E)[data]
        opt.zero_grad()
        loss.sum().backward()
        opt.step()


def test_an_energy_trained_on_the_right_word_ranks_it_first_where_q_does_not(data_bin):
    hub, model, task = hub_of(data_bin)
    tokens, index, right = masked(hub, task, " value")
    lm = hub.fill_mask(SENTENCE, topk=3)  # fairseq's own ranking
    word = hub.bpe.decode(task.source_dictionary.string([right]))
    assert lm[0][2] != word
    train_energy_towards(model, tokens, index, right)
    model.eval()
    elm = hub.fill_mask(SENTENCE, topk=3, scoring="elm", elm_candidates=None)
    assert elm[0][2] == word and elm[0][0] == SENTENCE.replace(" <mask>", word)
    assert hub.fill_mask(SENTENCE, topk=3) == lm  # the energy does not change q's ranking
    with pytest.raises(ValueError, match="scoring must be"):
        hub.fill_mask(SENTENCE, scoring="energy")


def test_elm_probabilities_are_q_times_exp_minus_e_renormalised(data_bin):
    hub, model, task = hub_of(data_bin)
    for p in model.energy_head.parameters():
        torch.nn.init.normal_(p, std=0.5)
    tokens, index, _ = masked(hub, task, " value")
    ids, probs, q = elm_fillings(model, tokens, index, topk=5, candidates=None)
    pad = model._trunk().padding_idx
    everything = torch.arange(len(task.source_dictionary))
    everything = everything[everything != pad]
    targets = torch.full_like(tokens, pad)
    targets[index] = ids[0]
    out = masked_energy_pass(model, tokens[None], targets[None],
                             candidates=everything.view(1, -1, 1))
    lq = torch.log_softmax(out.logits[0, 0].float(), dim=-1)[everything]
    want = torch.softmax(lq - out.cand_energy[0, :, 0], dim=0)  # exact Z over the vocabulary
    order = want.topk(5)
    assert torch.equal(everything[order.indices], ids)
    assert torch.allclose(order.values, probs, atol=1e-5)
    assert torch.allclose(q, lq[order.indices].exp(), atol=1e-6)
    ids8, probs8, _ = elm_fillings(model, tokens, index, topk=8, candidates=8)
    top = lq.topk(8).indices  # q's top 8: the candidates scored
    renorm = torch.softmax((lq - out.cand_energy[0, :, 0])[top], dim=0)
    assert set(ids8.tolist()) == set(everything[top].tolist())
    assert float(probs8.sum()) == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(probs8, renorm.sort(descending=True).values, atol=1e-5)
