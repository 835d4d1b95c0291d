"""fairseq's transformer layers with `SelfAttention` in place of `MultiheadAttention`.

Everything else (feed-forward, layer norms, residuals, parameter names) is fairseq's, so
a state dict moves between stock and energy_lm layers unchanged. The decoder layer
takes a `LayerShape` for the architecture of today's causal LMs (grouped heads, biases
off, RMSNorm, a gated FFN, GPT-NeoX's parallel residual); its defaults are fairseq's
layer.
"""

from dataclasses import dataclass
from typing import Optional

from fairseq import utils
from fairseq.distributed import fsdp_wrap
from fairseq.modules.checkpoint_activations import checkpoint_wrapper
from fairseq.modules.quant_noise import quant_noise
from fairseq.modules.transformer_layer import (
    TransformerDecoderLayerBase,
    TransformerEncoderLayerBase,
)
from torch import Tensor, nn

from energy_lm.modules.attention import AttentionPattern, SelfAttention
from energy_lm.modules.gated_ffn import GatedProjection, identity
from energy_lm.modules.rms_norm import build_norm
from energy_lm.modules.rotary import Rotary

GATE_ACTIVATIONS = {"silu": "swish"}  # --gated-ffn -> fairseq's activation name


@dataclass(frozen=True)
class LayerShape:
    """What a decoder layer is made of, beyond fairseq's TransformerConfig."""
    norm: str = "layer"             # "layer" (fairseq's LayerNorm) or "rms"
    eps: float = 1e-5               # of every norm
    kv_heads: int = 0               # 0: as many as the query heads
    qkv_bias: bool = True
    out_bias: bool = True
    ffn_bias: bool = True
    gated_ffn: str = "none"         # "silu": fc1 = silu(gate x) * up x (SwiGLU)
    parallel_residual: bool = False  # x + attn(ln1 x) + ffn(ln2 x) (GPT-NeoX)


class EncoderLayer(TransformerEncoderLayerBase):
    def build_self_attention(self, embed_dim, cfg):
        return SelfAttention(
            embed_dim,
            cfg.encoder.attention_heads,
            dropout=cfg.attention_dropout,
            self_attention=True,
            q_noise=self.quant_noise,
            qn_block_size=self.quant_noise_block_size,
        )


class DecoderLayer(TransformerDecoderLayerBase):
    def __init__(self, cfg, no_encoder_attn=False, shape: LayerShape = LayerShape()):
        # read by the build_* hooks that fairseq's __init__ calls
        object.__setattr__(self, "shape", shape)
        super().__init__(cfg, no_encoder_attn)
        if shape.norm != "layer":
            self.self_attn_layer_norm = build_norm(shape.norm, self.embed_dim, shape.eps)
            self.final_layer_norm = build_norm(shape.norm, self.embed_dim, shape.eps)
        if shape.gated_ffn != "none":  # the activation lives in fc1
            self.activation_fn = identity
        if shape.parallel_residual and not self.normalize_before:
            raise ValueError("--parallel-residual needs pre-norm layers "
                             "(--decoder-normalize-before)")

    def build_self_attention(self, embed_dim, cfg, add_bias_kv=False, add_zero_attn=False):
        if add_bias_kv or add_zero_attn or cfg.cross_self_attention:
            raise ValueError("energy_lm decoder layers support plain self-attention only")
        return SelfAttention(
            embed_dim,
            cfg.decoder.attention_heads,
            kv_heads=self.shape.kv_heads or None,
            qkv_bias=self.shape.qkv_bias,
            out_bias=self.shape.out_bias,
            dropout=cfg.attention_dropout,
            self_attention=True,
            q_noise=self.quant_noise,
            qn_block_size=self.quant_noise_block_size,
        )

    def build_fc1(self, input_dim, output_dim, q_noise, qn_block_size):
        if self.shape.gated_ffn == "none":
            return self._linear(input_dim, output_dim, q_noise, qn_block_size)
        if q_noise:
            raise ValueError("--quant-noise-pq has no gated FFN (--gated-ffn)")
        activation = utils.get_activation_fn(GATE_ACTIVATIONS[self.shape.gated_ffn])()
        return GatedProjection(input_dim, output_dim, activation, bias=self.shape.ffn_bias)

    def build_fc2(self, input_dim, output_dim, q_noise, qn_block_size):
        return self._linear(input_dim, output_dim, q_noise, qn_block_size)

    def _linear(self, input_dim, output_dim, q_noise, qn_block_size):
        # fairseq's fc1/fc2, with the bias optional
        return quant_noise(nn.Linear(input_dim, output_dim, bias=self.shape.ffn_bias), q_noise,
                           qn_block_size)

    def forward(self, x: Tensor, encoder_out: Optional[Tensor] = None,
                encoder_padding_mask: Optional[Tensor] = None, incremental_state=None,
                prev_self_attn_state=None, prev_attn_state=None,
                self_attn_mask: Optional[Tensor] = None,
                self_attn_padding_mask: Optional[Tensor] = None,
                need_attn: bool = False, need_head_weights: bool = False):
        if not self.shape.parallel_residual:
            return super().forward(x, encoder_out, encoder_padding_mask, incremental_state,
                                   prev_self_attn_state, prev_attn_state, self_attn_mask,
                                   self_attn_padding_mask, need_attn, need_head_weights)
        # GPT-NeoX: both branches read the layer's input, each through its own norm
        if encoder_out is not None or prev_self_attn_state is not None:
            raise ValueError("a parallel-residual layer has no encoder attention and no "
                             "prev_self_attn_state")
        attn, _ = self.self_attn(query=self.self_attn_layer_norm(x), key=None, value=None,
                                 key_padding_mask=self_attn_padding_mask,
                                 incremental_state=incremental_state, need_weights=False,
                                 attn_mask=self_attn_mask)
        ffn = self.activation_fn(self.fc1(self.final_layer_norm(x)))
        ffn = self.fc2(self.activation_dropout_module(ffn))
        # summed in transformers' order (ffn + attn + x): an import's float32 log-probs
        # then match GPT-NeoX's to rounding
        return self.dropout_module(ffn) + self.dropout_module(attn) + x, None, None


def set_layer_norm_eps(module: nn.Module, eps: float) -> None:
    """Give every layer norm inside `module` this eps: fairseq builds them all with its
    1e-5, and a model imported from elsewhere needs its own (1e-12 in BERT-style
    configs: a 6.8e-4 difference in log-probs at 1e-6 vs 1e-5, measured)."""
    for sub in module.modules():
        if isinstance(sub, nn.LayerNorm):
            sub.eps = eps


def wrap_layer(layer: nn.Module, cfg, pattern: AttentionPattern,
               rotary: Optional[Rotary] = None) -> nn.Module:
    """Attach the shared pattern (and rotary embedding), then apply fairseq's activation
    checkpointing and FSDP wrapping exactly as its own `build_*_layer` methods do."""
    layer.self_attn.pattern = pattern
    if rotary is not None:
        layer.self_attn.rotary = rotary
    checkpoint = cfg.checkpoint_activations
    if checkpoint:
        layer = checkpoint_wrapper(layer, offload_to_cpu=cfg.offload_activations)
    # as in fairseq: a checkpointed layer is always FSDP-wrapped, whatever its size
    return fsdp_wrap(layer, min_num_params=cfg.min_params_to_wrap if not checkpoint else 0)
