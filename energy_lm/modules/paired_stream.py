"""The candidate stream of a residual energy-based LM (docs/methods.md sections 4 and 6).

A paired forward has two stages that share one `PairedStream`:

1. record: the model runs its ordinary forward pass on the data tokens; every
   `SelfAttention` layer stores its data queries, keys and values (with their autograd
   graph: EBM gradients reach the trunk through both streams).
2. candidates: candidate tokens (a data token to be scored, or a sample of the LM drawn
   from stage 1's logits) run through the same layers; each layer attends, through
   `energy_lm.kernels.paired_attention`, to the data keys/values its position may see
   and to its own key.

Candidates never change the data stream, so stage 1 is exactly the model's usual forward.
Activation checkpointing re-runs layers without a graph during the forward, so the
recorded keys/values would carry no gradient: models refuse a paired forward then.
"""

from typing import Dict, Optional, Tuple

from torch import Tensor, nn

RECORD, CANDIDATES = "record", "candidates"


class PairedStream:
    """What the attention layers need to serve candidates, for one batch.

    cand_pos (B, M) is set before stage 2; segment_ids and key_padding_mask (B, N) are
    the data stream's.
    """

    def __init__(self, segment_ids: Optional[Tensor] = None,
                 key_padding_mask: Optional[Tensor] = None, backend: str = "auto"):
        self.mode = RECORD
        self.segment_ids = segment_ids
        self.key_padding_mask = key_padding_mask
        self.backend = backend
        self.cand_pos: Optional[Tensor] = None
        self.cache: Dict[nn.Module, Tuple[Tensor, Tensor, Tensor]] = {}
        # what an attention backend builds once per batch and every layer reuses (flex's
        # BlockMask); cleared when the candidates change
        self.mask_cache: dict = {}

    def record(self, layer: nn.Module, q: Tensor, k: Tensor, v: Tensor) -> None:
        self.cache[layer] = (q, k, v)  # each (B, H, N, D)

    def data_qkv(self, layer: nn.Module) -> Tuple[Tensor, Tensor, Tensor]:
        if layer not in self.cache:
            raise RuntimeError("candidate stream: this layer saw no data stream; run the "
                               "model's forward on the data tokens first (stage 1)")
        return self.cache[layer]

    def start_candidates(self, cand_pos: Tensor) -> None:
        if not self.cache:
            raise RuntimeError("candidate stream: no data stream was recorded")
        self.mode = CANDIDATES
        self.cand_pos = cand_pos
        self.mask_cache = {}
