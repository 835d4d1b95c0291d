"""Generation with a residual energy-based LM: sampling-importance-resampling (SIR).

At every step: draw K candidates y_1..y_K ~ q(. | prefix) (with replacement), score each
with the energy head (the candidate stream at the next position), and keep one with
probability proportional to exp(-E(y_k)). As K grows this approaches sampling from the
ELM q * exp(-E) / Z; K = 1 is plain ancestral sampling from q (no energy is computed and
no extra random number is drawn, so a fixed seed gives exactly the LM's sample).

Like fairseq's sampling, the padding symbol is never proposed: SIR targets the ELM
conditioned on y != <pad>, i.e. q * exp(-E) / Z renormalised without <pad>. Training's
samples and evaluation's Z use the whole vocabulary; the two agree wherever q(<pad>) is
negligible, as it is for any trained LM (<pad> is never a target).

Two ways to get the proposal and the energies, which make the same choices from the same
random numbers: `cached=True` (the default) keeps the data stream's keys and values and
runs one batched forward of the K candidates per step (decode_cache.py);
`cached=False` reruns the model on the whole prefix at every step (the reference the
cached sampler is tested against; O(T^2) per sequence).
"""

from typing import Dict, List, Optional, Union

import torch
from torch import Tensor

from energy_lm.inference import decode_cache
from energy_lm.inference.causal_pass import causal_energy_pass
from energy_lm.inference.sir_resample import draw_candidates, resample


class _Cached:
    def __init__(self, model, prompts: List[Tensor], backend: str):
        self.model, self.backend = model, backend
        self.cache = decode_cache.prefill(model, prompts)
        self.step = None

    def logits(self) -> Tensor:
        return self.cache.logits

    def _forward(self, candidates: Tensor):
        if self.step is None or not torch.equal(self.step.candidates, candidates):
            self.step = decode_cache.forward_candidates(self.model, self.cache, candidates,
                                                        self.backend)
        return self.step

    def energies(self, candidates: Tensor) -> Tensor:
        return decode_cache.candidate_energies(self.model, self.cache, self._forward(candidates))

    def append(self, candidates: Tensor, pick: Tensor) -> None:
        step = self._forward(candidates)
        self.cache = decode_cache.append_chosen(self.model, self.cache, step, pick)
        self.step = None


class _Recompute:
    """The whole prefix through the model at every step (rows of one length at a time)."""

    def __init__(self, model, prompts: List[Tensor], backend: str):
        self.model, self.backend = model, backend
        self.rows = list(prompts)

    def _groups(self):
        """Rows of equal length run as one batch: [(row indices, (b, T) tokens)]."""
        by_len: Dict[int, List[int]] = {}
        for i, row in enumerate(self.rows):
            by_len.setdefault(row.numel(), []).append(i)
        return [(idx, torch.stack([self.rows[i] for i in idx])) for idx in by_len.values()]

    def logits(self) -> Tensor:
        out: List[Optional[Tensor]] = [None] * len(self.rows)
        for idx, tokens in self._groups():
            logits, _ = self.model(tokens)  # (b, T, V)
            for j, i in enumerate(idx):
                out[i] = logits[j, -1]
        return torch.stack(out)

    def energies(self, candidates: Tensor) -> Tensor:
        out: List[Optional[Tensor]] = [None] * len(self.rows)
        for idx, tokens in self._groups():
            energies = _step_energies(self.model, tokens, candidates[idx], self.backend)
            for j, i in enumerate(idx):
                out[i] = energies[j]
        return torch.stack(out)

    def append(self, candidates: Tensor, pick: Tensor) -> None:
        chosen = candidates.gather(1, pick.unsqueeze(1)).squeeze(1)
        self.rows = [torch.cat([row, chosen[i:i + 1]]) for i, row in enumerate(self.rows)]


def _step_energies(model, prefix: Tensor, candidates: Tensor, backend: str) -> Tensor:
    """Energies of candidates (B, K) standing at position T of prefix (B, T) -> (B, K)."""
    # the candidate position must exist in the data stream: extend the prefix by one
    # placeholder token; causal attention keeps it out of the candidates' view
    extended = torch.cat([prefix, candidates[:, :1]], dim=1)  # (B, T+1)
    out = causal_energy_pass(model, extended, candidates.unsqueeze(-1),
                             start=extended.size(1) - 1, backend=backend)
    return out.cand_energy.squeeze(-1)  # (B, K)


@torch.no_grad()
def sir_sample(model, prefix: Union[Tensor, List[Tensor]], max_new_tokens: int,
               num_candidates: int = 1, eos: Optional[int] = None, pad: Optional[int] = None,
               generator: Optional[torch.Generator] = None, *, cached: bool = True,
               trace: Optional[List[dict]] = None, backend: str = "auto") -> List[Tensor]:
    """Continue each prompt by up to max_new_tokens tokens.

    prefix: (B, T) tokens, or a list of B 1-D prompts of any lengths. Returns one 1-D
    tensor per row: the prompt and its continuation, up to and including the first eos
    (when given). trace, when given, receives one record per step: the candidates (B, K),
    their energies (B, K; None for K = 1) and the chosen index (B,). backend: the
    paired-attention backend of the candidates' forward (energy_lm.kernels.backends).
    """
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    prompts = list(prefix)  # a (B, T) tensor's rows, or the given prompts
    if not prompts:
        return []
    model.eval()
    source = (_Cached if cached else _Recompute)(model, prompts, backend)
    device = prompts[0].device
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    new: List[Tensor] = []
    for step in range(max_new_tokens):
        logits = source.logits()
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32)).clone()  # (B, V)
        if pad is not None:
            logits[:, pad] = float("-inf")
        probs = torch.softmax(logits, dim=-1)
        candidates = draw_candidates(probs, num_candidates, generator)  # (B, K)
        energies = None
        if num_candidates == 1:
            pick = torch.zeros(len(prompts), dtype=torch.long, device=device)
        else:
            energies = source.energies(candidates)
            pick, _ = resample(energies, generator)  # (B,)
        chosen = candidates.gather(1, pick.unsqueeze(1)).squeeze(1)
        if trace is not None:
            trace.append({"candidates": candidates, "energies": energies, "pick": pick})
        if eos is not None:
            chosen = torch.where(done, torch.full_like(chosen, eos), chosen)
            done = done | chosen.eq(eos)
        new.append(chosen)
        if (eos is not None and bool(done.all())) or step == max_new_tokens - 1:
            break
        source.append(candidates, pick)
    rows = []
    steps = torch.stack(new, dim=1) if new else prompts[0].new_zeros(len(prompts), 0)
    for prompt, cont in zip(prompts, steps):
        if eos is not None:
            ends = (cont == eos).nonzero()
            if len(ends):
                cont = cont[: int(ends[0]) + 1]
        rows.append(torch.cat([prompt, cont]))
    return rows
