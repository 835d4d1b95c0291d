"""Causal transformer LM with a CLAP head and/or causal ALiBi, on fairseq's `transformer_lm`.

Registered as model `transformer_lm_energy`, with presets for each size (tiny/base/large):
  transformer_lm_clap_*       learned positions + CLAP head
  transformer_lm_alibi_*      causal ALiBi (no position embeddings) + tied softmax head
  transformer_lm_zero_clap_*  causal ALiBi + CLAP head
  transformer_lm_llama_*      Llama's trunk: rotary, RMSNorm, SwiGLU, grouped-query
                              attention, no biases (tiny/base)
The decoder accepts `segment_ids` (B, T) so that packed documents attend only within
themselves (`--task energy_language_modeling --document-attention`).
"""

import logging
import math
import os
from dataclasses import dataclass, field, make_dataclass
from typing import Optional

import torch
from fairseq.dataclass import ChoiceEnum
from fairseq.models import register_model
from fairseq.models.transformer import TransformerConfig, TransformerDecoder
from fairseq.models.transformer_lm import (
    DEFAULT_MAX_TARGET_POSITIONS,
    TransformerLanguageModel,
    TransformerLanguageModelConfig,
)
from fairseq.modules import LearnedPositionalEmbedding
from fairseq.utils import safe_getattr
from omegaconf import II
from torch import Tensor, nn

from energy_lm.inference.causal_pass import causal_energy_pass
from energy_lm.inference.hub import EnergyLMHubInterface
from energy_lm.inference.protocol import CAUSAL
from energy_lm.models.energy_model import EnergyModelMixin, attach_dictionary, check_task_length
from energy_lm.models.energy_options import (
    PRESET_SIZES,
    EnergyOptions,
    presets,
    resolve_energy_options,
)
from energy_lm.kernels.alibi import ALIBI_MAX_POSITIONS, DECODER_ALIBI_CHOICES
from energy_lm.modules.attention import AttentionPattern
from energy_lm.modules.candidate_embedding import embed_candidates
from energy_lm.modules.clap import ClapEmbedding, ClapHead
from energy_lm.modules.energy_head import EnergyHead
from energy_lm.modules.layers import (
    GATE_ACTIVATIONS,
    DecoderLayer,
    LayerShape,
    set_layer_norm_eps,
    wrap_layer,
)
from energy_lm.modules.rms_norm import build_norm
from energy_lm.modules.rotary import Rotary, rotary_dims

logger = logging.getLogger(__name__)

OUTPUT_MASK_CHOICES = ("none", "specials")
NORM_CHOICES = ("layer", "rms")
GATED_FFN_CHOICES = ("none", *GATE_ACTIVATIONS)
ATTENTION_BIAS_CHOICES = ("all", "qkv", "none")
# fairseq's symbols that no imported vocabulary has (`</s>` stands for the source's
# end-of-text token, so it is not among them); fairseq-preprocess pads a dictionary
# with `madeupwordNNNN` fillers
_UNUSED_SPECIALS = ("<s>", "<pad>", "<unk>")
_FILLER_PREFIX = "madeupword"


def unused_symbol_mask(dictionary) -> Tensor:
    """(V,) bool: True where `--output-mask specials` gives probability 0."""
    return torch.tensor([sym in _UNUSED_SPECIALS or sym.startswith(_FILLER_PREFIX)
                         for sym in dictionary.symbols])


