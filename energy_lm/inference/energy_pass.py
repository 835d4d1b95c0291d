"""The one entry point of the energy pass: a batch of the model's task scored in one
call, for either family (causal_pass.py, masked_pass.py)."""

from typing import Optional

from torch import Tensor

from energy_lm.inference.causal_pass import causal_energy_pass
from energy_lm.inference.energy_output import EnergyOutput
from energy_lm.inference.masked_pass import masked_energy_pass
from energy_lm.inference.protocol import is_masked_model
from energy_lm.sampling.keyed_random import SampleKeys


def energy_pass(model, src_tokens: Tensor, targets: Tensor, candidates=None, *,
                num_samples: int = 1, backend: str = "auto",
                sample_keys: Optional[SampleKeys] = None, segment_ids: Optional[Tensor] = None,
                first_target: int = 1) -> EnergyOutput:
    """A batch (src_tokens, targets (B, T)) scored in one call: every target of a causal
    batch (from first_target on), the masked positions of a masked one; at each the
    proposal's logits, the data token's energy and the candidates' (given (B, K, S),
    chosen by a function of the proposal logits, or num_samples draws from q).
    `model` may be fairseq's distributed wrapper: the data stream runs through its
    forward, which is what makes DistributedDataParallel reduce the gradients (a method
    of the wrapped model would run the inner model's forward, and each rank would step
    on its own gradient)."""
    if is_masked_model(model):
        if segment_ids is not None:
            raise ValueError("segment_ids (packed documents) are an option of a causal "
                             "model; a masked model sees its whole input")
        if first_target != 1:  # score targets[:, f - 1:] only, as a causal model does
            targets = targets.clone()
            targets[:, :first_target - 1] = model.trunk.padding_idx
        return masked_energy_pass(model, src_tokens, targets, candidates,
                                  num_samples=num_samples, backend=backend,
                                  sample_keys=sample_keys)
    return causal_energy_pass(model, src_tokens, candidates, targets=targets,
                              num_samples=num_samples, segment_ids=segment_ids,
                              backend=backend, sample_keys=sample_keys,
                              first_target=first_target)
