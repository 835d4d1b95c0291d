"""SIR inside fairseq's SequenceGenerator (--sir-candidates): in float64 every energy it
resampled with is the scoring rule's energy of that candidate in the generated sequence
(1e-12), prompts of different lengths, rows ending at their own </s>; the layers run only
for tokens SIR did not score (the first and the forced prompt tokens); K = 1 is fairseq's
own generator."""

import pytest
import torch
from fairseq.dataclass.configs import GenerationConfig
from fairseq.sequence_generator import SequenceGenerator
from omegaconf import OmegaConf, open_dict

from conftest import build_model
from energy_lm.inference.causal_pass import causal_energy_pass
from energy_lm.inference.sir_generator import SirSequenceGenerator


def gen_args(**values):
    cfg = OmegaConf.structured(GenerationConfig())
    with open_dict(cfg):
        for k, v in dict(dict(sampling=True, beam=1, max_len_b=9, min_len=1), **values).items():
            cfg[k] = v
    return cfg


def float64_lm(data_bin, arch="transformer_lm_zero_clap_tiny", head="seed"):
    model, task = build_model(data_bin, arch, "--decoder-layers", "2", "--energy-head", head,
                              task="language_modeling")
    torch.manual_seed(0)
    for p in model.energy_head.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return model.double().eval(), task


def prompt_batch(task, lengths=(4, 1, 6)):
    d = task.source_dictionary
    g = torch.Generator().manual_seed(2)
    rows = [torch.randint(d.nspecial, len(d), (n,), generator=g) for n in lengths]
    prefix = torch.full((len(rows), max(lengths)), d.pad(), dtype=torch.long)
    for i, r in enumerate(rows):
        prefix[i, : r.numel()] = r
    sample = {"id": torch.arange(len(rows)),
              "net_input": {"src_tokens": prefix, "src_lengths": torch.tensor(lengths)}}
    return rows, prefix, sample


@pytest.mark.parametrize("arch,head", [("transformer_lm_zero_clap_tiny", "seed"),
                                       ("transformer_lm_clap_tiny", "rich"),
                                       ("transformer_lm_alibi_tiny", "linear")])
def test_sir_generator_resamples_with_the_scoring_rules_energies(data_bin, arch, head):
    model, task = float64_lm(data_bin, arch, head)
    generator = task.build_generator([model], gen_args(sir_candidates=8))
    assert isinstance(generator, SirSequenceGenerator)
    generator.search.trace = []
    calls = []
    forward = model.decoder.forward
    model.decoder.forward = lambda *a, **kw: calls.append(1) or forward(*a, **kw)
    rows, prefix, sample = prompt_batch(task)
    torch.manual_seed(4)
    hypos = generator.generate([model], sample, prefix_tokens=prefix)
    model.decoder.forward = forward
    assert len(calls) <= prefix.size(1) + 1  # the first token and the forced prompt tokens
    eos = task.source_dictionary.eos()
    seqs = {}
    for i, (row, hypo) in enumerate(zip(rows, hypos)):
        tokens = hypo[0]["tokens"]
        assert torch.equal(tokens[: row.numel()], row)  # the prompt, then the sample
        seqs[i] = torch.cat([tokens.new_tensor([eos]), tokens])
    checked = 0
    for step, record in enumerate(generator.search.trace):
        if record["energies"] is None:
            continue
        for r, sid in enumerate(record["ids"].tolist()):
            seq = seqs[sid]
            cands = record["candidates"][r]  # (K,) at position step + 1 of the sequence
            out = causal_energy_pass(model, seq[None, : step + 2], cands[None, :, None],
                                     start=step + 1)
            assert torch.allclose(out.cand_energy[0, :, 0], record["energies"][r],
                                  rtol=0, atol=1e-12)
            assert int(seq[step + 1]) == int(cands[record["pick"][r]])  # the kept one
            checked += 1
    assert checked >= 10


def test_one_candidate_is_fairseqs_own_generator_and_bad_flags_fail_in_one_line(data_bin):
    model, task = float64_lm(data_bin)
    plain = task.build_generator([model], gen_args(sir_candidates=1))
    assert type(plain) is SequenceGenerator
    with pytest.raises(ValueError, match="add --sampling"):
        task.build_generator([model], gen_args(sir_candidates=4, sampling=False))
    with pytest.raises(ValueError, match="needs --beam 1"):
        task.build_generator([model], gen_args(sir_candidates=4, beam=2))


def test_the_attention_backend_reaches_both_samplers(data_bin, monkeypatch):
    """--sir-attention-backend (fairseq's generators) and sir_sample(backend=) run the
    candidates' forward on the backend named; an unknown name fails in one line."""
    from energy_lm.inference import decode_cache
    from energy_lm.inference.sir_sampler import sir_sample

    model, task = float64_lm(data_bin)
    with pytest.raises(ValueError, match="--sir-attention-backend must be one of auto"):
        task.build_generator([model], gen_args(sir_candidates=4, sir_attention_backend="fast"))
    seen = []
    forward = decode_cache.forward_candidates
    monkeypatch.setattr(decode_cache, "forward_candidates",
                        lambda *a, **kw: seen.append(a[3] if len(a) > 3 else kw.get("backend"))
                        or forward(*a, **kw))
    generator = task.build_generator([model], gen_args(sir_candidates=4,
                                                       sir_attention_backend="reference"))
    rows, prefix, sample = prompt_batch(task)
    torch.manual_seed(4)
    generator.generate([model], sample, prefix_tokens=prefix)
    assert seen and set(seen) == {"reference"}
    seen.clear()
    sir_sample(model, rows, 3, num_candidates=4, backend="reference",
               generator=torch.Generator().manual_seed(1))
    assert seen and set(seen) == {"reference"}
