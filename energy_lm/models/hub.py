"""Hub interface of our causal models: fairseq's `GeneratorHubInterface` plus
energy-based generation.

    lm = TransformerLMEnergyModel.from_pretrained(ckpt_dir, "checkpoint_best.pt", data_bin, ...)
    lm.sample("The list", num_candidates=8, max_new_tokens=20, seed=1)   # SIR with K = 8
    lm.sample("The list", beam=1, sampling=True)                         # fairseq's own sampling

With `num_candidates` the text comes from `energy_lm.sampling.sir_sample` (K = 1 is plain
ancestral sampling from the LM); without it, from fairseq's SequenceGenerator unchanged.
"""

from typing import List, Optional, Union

import torch
from fairseq.hub_utils import GeneratorHubInterface

from energy_lm.sampling import sir_sample


class EnergyLMHubInterface(GeneratorHubInterface):
    def prompt_tokens(self, sentence: str) -> torch.LongTensor:
        """A document starts after </s> (as in the binarized data): </s> + the BPE ids."""
        ids = self.encode(sentence)[:-1]  # fairseq's encode appends </s>
        return torch.cat([ids.new_tensor([self.src_dict.eos()]), ids])

    def sample(self, sentences: Union[str, List[str]], beam: int = 1, verbose: bool = False,
               num_candidates: Optional[int] = None, max_new_tokens: int = 32,
               seed: Optional[int] = None, **kwargs):
        if num_candidates is None:
            return super().sample(sentences, beam=beam, verbose=verbose, **kwargs)
        if isinstance(sentences, str):
            return self.sample([sentences], num_candidates=num_candidates,
                               max_new_tokens=max_new_tokens, seed=seed)[0]
        return [self.decode(row[1:]) for row in self.sample_tokens(
            [self.prompt_tokens(s) for s in sentences], num_candidates, max_new_tokens, seed)]

    def sample_tokens(self, prompts: List[torch.LongTensor], num_candidates: int = 1,
                      max_new_tokens: int = 32, seed: Optional[int] = None) -> List[torch.LongTensor]:
        """Token-level SIR sampling of a batch of prompts of any lengths (cached: one
        forward of the K candidates per step, energy_lm.sampling.decode_cache)."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed if seed is not None else torch.initial_seed())
        rows = sir_sample(self.models[0], [p.to(self.device) for p in prompts], max_new_tokens,
                          num_candidates, eos=self.src_dict.eos(), pad=self.src_dict.pad(),
                          generator=generator)
        # drop the final </s>: decode() reads only text
        return [row[:-1] if row[-1] == self.src_dict.eos() and len(row) > len(prompt) else row
                for row, prompt in zip(rows, prompts)]
