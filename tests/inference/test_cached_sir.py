"""Cached SIR (energy_lm.inference.decode_cache) against a full recompute: in float64 the
same choices from the same random numbers, energies to 1e-12, for K = 1 and 8, a batch
of prompts of different lengths, with and without </s> stopping; and against the
scoring rule's own full pass on the sampled sequences."""

import pytest
import torch

from conftest import build_model
from energy_lm.inference.causal_pass import causal_energy_pass
from energy_lm.inference.sir_sampler import sir_sample

ARCHS = ["transformer_lm_zero_clap_tiny", "transformer_lm_clap_tiny", "transformer_lm_alibi_tiny",
         "transformer_lm_llama_tiny"]  # the last: rotary angles and grouped heads in the cache


def float64_lm(data_bin, arch, head, seed=0):
    model, task = build_model(data_bin, arch, "--decoder-layers", "2", "--energy-head", head,
                              task="language_modeling")
    torch.manual_seed(seed)
    for p in model.energy_head.parameters():
        torch.nn.init.normal_(p, std=0.5)  # energies of a moderate size, every term live
    return model.double().eval(), task


def prompts(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, 300, (n,), generator=g) for n in (3, 6, 1)]


def run(model, rows, k, cached, eos=None, pad=1, steps=7, seed=5):
    trace = []
    out = sir_sample(model, rows, steps, num_candidates=k, eos=eos, pad=pad,
                     generator=torch.Generator().manual_seed(seed), cached=cached, trace=trace)
    return out, trace


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("head", ["linear", "rich", "seed"])
def test_cached_sir_makes_the_choices_of_a_full_recompute(data_bin, arch, head):
    model, task = float64_lm(data_bin, arch, head)
    pad = task.source_dictionary.pad()
    for k in (1, 8):
        fast, fast_trace = run(model, prompts(), k, cached=True, pad=pad)
        slow, slow_trace = run(model, prompts(), k, cached=False, pad=pad)
        assert all(torch.equal(a, b) for a, b in zip(fast, slow)), (k, fast, slow)
        assert len(fast_trace) == len(slow_trace) == 7
        for a, b in zip(fast_trace, slow_trace):
            assert torch.equal(a["candidates"], b["candidates"])
            if k > 1:
                assert torch.allclose(a["energies"], b["energies"], rtol=0, atol=1e-12)
                assert a["energies"].abs().max() > 1e-3  # the energies are not all 0


@pytest.mark.parametrize("arch", [*ARCHS[:2], ARCHS[-1]])
def test_cached_energies_are_the_scoring_rules_on_the_sampled_sequences(data_bin, arch):
    model, task = float64_lm(data_bin, arch, "seed")
    rows, trace = run(model, prompts(), 8, cached=True, pad=task.source_dictionary.pad())
    for b, (prompt, row) in enumerate(zip(prompts(), rows)):
        cands = torch.stack([t["candidates"][b] for t in trace], dim=1)  # (K, steps)
        out = causal_energy_pass(model, row.unsqueeze(0), cands.unsqueeze(0),
                                 start=prompt.numel())
        want = torch.stack([t["energies"][b] for t in trace], dim=1)  # (K, steps)
        assert torch.allclose(out.cand_energy[0], want, rtol=0, atol=1e-12)


def test_rows_stop_at_their_own_eos(data_bin):
    model, task = float64_lm(data_bin, ARCHS[0], "seed")
    pad = task.source_dictionary.pad()
    free, _ = run(model, prompts(), 8, cached=True, pad=pad)
    eos = int(free[1][6 + 2])  # the token row 1 chose at step 3
    for cached in (True, False):
        stopped, _ = run(model, prompts(), 8, cached=cached, eos=eos, pad=pad)
        first = [int((r[p.numel():] == eos).nonzero()[0]) if (r[p.numel():] == eos).any()
                 else None for r, p in zip(free, prompts())]
        for r, s, p, f in zip(free, stopped, prompts(), first):
            cut = p.numel() + (f + 1 if f is not None else 7)
            assert torch.equal(s, r[:cut])  # the same tokens, cut after the first eos
        assert stopped[1].numel() <= 6 + 3 and int(stopped[1][-1]) == eos


def test_learned_positions_stop_with_one_clear_error(data_bin):
    model, task = float64_lm(data_bin, "transformer_lm_clap_tiny", "seed")
    limit = model.max_positions()
    prompt = torch.randint(4, 300, (limit - 2,))
    with pytest.raises(ValueError, match=f"sampling past position {limit}"):
        sir_sample(model, [prompt], 5, num_candidates=4, pad=task.source_dictionary.pad(),
                   generator=torch.Generator().manual_seed(0))
