"""Hub interface of our causal models: fairseq's `GeneratorHubInterface` plus
energy-based generation.

    lm = TransformerLMEnergyModel.from_pretrained(ckpt_dir, "checkpoint_best.pt", data_bin, ...)
    lm.sample("The list", num_candidates=8, max_new_tokens=20, seed=1)   # SIR with K = 8
    lm.sample("The list", beam=1, sampling=True, sir_candidates=8)       # the same, fairseq's words
    lm.sample("The list", beam=1, sampling=True)                         # fairseq's own sampling

Both SIR calls run fairseq's SequenceGenerator with `--sir-candidates` (the generator of
fairseq-generate and fairseq-interactive, energy_lm.inference.sir_generator; K = 1 is
fairseq's own sampling); `sample_tokens` runs `energy_lm.inference.sir_sampler.sir_sample` on token
ids with its own torch.Generator. Both serve the candidates from the key/value cache.
"""

from typing import List, Optional, Union

import torch
from fairseq.hub_utils import GeneratorHubInterface

from energy_lm.inference.sir_sampler import sir_sample


class EnergyLMHubInterface(GeneratorHubInterface):
    def encode(self, sentence: str) -> torch.LongTensor:
        """fairseq's encode, a document's text starting as the source model's did: an
        imported tokenizer's document prefix (Llama's BOS; `--bpe energy_hf_tokenizer`
        keeps it in its vocabulary map) goes first, as energy-lm-prepare puts it."""
        tokens = super().encode(sentence)
        vocab = getattr(self.bpe, "vocab", None)
        prefix = list(getattr(vocab, "document_prefix", ()) or ())
        if not prefix:
            return tokens
        first = tokens.new_tensor([self.src_dict.index(s) for s in vocab.symbols(prefix)])
        return torch.cat([first, tokens])

    def prompt_tokens(self, sentence: str) -> torch.LongTensor:
        """A document starts after </s> (as in the binarized data): </s> + the BPE ids."""
        ids = self.encode(sentence)[:-1]  # fairseq's encode appends </s>
        return torch.cat([ids.new_tensor([self.src_dict.eos()]), ids])

    def sample(self, sentences: Union[str, List[str]], beam: int = 1, verbose: bool = False,
               num_candidates: Optional[int] = None, max_new_tokens: int = 32,
               seed: Optional[int] = None, **kwargs):
        if num_candidates is None:
            return super().sample(sentences, beam=beam, verbose=verbose, **kwargs)
        if num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
        # max_len_a = 1: each prompt may grow by max_new_tokens (fairseq counts the prompt)
        flags = dict(dict(sampling=True, max_len_a=1, max_len_b=max_new_tokens), **kwargs)
        with torch.random.fork_rng(devices=[] if self.device.type == "cpu" else [self.device]):
            torch.manual_seed(seed if seed is not None else torch.initial_seed())
            return super().sample(sentences, beam=1, verbose=verbose,
                                  sir_candidates=num_candidates, **flags)

    def sample_tokens(self, prompts: List[torch.LongTensor], num_candidates: int = 1,
                      max_new_tokens: int = 32, seed: Optional[int] = None) -> List[torch.LongTensor]:
        """Token-level SIR sampling of a batch of prompts of any lengths (cached: one
        forward of the K candidates per step, energy_lm.inference.decode_cache)."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed if seed is not None else torch.initial_seed())
        rows = sir_sample(self.models[0], [p.to(self.device) for p in prompts], max_new_tokens,
                          num_candidates, eos=self.src_dict.eos(), pad=self.src_dict.pad(),
                          generator=generator)
        # drop the final </s>: decode() reads only text
        return [row[:-1] if row[-1] == self.src_dict.eos() and len(row) > len(prompt) else row
                for row, prompt in zip(rows, prompts)]