@dataclass
class TransformerLMEnergyConfig(TransformerLanguageModelConfig, EnergyOptions):
    """fairseq's transformer_lm config with the shared energy_lm options
    (energy_lm.models.energy_options) and the LM family's own."""
    alibi: ChoiceEnum(DECODER_ALIBI_CHOICES) = field(
        default="none", metadata={"help": "causal ALiBi bias -m(i-j); replaces position "
                                          "embeddings"})
    output_mask: ChoiceEnum(OUTPUT_MASK_CHOICES) = field(
        default="none", metadata={"help": "specials: probability exactly 0 for every "
                                          "dictionary symbol that is not a token of the "
                                          "source vocabulary (<s>, <pad>, <unk>, the "
                                          "madeupword fillers), so that they are never "
                                          "proposed; what a model imported by "
                                          "energy-lm-from-hf needs to be exact"})
    proposal_uniform_mix: float = field(
        default=0.0, metadata={"help": "handicap the LM on purpose: q = (1 - m) softmax + m "
                                       "uniform (a known-answer test of the energy path; 0: off)"})
    # the architecture of today's causal LMs (Llama, Qwen2, GPT-NeoX, StableLM)
    rotary_fraction: float = field(
        default=0.0, metadata={"help": "rotary positions (RoPE, rotate-half) on this fraction "
                                       "of each head's dims (1: Llama, 0.25: Pythia); replaces "
                                       "position embeddings; 0 (default): off"})
    rotary_base: float = field(
        default=10000.0, metadata={"help": "rotary base (theta; default 10000)"})
    norm: ChoiceEnum(NORM_CHOICES) = field(
        default="layer", metadata={"help": "the trunk's norms: layer (fairseq's LayerNorm, "
                                           "default) or rms (RMSNorm, no bias); eps: "
                                           "--layer-norm-eps"})
    gated_ffn: ChoiceEnum(GATED_FFN_CHOICES) = field(
        default="none", metadata={"help": "silu: a gated FFN fc2(silu(gate x) * up x) "
                                          "(SwiGLU; --activation-fn is then unused); none "
                                          "(default): fairseq's fc2(act(fc1 x))"})
    kv_heads: int = field(
        default=0, metadata={"help": "key/value heads, dividing --decoder-attention-heads "
                                     "(grouped-query attention); 0 (default): one per head"})
    attention_bias: ChoiceEnum(ATTENTION_BIAS_CHOICES) = field(
        default="all", metadata={"help": "biases of the attention projections: all (default, "
                                         "fairseq's), qkv (Qwen2: q, k, v only) or none"})
    no_ffn_bias: bool = field(
        default=False, metadata={"help": "no biases in the FFN's projections (Llama)"})
    parallel_residual: bool = field(
        default=False, metadata={"help": "x + attn(norm1 x) + ffn(norm2 x) (GPT-NeoX); needs "
                                         "pre-norm layers"})


