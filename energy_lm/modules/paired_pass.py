"""The paired (data + candidates) forward of a residual energy-based LM
(docs/methods.md sections 4 and 6).

One frozen `PairedPass` describes one batch's paired forward: its masks, the attention
backend, the keys of the candidates' samples. It is built once where the pass starts
(`model.paired_pass`, called by `energy_lm.inference`'s energy passes) and runs in two stages, each
a `with` block:

    paired = model.paired_pass(src_tokens, segment_ids, backend=..., sample_keys=...)
    with paired.recording():                     # stage 1: fairseq's own forward
        features, _ = model(src_tokens, features_only=True)
    ...candidates from model.output_layer(features)...
    cand_features = model.candidate_features(paired, src_tokens, cand_tokens, cand_pos)

1. recording: every `SelfAttention` layer of the model stores its data queries, keys
   and values (with their autograd graph: EBM gradients reach the trunk through both
   streams). The data forward itself is unchanged.
2. candidates (`paired.candidates(cand_pos)`, entered by `candidate_features`): candidate
   tokens run through the same layers; each layer attends, through
   `energy_lm.kernels.paired_attention`, to the data keys/values its position may see and
   to its own key.

fairseq's layers call their self-attention with fairseq's arguments only, and copying
those layers to add one would fork fairseq; so a layer finds the stage it runs in through
a context variable that the `with` block sets and resets, and only when the pass was
built for its own model (`owner`). Nothing is stored on a shared module.
Activation checkpointing re-runs layers without a graph during the forward, so the
recorded keys/values would carry no gradient: models refuse a paired forward then.
"""

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional, Tuple, Union

from torch import Tensor, nn

from energy_lm.kernels.layout import PairedLayout
from energy_lm.sampling.keyed_random import SampleKeys

QKV = Tuple[Tensor, Tensor, Tensor]  # each (B, H, N, D)


@dataclass(frozen=True, eq=False)
class PairedPass:
    """One batch's paired forward (see the module docstring)."""
    owner: nn.Module                        # the AttentionPattern the model's layers share
    key_padding_mask: Tensor                # (B, N) bool, True = padding
    segment_ids: Optional[Tensor] = None    # (B, N) packed documents, else None
    backend: str = "auto"                   # energy_lm.kernels.paired_attention backend
    sample_keys: Optional[SampleKeys] = None  # keys of the sampled candidates, else torch RNG
    # filled by stage 1, read by stage 2; the object is frozen, this table is its log
    records: Dict[nn.Module, QKV] = field(default_factory=dict, repr=False)

    @contextmanager
    def recording(self) -> Iterator["DataStage"]:
        with _entered(DataStage(self)) as stage:
            yield stage

    @contextmanager
    def candidates(self, cand_pos: Tensor, keep_kv: bool = False,
                   rotary_pos: Optional[Tensor] = None) -> Iterator["CandidateStage"]:
        """cand_pos (B, M): the data position each candidate stands at. With keep_kv,
        every layer leaves the candidates' own keys and values in `stage.kept` (cached
        sampling appends the chosen one's to the data stream's cache). rotary_pos (B, M):
        the position a rotary model rotates each candidate at, where it is not cand_pos
        (a cache whose rows were rotated from their own first token, not the pad)."""
        if not self.records:
            raise RuntimeError("paired pass: no data stream was recorded; run the model's "
                               "forward inside `with paired.recording():` first")
        layout = self.owner.paired_layout(cand_pos, self.key_padding_mask.size(1),
                                          self.segment_ids, self.key_padding_mask)
        stage = CandidateStage(self, layout, kept={} if keep_kv else None,
                               rotary_pos=cand_pos if rotary_pos is None else rotary_pos)
        with _entered(stage):
            yield stage


@dataclass(frozen=True, eq=False)
class DataStage:
    paired: PairedPass

    def record(self, layer: nn.Module, q: Tensor, k: Tensor, v: Tensor) -> None:
        self.paired.records[layer] = (q, k, v)


@dataclass(frozen=True, eq=False)
class CandidateStage:
    paired: PairedPass
    # who sees whom (cand_pos (B, M), the pass's segments and padding, the model's causal
    # and ALiBi), validated once; the masks a backend derives from it are kept on it, so
    # every layer reuses what the first one built
    layout: PairedLayout
    # per layer, the candidates' own (k, v), each (B, H, M, D), when asked for; else None
    kept: Optional[Dict[nn.Module, Tuple[Tensor, Tensor]]] = field(default=None, repr=False)
    # (B, M) where a rotary model rotates the candidates: the position of the data token
    # each stands in for, counted as that row's data keys were rotated
    rotary_pos: Optional[Tensor] = field(default=None, repr=False)

    @property
    def cand_pos(self) -> Tensor:  # (B, M)
        return self.layout.cand_pos

    def data_qkv(self, layer: nn.Module) -> QKV:
        if layer not in self.paired.records:
            raise RuntimeError("paired pass: this layer saw no data stream; run the model's "
                               "forward on the data tokens first (stage 1)")
        return self.paired.records[layer]

    def keep(self, layer: nn.Module, k: Tensor, v: Tensor) -> None:
        if self.kept is not None:
            self.kept[layer] = (k, v)


Stage = Union[DataStage, CandidateStage]
_CURRENT: ContextVar[Optional[Stage]] = ContextVar("energy_lm_paired_stage", default=None)


@contextmanager
def _entered(stage: Stage) -> Iterator[Stage]:
    token = _CURRENT.set(stage)
    try:
        yield stage
    finally:
        _CURRENT.reset(token)


def current_stage(owner: nn.Module) -> Optional[Stage]:
    """The stage a layer of the model that shares `owner` runs in, or None outside a
    paired pass (or inside one built for another model)."""
    stage = _CURRENT.get()
    if stage is None or stage.paired.owner is not owner:
        return None
    return stage
