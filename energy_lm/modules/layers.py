"""fairseq's transformer layers with `SelfAttention` in place of `MultiheadAttention`.

Everything else (feed-forward, layer norms, residuals, parameter names) is fairseq's, so
a state dict moves between stock and energy_lm layers unchanged.
"""

from fairseq.distributed import fsdp_wrap
from fairseq.modules.checkpoint_activations import checkpoint_wrapper
from fairseq.modules.transformer_layer import (
    TransformerDecoderLayerBase,
    TransformerEncoderLayerBase,
)
from torch import nn

from energy_lm.modules.attention import AttentionPattern, SelfAttention


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
    def build_self_attention(self, embed_dim, cfg, add_bias_kv=False, add_zero_attn=False):
        if add_bias_kv or add_zero_attn or cfg.cross_self_attention:
            raise ValueError("energy_lm decoder layers support plain self-attention only")
        return SelfAttention(
            embed_dim,
            cfg.decoder.attention_heads,
            dropout=cfg.attention_dropout,
            self_attention=True,
            q_noise=self.quant_noise,
            qn_block_size=self.quant_noise_block_size,
        )


def set_layer_norm_eps(module: nn.Module, eps: float) -> None:
    """Give every layer norm inside `module` this eps: fairseq builds them all with its
    1e-5, and a model imported from elsewhere needs its own (1e-12 in BERT-style
    configs: a 6.8e-4 difference in log-probs at 1e-6 vs 1e-5, measured)."""
    for sub in module.modules():
        if isinstance(sub, nn.LayerNorm):
            sub.eps = eps


def wrap_layer(layer: nn.Module, cfg, pattern: AttentionPattern) -> nn.Module:
    """Attach the shared pattern, then apply fairseq's activation checkpointing and FSDP
    wrapping exactly as its own `build_*_layer` methods do."""
    layer.self_attn.pattern = pattern
    checkpoint = cfg.checkpoint_activations
    if checkpoint:
        layer = checkpoint_wrapper(layer, offload_to_cpu=cfg.offload_activations)
    # as in fairseq: a checkpointed layer is always FSDP-wrapped, whatever its size
    return fsdp_wrap(layer, min_num_params=cfg.min_params_to_wrap if not checkpoint else 0)