class EnergyTransformerDecoder(TransformerDecoder):
    """fairseq's TransformerDecoder with SDPA self-attention, causal ALiBi, CLAP head and
    packed-document masks."""

    def __init__(self, args, dictionary, embed_tokens, no_encoder_attn=False):
        super().__init__(args, dictionary, embed_tokens, no_encoder_attn=no_encoder_attn)
        if isinstance(self.embed_positions, LearnedPositionalEmbedding):
            self.embed_positions = with_energy_position(self.embed_positions)
        set_layer_norm_eps(self, args.layer_norm_eps)
        if args.norm != "layer":  # the final norm (and an embedding norm) of that kind too
            for name in ("layer_norm", "layernorm_embedding"):
                if getattr(self, name, None) is not None:
                    setattr(self, name, build_norm(args.norm, self.embed_dim,
                                                   args.layer_norm_eps))
        # derived from the dictionary, not saved: a checkpoint loads into any build
        self.register_buffer("unused_symbols", unused_symbol_mask(dictionary)
                             if str(safe_getattr(args, "output_mask", "none")) == "specials"
                             else None,
                             persistent=False)

    def max_positions(self):
        if str(self.args.alibi) != "none":
            return ALIBI_MAX_POSITIONS
        return super().max_positions()

    def output_layer(self, features):
        """The head's logits; with --output-mask specials, the lowest finite value at the
        unused symbols (probability exactly 0 after a softmax, and no inf - inf = nan
        downstream); with --proposal-uniform-mix m, log((1 - m) softmax + m / V)
        (normalised log-probabilities, so every consumer of logits sees the mixture)."""
        logits = super().output_layer(features)
        if self.unused_symbols is not None:
            logits = logits.masked_fill(self.unused_symbols, torch.finfo(logits.dtype).min)
        mix = float(getattr(self.args, "proposal_uniform_mix", 0.0) or 0.0)
        if mix == 0.0:
            return logits
        log_q = torch.log_softmax(logits.float(), dim=-1) + math.log1p(-mix)
        uniform = math.log(mix / logits.size(-1))
        return torch.logaddexp(log_q, torch.full_like(log_q, uniform)).to(logits.dtype)

    def candidate_positions(self, cand_pos: Tensor, length: int) -> Tensor:
        """Position embeddings (B, M, C) of candidates at cand_pos (B, M), positions
        counted from the start of the row whatever the padding (p = length is the energy
        position of a block's last target)."""
        row = cand_pos.new_full((1, length + 1), self.padding_idx + 1)  # no padding
        table = self.embed_positions(row)[0]  # (length + 1, C)
        return table[cand_pos]

    # fairseq's base class calls the build_* hooks with its TransformerConfig, which
    # does not carry our fields; the legacy wrapper keeps the namespace in self.args.
    def build_decoder_layer(self, cfg, no_encoder_attn=False):
        cfg = TransformerConfig.from_namespace(cfg)
        if "attention_pattern" not in self._modules:  # first layer: one pattern for all
            self.attention_pattern = AttentionPattern(
                cfg.decoder.attention_heads, causal=True, alibi=str(self.args.alibi))
            fraction = float(self.args.rotary_fraction)
            self.rotary = (Rotary(cfg.decoder.embed_dim // cfg.decoder.attention_heads,
                                  fraction, self.args.rotary_base) if fraction else None)
        layer = DecoderLayer(cfg, no_encoder_attn, layer_shape(self.args))
        return wrap_layer(layer, cfg, self.attention_pattern, self.rotary)

    def build_output_projection(self, cfg, dictionary, embed_tokens):
        super().build_output_projection(cfg, dictionary, embed_tokens)
        if self.args.clap_head:
            self.output_projection = ClapHead(self.embed_tokens.weight, self.args.initial_beta,
                                             padding_idx=dictionary.pad())

    def forward(self, prev_output_tokens, encoder_out=None, incremental_state=None,
                features_only: bool = False, full_context_alignment: bool = False,
                alignment_layer: Optional[int] = None, alignment_heads: Optional[int] = None,
                src_lengths=None, return_all_hiddens: bool = False,
                segment_ids: Optional[Tensor] = None):
        """As fairseq's, plus `segment_ids` (B, T): keys of another segment are hidden."""
        # The document mask is built once here and reaches every layer as its
        # `self_attn_mask` argument (through `buffered_future_mask`), so activation
        # checkpointing recomputes with the same mask.
        self._document_mask = None
        if segment_ids is not None and incremental_state is None:
            t = prev_output_tokens.size(1)
            self._document_mask, _ = self.attention_pattern.mask(
                t, t, prev_output_tokens.device, segment_ids=segment_ids)
        try:
            return super().forward(
                prev_output_tokens, encoder_out=encoder_out, incremental_state=incremental_state,
                features_only=features_only, full_context_alignment=full_context_alignment,
                alignment_layer=alignment_layer, alignment_heads=alignment_heads,
                src_lengths=src_lengths, return_all_hiddens=return_all_hiddens)
        finally:
            self._document_mask = None

    def buffered_future_mask(self, tensor):
        # None lets SelfAttention build the causal (+ALiBi) mask from the shared pattern
        return getattr(self, "_document_mask", None)

    def candidate_features(self, prev_output_tokens, cand_tokens, cand_pos, pre_norm=False,
                           embed_pos: Optional[Tensor] = None):
        """Stage 2 of a paired forward (see energy_lm.models.energy_model): each candidate
        token (B, M) enters at its data position cand_pos (B, M), in the order fairseq's
        own forward embeds a token; returns the final states (B, M, C) (before the final
        norm with pre_norm, as the last of fairseq's `inner_states`). embed_pos (B, M),
        when given, is the position whose embedding a candidate gets, where cand_pos
        counts left padding (a cached sampler's batch of prompts) and the row does not."""
        positions = (None if self.embed_positions is None else self.candidate_positions(
            cand_pos if embed_pos is None else embed_pos, prev_output_tokens.size(1)))
        x = embed_candidates(self, cand_tokens, positions).transpose(0, 1)  # (M, B, C)
        for layer in self.layers:
            x, _, _ = layer(x, None, None, None, self_attn_mask=None, self_attn_padding_mask=None)
        x = x.transpose(0, 1)  # (B, M, C)
        return x if pre_norm else self.final_states(x)

    def final_states(self, x: Tensor) -> Tensor:
        """The last layer's output (B, M, C) -> the states the LM head reads, as fairseq's
        forward ends: the final norm, then the output projection of the width."""
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        if self.project_out_dim is not None:
            x = self.project_out_dim(x)
        return x


