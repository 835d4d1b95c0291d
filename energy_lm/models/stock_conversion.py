"""Continue a stock fairseq checkpoint in an energy_lm architecture.

A stock `transformer_lm` checkpoint loads as it is into the bare `transformer_lm_energy`
given the stock run's size flags, and a stock `roberta` checkpoint into `roberta_energy`:
same parameters, same forward; the energy head starts at zero (E = 0, so the ELM is the
LM) and the LM loss of the first update is the stock model's (tested). Two changes
cannot be a pure load; for them the checkpoint is converted to the closest equivalent,
with one warning saying what must be retrained:

- positions -> ALiBi (`--alibi`): the stock position table (learned or sinusoidal) is
  dropped; attention must learn to use the ALiBi bias instead;
- a softmax head -> a CLAP head (`--clap-head`): the stock head's own parameters (an
  untied output projection; RoBERTa's dense + layer norm + bias) are dropped and beta
  starts at its initial value; the head is the (normalised) input embedding, so the
  head must be retrained, and with `--embed-norm l2` (the CLAP default) the trunk's
  input changes too.

The norm placement is not converted: stock `transformer_lm` is post-norm, the
`transformer_lm_*` presets pre-norm, so a stock LM continues under the bare family name
(plus `--alibi causal` / `--clap-head` for the conversions above).
"""

import logging
from typing import Dict, List

from torch import Tensor, nn

from energy_lm.modules.clap import ClapHead

logger = logging.getLogger(__name__)

# the parameters of a stock softmax head, per family (relative to the model)
_STOCK_HEAD_KEYS = ("decoder.output_projection.weight", "encoder.lm_head.dense.",
                    "encoder.lm_head.layer_norm.", "encoder.lm_head.bias")


def _untied(state_dict: Dict[str, Tensor], key: str, prefix: str) -> bool:
    """A stock LM's own output projection (not a copy of the input embedding): a CLAP
    head is tied, so loading it would overwrite the embedding."""
    embed = state_dict.get(prefix + "decoder.embed_tokens.weight")
    return key == prefix + "decoder.output_projection.weight" and embed is not None and \
        not (embed.shape == state_dict[key].shape and bool((embed == state_dict[key]).all()))


def is_stock_checkpoint(state_dict: Dict[str, Tensor], prefix: str) -> bool:
    """Written by a stock fairseq model: none of the energy_lm-only tensors."""
    return not any(key.startswith(prefix + "energy_head.") or
                   key == prefix + "dictionary_fingerprint" for key in state_dict)


def convert_stock_checkpoint(state_dict: Dict[str, Tensor], prefix: str, model: nn.Module,
                             trunk: nn.Module) -> List[str]:
    """Drop or initialise what the conversions above change; returns what was converted."""
    own = model.state_dict()
    converted = []
    if getattr(trunk, "embed_positions", None) is None:
        dropped = [key for key in state_dict
                   if key.startswith(prefix) and ".embed_positions." in key]
        for key in dropped:
            del state_dict[key]
        if dropped:
            converted.append("dropped the position table (ALiBi replaces it: attention "
                             "must be retrained to use the bias)")
    clap = [name for name, module in model.named_modules() if isinstance(module, ClapHead)]
    if clap:
        dropped = [key for key in state_dict if key.startswith(prefix) and
                   key[len(prefix):].startswith(_STOCK_HEAD_KEYS) and
                   (key[len(prefix):] not in own or _untied(state_dict, key, prefix))]
        for key in dropped:
            if key[len(prefix):] in own:  # the tied head's weight is the embedding
                state_dict[key] = state_dict[prefix + "decoder.embed_tokens.weight"].clone()
            else:
                del state_dict[key]
        for name in clap:
            state_dict.setdefault(prefix + name + ".beta", own[name + ".beta"].clone())
        if dropped:
            converted.append("replaced the softmax head by a CLAP head (the tied, "
                             "normalised input embedding, beta = its initial value: the "
                             "head must be retrained)")
    return converted


def adapt_stock_checkpoint(state_dict: Dict[str, Tensor], prefix: str, model: nn.Module,
                           trunk: nn.Module) -> None:
    if not is_stock_checkpoint(state_dict, prefix):
        return
    converted = convert_stock_checkpoint(state_dict, prefix, model, trunk)
    if converted:
        logger.warning("a stock fairseq checkpoint converted to %s: %s; fine-tune before "
                       "comparing it with the stock model", type(model).__name__,
                       "; ".join(converted))
