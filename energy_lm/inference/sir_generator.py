"""SIR inside fairseq's SequenceGenerator: `--sir-candidates K` for fairseq-generate,
fairseq-interactive and the hub's `sample` (energy_lm.patches.sir_generation builds it).

fairseq's loop stays as it is: each step it asks the model for the proposal's
log-probabilities (`forward_decoder`), edits them (no <pad>, the unknown-word penalty, a
forced prompt token, </s> only at the length limit, no </s> before --min-len), and asks
the search for a token. Two pieces take part:

- `SirEnsemble` (the model side) keeps, beside fairseq's key/value cache, what a step of
  SIR needs: the proposal's raw logits and the energy head's context at each row's last
  token. When the token fairseq appends is the candidate SIR chose, that candidate's keys
  and values (computed when it was scored) join the cache and its final state gives the
  next proposal, without running the layers again (decode_cache.py).
- `SirSampling` (the search side) draws K candidates from the edited proposal exactly as
  fairseq's `Sampling` draws one (the same top-k / top-p support, torch's global RNG),
  scores them with the energy head in one batched forward, and keeps one with
  probability proportional to exp(-E). The reported score is the proposal's
  log-probability of the kept token, as fairseq reports it.

So with --sampling-topk, --sampling-topp or --temperature, SIR targets the ELM built on
the edited proposal q': q' * exp(-E) / Z' (the energy itself reads the model's own log q,
as in training). A step where a row has one possible token (a forced prompt token, </s>
at the length limit) computes no energy for it.
"""

import logging
from dataclasses import replace
from typing import Dict, List, Optional

import torch
from fairseq import search
from fairseq.sequence_generator import EnsembleModel, SequenceGenerator
from torch import Tensor

from energy_lm.inference import decode_cache
from energy_lm.inference.protocol import CAUSAL, require
from energy_lm.inference.sir_resample import draw_candidates, resample

logger = logging.getLogger("energy_lm.sir")


def check_sir_args(models, args, k: int) -> None:
    """One clear line for settings SIR cannot serve."""
    from energy_lm.kernels import backends

    if k < 1:
        raise ValueError(f"--sir-candidates must be >= 1, got {k}")
    backends.check_name(getattr(args, "sir_attention_backend", "auto"), "--sir-attention-backend")
    if not getattr(args, "sampling", False):
        raise ValueError("--sir-candidates samples: add --sampling (and --beam 1)")
    if getattr(args, "beam", 1) != 1:
        raise ValueError(f"--sir-candidates needs --beam 1 (one sample per prompt; "
                         f"--nbest and --beam {getattr(args, 'beam', 1)} are not supported)")
    if len(models) != 1:
        raise ValueError("--sir-candidates samples one energy model, not an ensemble")
    require(models[0], CAUSAL, "energy", user="--sir-candidates")


class SirEnsemble(EnsembleModel):
    """fairseq's EnsembleModel of one energy LM, with SIR's state (see the module
    docstring)."""

    def __init__(self, models, backend: str = "auto"):
        super().__init__(models)
        self.backend = backend  # the paired-attention backend of the candidates' forward
        self.cache: Optional[decode_cache.DecodeCache] = None
        self.pending: Optional[decode_cache.StepForward] = None
        self.pending_pick: Optional[Tensor] = None

    def reset(self) -> None:
        self.cache = self.pending = self.pending_pick = None

    @torch.jit.unused
    def forward_decoder(self, tokens, encoder_outs, incremental_states, temperature: float = 1.0):
        model = self.models[0]
        state = incremental_states[0]
        lengths = torch.full((tokens.size(0),), tokens.size(1), device=tokens.device)
        if self._pending_matches(tokens):
            cache = decode_cache.append_chosen(model, replace(self.cache, state=state),
                                               self.pending, self.pending_pick)
        else:  # fairseq's own incremental step (the first token, a forced prompt token)
            features, extra = model.decoder(tokens, incremental_state=state, features_only=True)
            final = features[:, -1]  # (B, C)
            context = (extra["inner_states"][-1][-1] if model.energy_head.reads_pre_norm
                       else final)  # inner states are time-first
            cache = decode_cache.DecodeCache(state, lengths, model.output_layer(final), context)
        self.cache = replace(cache, lengths=lengths)
        self.pending = self.pending_pick = None
        logits = self.cache.logits.float() / temperature  # as fairseq's forward_decoder
        return torch.log_softmax(logits, dim=-1), None

    def _pending_matches(self, tokens: Tensor) -> bool:
        if self.pending is None or self.cache is None:
            return False
        chosen = self.pending.candidates.gather(1, self.pending_pick.unsqueeze(1)).squeeze(1)
        return chosen.shape[0] == tokens.size(0) and torch.equal(chosen, tokens[:, -1])

    def score(self, candidates: Tensor) -> Tensor:
        """Energies (B, K) of candidates at every row's next position; the candidates'
        forward is kept for the one chosen (`choose`)."""
        model = self.models[0]
        self.pending = decode_cache.forward_candidates(model, self.cache, candidates,
                                                       self.backend)
        return decode_cache.candidate_energies(model, self.cache, self.pending)

    def choose(self, pick: Optional[Tensor]) -> None:
        if pick is None:
            self.pending = None
        self.pending_pick = pick

    @torch.jit.unused
    def reorder_incremental_state(self, incremental_states, new_order):
        super().reorder_incremental_state(incremental_states, new_order)
        if self.cache is not None:
            c = self.cache
            self.cache = replace(c, lengths=c.lengths.index_select(0, new_order),
                                 logits=c.logits.index_select(0, new_order),
                                 context=c.context.index_select(0, new_order))
        if self.pending is not None:
            p = self.pending
            self.pending = decode_cache.StepForward(
                p.candidates.index_select(0, new_order), p.head_states.index_select(0, new_order),
                p.final.index_select(0, new_order),
                {m: (k.index_select(0, new_order), v.index_select(0, new_order))
                 for m, (k, v) in p.kept.items()})
            self.pending_pick = self.pending_pick.index_select(0, new_order)