@register_model("transformer_lm_energy", dataclass=TransformerLMEnergyConfig)
class TransformerLMEnergyModel(EnergyModelMixin, TransformerLanguageModel):
    """Causal LM + CLAP head / causal ALiBi + energy head; see the module docstring for
    the presets."""

    energy_family = CAUSAL

    def __init__(self, decoder):
        super().__init__(decoder)
        kind = str(decoder.args.energy_head)
        # the seed head reads the states before the final norm (and before any output
        # projection): the trunk's own width
        dim = decoder.embed_dim if kind == "seed" else decoder.output_embed_dim
        self.energy_head = EnergyHead(dim, kind)
        self.register_format()

    def _trunk(self):
        return self.decoder

    def upgrade_older_format(self, state_dict, prefix: str) -> None:
        upgrade_energy_position(state_dict, prefix, self)

    def _head_modules(self):
        return [self.energy_head, self.decoder.output_projection]

    def score_candidates(self, tokens: Tensor, candidates: Tensor,
                         segment_ids: Optional[Tensor] = None, backend: str = "auto"):
        """A sequence scored at every position, with the candidates given.

        tokens: (B, T); candidates: (B, K, T), candidates[:, k, t] an alternative to
        tokens[:, t] given tokens[:, :t]. Returns (lprobs (B, T, V) with lprobs[:, t] =
        log q(. | tokens[:, :t]), the proposal of the token at t (position 0 has none: a
        uniform q), energy (B, T) = E(x_t | x_<t), cand_energy (B, K, T)). See
        energy_lm.inference.causal_pass for position 0 and the rich head.
        """
        out = causal_energy_pass(self, tokens, candidates, start=0, segment_ids=segment_ids,
                                 backend=backend)
        return torch.log_softmax(out.logits.float(), dim=-1), out.energy, out.cand_energy

    @classmethod
    def hub_models(cls):
        return {}

    @classmethod
    def from_pretrained(cls, model_name_or_path, checkpoint_file="model.pt",
                        data_name_or_path=".", **kwargs):
        """fairseq's loader, returning `energy_lm.inference.hub.EnergyLMHubInterface` (SIR sampling)."""
        from fairseq import hub_utils

        # an import's tokenizer (--bpe energy_hf_tokenizer) is the folder's tokenizer.json
        # wherever the folder now is (fairseq's hub finds vocab.json and merges.txt alike;
        # a checkpoint with another BPE ignores the setting)
        tokenizer = os.path.join(str(model_name_or_path), "tokenizer.json")
        if os.path.isfile(tokenizer):
            kwargs.setdefault("hf_tokenizer_json", tokenizer)
        x = hub_utils.from_pretrained(model_name_or_path, checkpoint_file, data_name_or_path,
                                      archive_map=cls.hub_models(), **kwargs)
        return EnergyLMHubInterface(x["args"], x["task"], x["models"])

    @classmethod
    def build_model(cls, args, task):
        transformer_lm_energy_architecture(args)
        if args.decoder_layers_to_keep:
            args.decoder_layers = len(args.decoder_layers_to_keep.split(","))
        if safe_getattr(args, "max_target_positions", None) is None:
            args.max_target_positions = safe_getattr(
                args, "tokens_per_sample", DEFAULT_MAX_TARGET_POSITIONS)
        if args.character_embeddings or args.adaptive_input or args.adaptive_softmax_cutoff:
            raise ValueError("transformer_lm_energy does not support character embeddings, "
                             "adaptive input or adaptive softmax")
        embed_tokens = cls.build_embedding(args, task.source_dictionary, args.decoder_input_dim)
        decoder = EnergyTransformerDecoder(
            args, task.target_dictionary, embed_tokens, no_encoder_attn=True)
        model = cls(decoder)
        check_task_length(model, task)
        attach_dictionary(model, task)
        return model

    @classmethod
    def build_embedding(cls, args, dictionary, embed_dim, path=None):
        if args.embed_norm == "none":
            return super().build_embedding(args, dictionary, embed_dim, path)
        embedding = ClapEmbedding(len(dictionary), embed_dim, dictionary.pad(),
                                  l2_normalize=args.embed_norm == "l2")
        nn.init.normal_(embedding.weight, mean=0.0, std=embed_dim ** -0.5)  # as fairseq's
        with torch.no_grad():
            embedding.weight[dictionary.pad()].zero_()
        return embedding


