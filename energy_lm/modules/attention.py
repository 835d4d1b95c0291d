"""Self-attention through `scaled_dot_product_attention`, with ALiBi, causal, padding
and packed-document masks.

`AttentionPattern` says which keys a query may see and with what bias; one instance is
shared by every layer of a model, so the fp32 ALiBi bias is built once per length and
reused. `SelfAttention` is a drop-in replacement for fairseq's `MultiheadAttention`
(same parameter names, same incremental-decoding buffers) whose forward calls SDPA.
"""

from typing import Dict, Optional, Tuple

import torch
from fairseq.modules import MultiheadAttention
from fairseq.modules.quant_noise import quant_noise
from torch import Tensor, nn

from energy_lm.kernels import Alibi, PairedLayout, paired_attention
from energy_lm.kernels.alibi import alibi_bias, alibi_slopes, check_alibi_mode
from energy_lm.kernels.sdpa import attention
from energy_lm.kernels.visibility import position_visible
from energy_lm.modules.paired_pass import CandidateStage, DataStage, current_stage
from energy_lm.modules.rotary import Rotary

_MAX_CACHED_MASKS = 8


class AttentionPattern(nn.Module):
    """Visibility and bias of query i on key j, for one model.

    Queries are the last `tq` of `tk` positions (tq == tk for a full pass, tq == 1 for
    one incremental decoding step). `mask()` returns:
      - None: no mask (`is_causal` tells SDPA to apply its own causal mask);
      - a bool tensor (True = may attend) when there is no bias;
      - an fp32 additive tensor (-inf = may not attend) when ALiBi is on.
    Shapes broadcast to (B, H, tq, tk): the bias is (1, H, tq, tk), never repeated over B.
    """

    def __init__(self, num_heads: int, causal: bool, alibi: str = "none"):
        super().__init__()
        check_alibi_mode(alibi, causal)
        self.num_heads = num_heads
        self.causal = causal
        self.alibi = alibi
        self.register_buffer(
            "slopes", alibi_slopes(num_heads) if alibi != "none" else None, persistent=False
        )
        self._static_cache: Dict[Tuple[int, int, torch.device], Optional[Tensor]] = {}

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, causal={self.causal}, alibi={self.alibi}"

    def paired_layout(self, cand_pos: Tensor, num_data: int, segment_ids: Optional[Tensor],
                      key_padding_mask: Optional[Tensor]) -> PairedLayout:
        """The validated layout of one candidate stage of this model's paired pass."""
        alibi = Alibi(self.slopes, self.alibi) if self.alibi != "none" else None
        return PairedLayout.build(cand_pos, num_data, causal=self.causal, alibi=alibi,
                                  segment_ids=segment_ids, key_padding_mask=key_padding_mask)

    def _static_mask(self, tq: int, tk: int, device: torch.device) -> Optional[Tensor]:
        """The batch-independent part (causal + ALiBi), cached per (tq, tk, device)."""
        key = (tq, tk, device)
        if key in self._static_cache:
            return self._static_cache[key]
        k_pos = torch.arange(tk, device=device)
        q_pos = k_pos[tk - tq :]
        visible = (position_visible(q_pos[:, None], k_pos[None, :], False, True)
                   if self.causal else None)  # (tq, tk)
        if self.alibi != "none":
            mask = alibi_bias(self.slopes, q_pos, k_pos, self.alibi)[None]  # (1, H, tq, tk)
            if visible is not None:
                mask = mask.masked_fill(~visible, float("-inf"))
        elif visible is not None and not visible.all():
            mask = visible[None, None]  # (1, 1, tq, tk) bool
        else:
            mask = None
        if len(self._static_cache) >= _MAX_CACHED_MASKS:
            self._static_cache.clear()
        self._static_cache[key] = mask
        return mask

    def mask(
        self,
        tq: int,
        tk: int,
        device: torch.device,
        segment_ids: Optional[Tensor] = None,
        key_padding_mask: Optional[Tensor] = None,
    ) -> Tuple[Optional[Tensor], bool]:
        """Return (mask, is_causal) for SDPA; see the class docstring.

        segment_ids: (B, tk) int, packed documents (attention stays inside a document).
        key_padding_mask: (B, tk) bool, True = padding.
        """
        static = self._static_mask(tq, tk, device)
        if segment_ids is None and key_padding_mask is None:
            if static is not None and static.dtype == torch.bool and tq == tk:
                return None, True  # plain causal: let SDPA pick its fastest kernel
            return static, False
        hidden = torch.zeros(1, 1, 1, tk, dtype=torch.bool, device=device)
        if key_padding_mask is not None:
            hidden = hidden | key_padding_mask.bool()[:, None, None, :]  # (B, 1, 1, tk)
        if segment_ids is not None:
            seg_k = segment_ids[:, None, None, :]  # (B, 1, 1, tk)
            seg_q = segment_ids[:, None, tk - tq :, None]  # (B, 1, tq, 1)
            hidden = hidden | (seg_q != seg_k)  # (B, 1, tq, tk)
        if static is None:
            return ~hidden, False
        if static.dtype == torch.bool:
            return static & ~hidden, False
        return static.masked_fill(hidden, float("-inf")), False


