"""How far a fairseq model's log-probs are from a Hugging Face model's on the same text:
what both bridge commands measure before they write anything, and what the tests
assert (at <= 1e-5 in float32, <= 1e-10 in float64).

The log-probs are compared over the source vocabulary: fairseq's row `index[i]` against
HF's token i. A causal model's masked symbols, and HF tokens past `len(index)` (BPE
tokens an exported dictionary has no row for), must carry probability exactly 0."""

from dataclasses import dataclass
from typing import Dict, List

import torch
from torch import Tensor

from energy_lm.hf.errors import BridgeError

PROBE_TEXT = ("The quick brown fox jumps over the lazy dog, and 42 wizards quietly "
              "boxed a jolly ox near the river's edge.")
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9}  # what a converter must reach


@dataclass
class Agreement:
    max_abs_diff: float   # max |log p_ours - log p_hf| over positions and source tokens
    positions: int
    masked_mass: float    # total probability of the masked symbols (0 when exact)
    dtype: torch.dtype
    what: str = "max |log p - log p_hf|"

    def describe(self) -> str:
        name = str(self.dtype).replace("torch.", "")
        over = ("the source vocabulary" if "log p" in self.what else "the hidden size")
        return (f"{self.what} = {self.max_abs_diff:.2e} over {self.positions} positions x "
                f"{over} ({name}, measured on a probe text)")

    def check(self) -> "Agreement":
        if not self.max_abs_diff <= TOLERANCE[self.dtype] or self.masked_mass != 0.0:
            raise BridgeError(f"the converted model does not reproduce the source: "
                              f"{self.describe()}, masked mass {self.masked_mass:.2e}")
        return self


def probe_ids(tokenizer: Dict, size: int, length: int = 24) -> List[int]:
    """Source token ids of the probe text (its first `length`), or, where the tokenizer
    gives fewer, ids spread over the vocabulary."""
    import json

    from tokenizers import Tokenizer

    ids = [i for i in Tokenizer.from_str(json.dumps(tokenizer)).encode(
        PROBE_TEXT, add_special_tokens=False).ids if i < size][:length]
    spread = [(7919 * k + 3) % size for k in range(length - len(ids))]
    return ids + spread


def _source_log_probs(logits: Tensor) -> Tensor:
    return torch.log_softmax(logits.double(), dim=-1)


@torch.no_grad()
def causal(ours, theirs, source_ids: List[int], eos: int, index: Tensor,
           dtype=torch.float32) -> Agreement:
    """ours: transformer_lm_energy; theirs: a HF causal LM; both fed eos + the ids."""
    ours, theirs = ours.to(dtype).eval(), theirs.to(dtype).eval()
    ids = torch.tensor([[eos] + source_ids])  # (1, T)
    fs_ids = index[ids]
    want = _source_log_probs(theirs(input_ids=ids).logits[0])  # (T, V_hf)
    logits = ours(fs_ids)[0][0]  # (T, V_fs)
    got_all = _source_log_probs(logits)
    masked = torch.ones(logits.size(-1), dtype=torch.bool)
    masked[index] = False
    mass = float(got_all[:, masked].exp().sum()) + _beyond(want, index)
    diff = float((got_all[:, index] - want[:, :len(index)]).abs().max())
    return Agreement(diff, ids.size(1), mass, dtype)


@torch.no_grad()
def causal_states(ours, theirs, source_ids: List[int], eos: int, index: Tensor,
                  dtype=torch.float32) -> Agreement:
    """ours: transformer_lm_energy; theirs: a HF causal trunk (GPT2Model): the final
    (normed) states, max |h - h_hf|."""
    ours, theirs = ours.to(dtype).eval(), theirs.to(dtype).eval()
    ids = torch.tensor([[eos] + source_ids])
    states = ours(index[ids], features_only=True)[0][0]
    want = theirs(input_ids=ids).last_hidden_state[0]
    diff = float((states.double() - want.double()).abs().max())
    return Agreement(diff, ids.size(1), 0.0, dtype, "max |h - h_hf|")


@torch.no_grad()
def masked(ours, theirs, source_ids: List[int], bos: int, eos: int, mask: int,
           index: Tensor, dtype=torch.float32) -> Agreement:
    """ours: roberta_energy; theirs: RobertaForMaskedLM; <s> ids </s>, every third
    token replaced by <mask>; every position's log-probs compared. A source without an LM
    head (RobertaModel) is compared by its final states instead (max |h - h_hf|)."""
    ours, theirs = ours.to(dtype).eval(), theirs.to(dtype).eval()
    body = [mask if k % 3 == 1 else t for k, t in enumerate(source_ids)]
    ids = torch.tensor([[bos] + body + [eos]])
    output = theirs(input_ids=ids)
    if not hasattr(output, "logits"):  # the trunk alone
        states = ours(index[ids], features_only=True)[0][0]
        diff = float((states.double() - output.last_hidden_state[0].double()).abs().max())
        return Agreement(diff, ids.size(1), 0.0, dtype, "max |h - h_hf|")
    want = _source_log_probs(output.logits[0])
    got = _source_log_probs(ours(index[ids])[0][0])
    diff = float((got[:, index] - want[:, :len(index)]).abs().max())
    return Agreement(diff, ids.size(1), _beyond(want, index), dtype)


def _beyond(want: Tensor, index: Tensor) -> float:
    """HF's probability of its tokens past the compared ones (0 when exact)."""
    return float(want[:, len(index):].exp().sum()) if want.size(-1) > len(index) else 0.0