def with_energy_position(embed: LearnedPositionalEmbedding) -> LearnedPositionalEmbedding:
    """The learned table plus one row: the energy of a block's last target is read with
    that target as the input at position T, one past the LM's T positions (the LM's
    `max_positions()` is unchanged). The new row starts as fairseq starts a position."""
    grown = LearnedPositionalEmbedding(embed.num_embeddings + 1, embed.embedding_dim,
                                       embed.padding_idx)
    with torch.no_grad():
        grown.weight[:-1].copy_(embed.weight)
        nn.init.normal_(grown.weight[-1:], mean=0.0, std=embed.embedding_dim ** -0.5)
    grown.max_positions = embed.max_positions  # the LM's limit, not the table's size
    return grown


def upgrade_energy_position(state_dict, prefix: str, own: nn.Module) -> None:
    """A checkpoint written before the energy position existed (or by stock fairseq) has
    one row fewer: append a copy of its last position, a neighbour's starting point for
    the energy of each block's last target (trained by MonArc/NCE from there)."""
    key = prefix + "decoder.embed_positions.weight"
    embed = getattr(own.decoder, "embed_positions", None)
    if key not in state_dict or not isinstance(embed, LearnedPositionalEmbedding):
        return
    saved = state_dict[key]
    if saved.size(0) + 1 == embed.weight.size(0):
        state_dict[key] = torch.cat([saved, saved[-1:]], dim=0)
        logger.info("%s: added the energy position (row %d, a copy of the last learned "
                    "position)", key, saved.size(0))


def layer_shape(args) -> LayerShape:
    return LayerShape(norm=str(args.norm), eps=float(args.layer_norm_eps),
                      kv_heads=int(args.kv_heads),
                      qkv_bias=str(args.attention_bias) != "none",
                      out_bias=str(args.attention_bias) == "all",
                      ffn_bias=not args.no_ffn_bias, gated_ffn=str(args.gated_ffn),
                      parallel_residual=bool(args.parallel_residual))