class SelfAttention(MultiheadAttention):
    """fairseq `MultiheadAttention` (self-attention only) computed with SDPA.

    Keeps the parent's parameters (q_proj, k_proj, v_proj, out_proj) and its incremental
    state format (prev_key/prev_value of shape (B, H, S, D)), so checkpoints, beam search
    and `reorder_incremental_state` work unchanged. `pattern` must be set by the model.

    `attn_mask`, when given, is a complete mask from `AttentionPattern.mask` (the
    decoder passes one for packed documents); otherwise the pattern builds it.
    Attention weights are never materialised, so `need_weights` returns None.

    Inside a paired pass built for its model the layer records its data
    queries/keys/values, then serves the candidate stream from them
    (`energy_lm.modules.paired_pass`).

    Beyond fairseq's: `kv_heads` < num_heads (grouped-query attention: k_proj, v_proj
    project to kv_heads heads, each shared by num_heads / kv_heads query heads and never
    repeated in memory), the biases of q/k/v and of out_proj on or off, and `rotary`
    (a model's shared `Rotary`, set like `pattern`; None without rotary positions).
    """

    pattern: AttentionPattern
    rotary: Optional[Rotary]  # set to None in __init__: a class default would hide the module

    def __init__(self, embed_dim: int, num_heads: int, *, kv_heads: Optional[int] = None,
                 qkv_bias: bool = True, out_bias: bool = True, q_noise: float = 0.0,
                 qn_block_size: int = 8, **kwargs):
        super().__init__(embed_dim, num_heads, q_noise=q_noise, qn_block_size=qn_block_size,
                         **kwargs)
        self.rotary = None
        self.kv_heads = kv_heads or num_heads
        if num_heads % self.kv_heads:
            raise ValueError(f"--kv-heads {self.kv_heads} must divide the {num_heads} "
                             f"attention heads")
        kv_dim = self.kv_heads * self.head_dim
        rebuilt = kv_dim != embed_dim or not qkv_bias or not out_bias
        if kv_dim != embed_dim or not qkv_bias:
            def linear(out_dim: int, bias: bool) -> nn.Module:
                return quant_noise(nn.Linear(embed_dim, out_dim, bias=bias), q_noise,
                                   qn_block_size)

            self.q_proj = linear(embed_dim, qkv_bias)
            self.k_proj = linear(kv_dim, qkv_bias)
            self.v_proj = linear(kv_dim, qkv_bias)
        if not out_bias:
            self.out_proj = quant_noise(nn.Linear(embed_dim, embed_dim, bias=False), q_noise,
                                        qn_block_size)
        if rebuilt:  # fairseq's initialisation of the rebuilt projections (only then: a
            # fairseq-shaped layer draws its weights exactly as before)
            self.reset_parameters()

    def extra_repr(self) -> str:
        return f"kv_heads={self.kv_heads}" if self.kv_heads != self.num_heads else ""

    def forward(
        self,
        query: Tensor,
        key: Optional[Tensor],
        value: Optional[Tensor],
        key_padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        need_weights: bool = True,
        static_kv: bool = False,
        attn_mask: Optional[Tensor] = None,
        before_softmax: bool = False,
        need_head_weights: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        if need_head_weights or before_softmax or static_kv:
            raise NotImplementedError(
                "energy_lm SelfAttention does not return attention weights or scores"
            )
        tq, bsz, embed_dim = query.size()  # (T, B, C)
        head_dim = self.head_dim

        def split_heads(x: Tensor, heads: int) -> Tensor:  # (T, B, h D) -> (B, h, T, D)
            return x.view(x.size(0), bsz, heads, head_dim).permute(1, 2, 0, 3)

        q = split_heads(self.q_proj(query), self.num_heads)
        k = split_heads(self.k_proj(query), self.kv_heads)
        v = split_heads(self.v_proj(query), self.kv_heads)

        stage = current_stage(self.pattern) if incremental_state is None else None
        saved = self._get_input_buffer(incremental_state) if incremental_state is not None else {}
        if self.rotary is not None:
            if isinstance(stage, CandidateStage):
                positions = stage.rotary_pos  # (B, M), each <= N (validated by the layout)
                bound = stage.layout.num_data + 1
            else:  # this call's tokens follow the cached ones (row index, padding counted)
                start = saved["prev_key"].size(2) if "prev_key" in saved else 0
                positions = torch.arange(start, start + tq, device=q.device)
                bound = start + tq
            q, k = self.rotary(q, positions, bound), self.rotary(k, positions, bound)

        if isinstance(stage, CandidateStage):  # query is the candidate stream (M, B, C)
            stage.keep(self, k, v)
            out_c = self._candidate_attention(q, k, v, stage)  # (B, H, M, D)
            out_c = out_c.permute(2, 0, 1, 3).reshape(tq, bsz, embed_dim)  # (M, B, C)
            return self.out_proj(out_c), None
        if isinstance(stage, DataStage):
            stage.record(self, q, k, v)

        if incremental_state is not None:
            if "prev_key" in saved:
                k = torch.cat([saved["prev_key"], k], dim=2)  # (B, H, S, D)
                v = torch.cat([saved["prev_value"], v], dim=2)
                prev_pad = saved.get("prev_key_padding_mask")
                if prev_pad is not None or key_padding_mask is not None:
                    prev_pad = prev_pad if prev_pad is not None else query.new_zeros(
                        bsz, k.size(2) - tq, dtype=torch.bool)
                    now_pad = key_padding_mask if key_padding_mask is not None else query.new_zeros(
                        bsz, tq, dtype=torch.bool)
                    key_padding_mask = torch.cat([prev_pad.bool(), now_pad.bool()], dim=1)
            saved["prev_key"], saved["prev_value"] = k, v
            saved["prev_key_padding_mask"] = key_padding_mask
            self._set_input_buffer(incremental_state, saved)

        tk = k.size(2)
        if attn_mask is not None:
            mask, is_causal = attn_mask, False
            if key_padding_mask is not None:
                pad = key_padding_mask.bool()[:, None, None, :]
                mask = mask & ~pad if mask.dtype == torch.bool else mask.masked_fill(pad, float("-inf"))
        else:
            mask, is_causal = self.pattern.mask(tq, tk, q.device, key_padding_mask=key_padding_mask)

        dropout_p = self._dropout_p()
        out = attention(q, k, v, mask, is_causal, dropout_p)  # (B, H, T, D)
        out = out.permute(2, 0, 1, 3).reshape(tq, bsz, embed_dim)  # (T, B, C)
        return self.out_proj(out), None

    def _dropout_p(self) -> float:
        return self.dropout_module.p if (
            self.training or self.dropout_module.apply_during_inference) else 0.0

    def _candidate_attention(self, q_c: Tensor, k_c: Tensor, v_c: Tensor,
                             stage: CandidateStage) -> Tensor:
        q, k, v = stage.data_qkv(self)
        _, out_c = paired_attention(q, k, v, q_c, k_c, v_c, stage.layout,
                                    backend=stage.paired.backend, dropout_p=self._dropout_p(),
                                    need_data_out=False)
        return out_c
