"""What a fairseq model of ours feeds its layers and what its head computes, as plain
matrices, for an exporter to fold into a stock class: the input rows (scale and L2 norm
folded), the head's rows (a CLAP head's beta * normalize(E), a linear or tied head), the
fresh head energy-lm-add-head would give a headless model, and head rows that give a token
probability 0 behind a LayerNorm (GPT-2 has no head bias)."""

from typing import List, Optional, Tuple

import torch.nn.functional as F
from torch import Tensor

from energy_lm.hf.errors import BridgeError

def input_rows(trunk, args) -> Tensor:
    """The rows the trunk adds to its positions: scale * (normalised) embedding."""
    weight = trunk.embed_tokens.weight.detach()
    if str(getattr(args, "embed_norm", "none")) == "l2":
        weight = F.normalize(weight, dim=-1)
    if getattr(trunk.embed_tokens, "zero_index", None) is not None:
        weight = weight.clone()
        weight[trunk.embed_tokens.zero_index] = 0.0
    return weight * trunk.embed_scale if hasattr(trunk, "embed_scale") else weight


def fresh_head_rows(trunk, args) -> Tensor:
    """energy-lm-add-head's new head: the input embedding rows as the trunk saw them
    (L2-normalised when the model normalises them), no scale, no bias."""
    weight = trunk.embed_tokens.weight.detach()
    return F.normalize(weight, dim=-1) if str(getattr(args, "embed_norm", "none")) == "l2" \
        else weight.clone()


def output_rows(head) -> Tuple[Tensor, Optional[Tensor]]:
    """(W, bias) with logits = features @ W.T + bias, for a tied/untied Linear or a CLAP head."""
    from energy_lm.modules.clap import ClapHead

    if isinstance(head, ClapHead):
        return (head.beta.detach() * F.normalize(head.weight.detach(), dim=-1)), None
    return head.weight.detach(), getattr(head, "bias", None)


# the logit of a token the dictionary has no row for: exp(-1e4 - max logit) is 0 in
# float32 and float64 alike
ABSENT_LOGIT = -1e4


def absent_head_rows(norm_weight: Tensor, norm_bias: Tensor, rows: int) -> Tensor:
    """Head rows w whose logit after the final LayerNorm is ABSENT_LOGIT whatever the
    input: with w_i = c / g_i, (g * n + b) . w = c * (sum n_i + sum b_i / g_i), and a
    LayerNorm's n sums to 0, so the logit is c * sum(b_i / g_i)."""
    g, b = norm_weight.double(), norm_bias.double()
    total = float((b / g).sum()) if bool((g != 0).all()) else 0.0
    if not abs(total) > 1e-6 * float((b / g).abs().sum()):
        raise BridgeError("the final LayerNorm leaves no direction with a constant logit "
                          "(a zero weight, or sum(bias / weight) = 0): the BPE tokens without a "
                          "dictionary row cannot be given probability 0")
    row = (ABSENT_LOGIT / total) / g
    return row.to(norm_weight.dtype).expand(rows, -1).clone()


def trunk_refusals(trunk, args, mode: str) -> List[str]:
    """What no rotary stock class (Llama, Qwen2, StableLM, GPT-NeoX) represents, whatever
    the family: post-norm layers, a width projection, an embedding norm, a handicapped
    proposal, a fresh head for a headless model."""
    found = []
    if not args.decoder_normalize_before:
        found.append("post-norm layers")
    if trunk.project_in_dim is not None or trunk.project_out_dim is not None:
        found.append("a projection between the embedding width and the layers' width")
    if trunk.layernorm_embedding is not None:
        found.append("an embedding norm (--layernorm-embedding)")
    if float(getattr(args, "proposal_uniform_mix", 0.0) or 0.0):
        found.append("--proposal-uniform-mix (a handicapped proposal, for tests)")
    if mode == "add_head":
        found.append("--mode add_head (a CWT model of this architecture; not yet)")
    return found