class SirSampling(search.Sampling):
    """fairseq's Sampling with K candidates per row resampled by exp(-E)."""

    def __init__(self, tgt_dict, ensemble: SirEnsemble, num_candidates: int,
                 sampling_topk: int = -1, sampling_topp: float = -1.0,
                 print_weights: bool = False):
        super().__init__(tgt_dict, sampling_topk, sampling_topp)
        self.words = tgt_dict  # fairseq's Search keeps only its special symbols
        self.ensemble = ensemble
        self.num_candidates = num_candidates
        self.print_weights = print_weights
        self.trace: Optional[List[Dict[str, Tensor]]] = None  # tests: one record per step

    @torch.jit.unused
    def step(self, step: int, lprobs, scores, prev_output_tokens: Optional[Tensor] = None,
             original_batch_idxs: Optional[Tensor] = None):
        bsz, beam_size, vocab = lprobs.size()
        if beam_size != 1:
            raise ValueError("SIR sampling runs with --beam 1")
        if self.sampling_topp > 0:  # the proposal's support, as fairseq's Sampling
            probs, top_indices = self._sample_topp(lprobs)
        elif self.sampling_topk > 0:
            top, top_indices = lprobs.topk(self.sampling_topk)
            probs = top.exp_()
        else:
            probs, top_indices = lprobs.exp_(), None
        probs = probs.view(bsz, -1)
        drawn = draw_candidates(probs, self.num_candidates)  # (B, K), torch's global RNG
        candidates = drawn if top_indices is None else top_indices.view(bsz, -1).gather(1, drawn)
        free = probs.gt(0).sum(dim=1) > 1  # rows with more than one possible token
        energies = weights = None
        if bool(free.any()):
            energies = self.ensemble.score(candidates)
            pick, weights = resample(energies)
            pick = torch.where(free, pick, torch.zeros_like(pick))
        else:
            pick = torch.zeros(bsz, dtype=torch.long, device=candidates.device)
        self.ensemble.choose(pick if energies is not None else None)
        if self.trace is not None:
            self.trace.append({"candidates": candidates, "energies": energies, "pick": pick,
                               "ids": original_batch_idxs})
        if self.print_weights and energies is not None:
            self._log(step, candidates, energies, weights, pick, original_batch_idxs)
        indices_buf = candidates.gather(1, pick.unsqueeze(1))  # (B, 1)
        scores_buf = probs.gather(1, drawn.gather(1, pick.unsqueeze(1))).log_()  # (B, 1)
        if step == 0:
            beams_buf = indices_buf.new_zeros(bsz, beam_size)
        else:
            beams_buf = torch.arange(0, beam_size).to(indices_buf).repeat(bsz, 1)
            scores_buf.add_(torch.gather(scores[:, :, step - 1], dim=1, index=beams_buf))
        return scores_buf, indices_buf, beams_buf

    def _log(self, step, candidates, energies, weights, pick, ids) -> None:
        words = self.words
        for row in range(candidates.size(0)):
            rid = int(ids[row]) if ids is not None else row
            parts = [f"{words[int(c)]}:E={float(e):+.3f}:w={float(w):.3f}"
                     for c, e, w in zip(candidates[row], energies[row], weights[row])]
            logger.info("SIR step %d, sentence %d: kept %s | %s", step, rid,
                        words[int(candidates[row, pick[row]])], " ".join(parts))


class SirSequenceGenerator(SequenceGenerator):
    """fairseq's SequenceGenerator whose model is a SirEnsemble and whose search is
    SirSampling (built by FairseqTask.build_generator with --sir-candidates K > 1)."""

    def __init__(self, models, tgt_dict, search_strategy=None, sir_candidates: int = 2,
                 sir_print_weights: bool = False, sir_attention_backend: str = "auto",
                 **kwargs):
        ensemble = (models if isinstance(models, SirEnsemble)
                    else SirEnsemble(models, sir_attention_backend))
        if not isinstance(search_strategy, search.Sampling):
            raise ValueError("--sir-candidates needs --sampling")
        sir = SirSampling(tgt_dict, ensemble, sir_candidates, search_strategy.sampling_topk,
                          search_strategy.sampling_topp, sir_print_weights)
        super().__init__(ensemble, tgt_dict, search_strategy=sir, **kwargs)

    @torch.no_grad()
    def _generate(self, sample, prefix_tokens=None, constraints=None, bos_token=None):
        self.model.reset()
        try:
            return super()._generate(sample, prefix_tokens=prefix_tokens,
                                     constraints=constraints, bos_token=bos_token)
        finally:
            self.model.reset()