def _check_architecture(args) -> None:
    """One line for each flag of the new architecture that does not combine."""
    heads = args.decoder_attention_heads
    if args.kv_heads < 0 or (args.kv_heads and heads % args.kv_heads):
        raise ValueError(f"--kv-heads {args.kv_heads} must divide --decoder-attention-heads "
                         f"{heads}")
    if args.rotary_fraction:
        if str(args.alibi) != "none":
            raise ValueError("--rotary-fraction and --alibi are two position encodings; "
                             "choose one")
        rotary_dims(args.decoder_embed_dim // heads, float(args.rotary_fraction))
        if not float(args.rotary_base) > 1.0:
            raise ValueError(f"--rotary-base must be > 1, got {args.rotary_base}")
    if args.parallel_residual and not args.decoder_normalize_before:
        raise ValueError("--parallel-residual needs pre-norm layers "
                         "(--decoder-normalize-before)")
    if str(args.gated_ffn) != "none" and safe_getattr(args, "quant_noise_pq", 0):
        raise ValueError("--quant-noise-pq does not apply to a gated FFN (--gated-ffn)")


def transformer_lm_energy_architecture(args):
    """Fill, derive and check every energy_lm field; fairseq's own fields keep the
    config's values (the bare name: stock transformer_lm's defaults)."""
    resolve_energy_options(args, TransformerLMEnergyConfig, causal=True)
    args.proposal_uniform_mix = float(args.proposal_uniform_mix or 0.0)
    if not 0.0 <= args.proposal_uniform_mix < 1.0:
        raise ValueError(f"--proposal-uniform-mix must be in [0, 1), got "
                         f"{args.proposal_uniform_mix}")
    _check_architecture(args)
    if args.rotary_fraction:  # rotary replaces position embeddings
        args.no_token_positional_embeddings = True
    if args.untied_head:
        args.share_decoder_input_output_embed = False
    if args.clap_head:  # a CLAP head is the input embedding, whatever the tying flag said
        args.share_decoder_input_output_embed = True
    # No base_lm_architecture: it forces pre-norm, and stock `transformer_lm` (whose
    # checkpoints the bare `transformer_lm_energy` must load) takes its dataclass
    # defaults as they are (post-norm); the presets set pre-norm in their own defaults.


# Presets (energy_lm.models.energy_options). fairseq-hydra-train fills a dataclass
# model's config from its dataclass defaults before any arch function could run, so for
# this family each preset is a model name with its own dataclass whose defaults are the
# preset's values; the command line reads the same defaults.
_GPT_STYLE = dict(  # pre-norm, GELU, learned positions, tied embeddings
    decoder_normalize_before=True, activation_fn="gelu", decoder_learned_pos=True,
    share_decoder_input_output_embed=True,
    decoder_input_dim=II("model.decoder_embed_dim"),
    decoder_output_dim=II("model.decoder_embed_dim"),
)


def _preset_config(class_name: str, values: dict) -> type:
    inherited = TransformerLMEnergyConfig.__dataclass_fields__
    fields = [(name, inherited[name].type, field(default=value, metadata=inherited[name].metadata))
              for name, value in values.items()]
    return make_dataclass(class_name, fields, bases=(TransformerLMEnergyConfig,))


# Llama's architecture (SmolLM's and Qwen2's small models alike): rotary positions on
# every dim, RMSNorm, SwiGLU, grouped-query attention (half as many key/value heads),
# no biases, no embedding scale, tied embeddings (as the small ones); the FFN width is
# 8/3 d rounded up to a multiple of 64, the gated FFN's usual size
_LLAMA_STYLE = dict(
    decoder_normalize_before=True, decoder_learned_pos=False,
    share_decoder_input_output_embed=True, no_scale_embedding=True,
    rotary_fraction=1.0, norm="rms", gated_ffn="silu", attention_bias="none",
    no_ffn_bias=True,
    decoder_input_dim=II("model.decoder_embed_dim"),
    decoder_output_dim=II("model.decoder_embed_dim"),
)
LLAMA_SIZES = ("tiny", "base")


def llama_presets():
    """(name, values) of the transformer_lm_llama_* presets."""
    for size in LLAMA_SIZES:
        layers, dim, _, heads = PRESET_SIZES[size]
        ffn = -(-8 * dim // 3 // 64) * 64
        yield f"transformer_lm_llama_{size}", dict(
            _LLAMA_STYLE, decoder_layers=layers, decoder_embed_dim=dim,
            decoder_ffn_embed_dim=ffn, decoder_attention_heads=heads, kv_heads=heads // 2)


def _register_presets():
    named = [(name, dict(_GPT_STYLE, **values))
             for name, values in presets("transformer_lm", "decoder", alibi_mode="causal")]
    for name, values in [*named, *llama_presets()]:
        stem = "".join(part.title() for part in name.split("_")).replace("Lm", "LM")
        # a subclass per preset: fairseq keeps a model's dataclass on its class
        model_cls = type(stem, (TransformerLMEnergyModel,), {"__module__": __name__})
        config = _preset_config(stem + "Config", values)
        register_model(name, dataclass=config)(model_cls)


_register_presets()
