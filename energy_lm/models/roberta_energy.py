"""RoBERTa with a CLAP head and/or ALiBi (docs/methods.md sections 1-2).

Registered as model `roberta_energy`, with presets for each size (tiny/base/large):
  roberta_clap_*       learned positions + CLAP head
  roberta_alibi_*      ALiBi (no position embeddings) + RoBERTa's usual LM head
  roberta_zero_clap_*  ALiBi + CLAP head ("zero" position embeddings)
Everything else (hub interface, classification heads, `--task sentence_prediction`)
is fairseq's RoBERTa.
"""

from dataclasses import dataclass, field

import torch
from fairseq.dataclass import ChoiceEnum
from fairseq.models import register_model, register_model_architecture
from fairseq.models.roberta.model import (
    RobertaEncoder,
    RobertaModel,
    base_architecture as roberta_base_architecture,
)
from fairseq.models.transformer import TransformerConfig, TransformerEncoder
from fairseq.modules.transformer_sentence_encoder import init_bert_params
from fairseq.utils import safe_getattr, safe_hasattr

from energy_lm.inference.protocol import MASKED
from energy_lm.models.energy_model import EnergyModelMixin, attach_dictionary, check_task_length
from energy_lm.models.energy_options import (
    EnergyOptions,
    add_energy_args,
    presets,
    resolve_energy_options,
)
from energy_lm.kernels.alibi import ALIBI_MAX_POSITIONS, ENCODER_ALIBI_CHOICES
from energy_lm.modules.attention import AttentionPattern
from energy_lm.modules.candidate_embedding import embed_candidates
from energy_lm.modules.clap import ClapEmbedding, ClapHead, LinearHead
from energy_lm.modules.energy_head import EnergyHead
from energy_lm.modules.layers import EncoderLayer, set_layer_norm_eps, wrap_layer


@dataclass
class RobertaEnergyOptions(EnergyOptions):
    """The RoBERTa family's flags: the shared ones, its ALiBi modes, and its own."""
    alibi: ChoiceEnum(ENCODER_ALIBI_CHOICES) = field(
        default="none", metadata={"help": "ALiBi mode: symmetric -m|i-j|, or shifted (looking "
                                          "ahead costs half a slope less); replaces position "
                                          "embeddings"})
    mask_embedding: ChoiceEnum(["learned", "zero"]) = field(
        default="learned", metadata={"help": "embedding of <mask>: its learned row (default), "
                                             "or the zero vector"})
    position_init: ChoiceEnum(["normal", "sinusoidal"]) = field(
        default="normal", metadata={"help": "initial learned position table: BERT's N(0, 0.02) "
                                            "(default), or sinusoids at the norm of a token row"})
    scale_embedding: bool = field(
        default=False, metadata={"help": "multiply input embeddings by sqrt(d) (RoBERTa "
                                         "default: no)"})


class EnergyTransformerEncoder(TransformerEncoder):
    """fairseq's TransformerEncoder with SDPA self-attention and optional ALiBi."""

    # fairseq's base class calls this hook with its TransformerConfig, which does not
    # carry our fields; the legacy wrapper keeps the namespace in self.args.
    def build_encoder_layer(self, cfg):
        cfg = TransformerConfig.from_namespace(cfg)
        if "attention_pattern" not in self._modules:  # first layer: one pattern for all
            self.attention_pattern = AttentionPattern(
                cfg.encoder.attention_heads, causal=False, alibi=self.args.alibi)
        return wrap_layer(EncoderLayer(cfg, return_fc=self.return_fc), cfg,
                          self.attention_pattern)

    def candidate_features(self, src_tokens, cand_tokens, cand_pos, pre_norm=False):
        """Stage 2 of a paired forward (see energy_lm.models.energy_model): each candidate
        token (B, M) enters at its data position cand_pos (B, M) and runs through every
        layer; returns the final states (B, M, C) (before the final norm with pre_norm,
        as the last of fairseq's `encoder_states`)."""
        positions = None
        if self.embed_positions is not None:
            table = self.embed_positions(src_tokens)  # (B, N, C)
            positions = table.gather(1, cand_pos.unsqueeze(-1).expand(-1, -1, table.size(-1)))
        x = embed_candidates(self, cand_tokens, positions).transpose(0, 1)  # (M, B, C)
        for layer in self.layers:
            x = layer(x, encoder_padding_mask=None)
            if isinstance(x, tuple):  # layers built with return_fc
                x = x[0]
        if self.layer_norm is not None and not pre_norm:
            x = self.layer_norm(x)
        return x.transpose(0, 1)  # (B, M, C)


def init_positions_sinusoidal(embed_positions, unit_token_rows: bool) -> None:
    """Start a learned position table from sinusoids, at the norm of a token row.

    Measured in issue 2 (its plan, docs/dev/plan-issue-2.md, is in git's history): from
    BERT's N(0, 0.02) init, a tiny RoBERTa with learned positions memorises its training
    blocks by absolute position and does not learn even the bigrams of a synthetic language in 300 updates (valid MLM loss
    rises to 5.55 bits), while the same model with ALiBi learns it (1.27 bits). Sinusoids
    make "attend to my neighbour" a linear function of the table from the first update:
    4.33 bits on the synthetic language, but no clear gain on the embedded corpus
    (8.40 bits after 600 updates), hence opt-in.
    """
    from fairseq.modules.sinusoidal_positional_embedding import SinusoidalPositionalEmbedding

    num, dim = embed_positions.weight.shape
    table = SinusoidalPositionalEmbedding.get_embedding(num, dim, embed_positions.padding_idx)
    token_norm = 1.0 if unit_token_rows else 0.02 * dim ** 0.5  # CLAP rows / BERT init
    with torch.no_grad():  # each sinusoid row has norm sqrt(dim / 2)
        embed_positions.weight.copy_(table * (token_norm / (dim / 2) ** 0.5))


class RobertaEnergyEncoder(RobertaEncoder):
    def __init__(self, args, dictionary):
        super().__init__(args, dictionary)
        set_layer_norm_eps(self, args.layer_norm_eps)  # the trunk's and the LM head's

    def max_positions(self):
        return ALIBI_MAX_POSITIONS if self.args.alibi != "none" else self.args.max_positions

    def build_embedding(self, vocab_size, embedding_dim, padding_idx):
        args = self.args
        zero_index = self.dictionary.index("<mask>") if args.mask_embedding == "zero" else None
        if args.embed_norm == "none" and zero_index is None:
            return super().build_embedding(vocab_size, embedding_dim, padding_idx)
        return ClapEmbedding(vocab_size, embedding_dim, padding_idx,
                             l2_normalize=args.embed_norm == "l2", zero_index=zero_index)

    def build_encoder(self, args, dictionary, embed_tokens):
        encoder = EnergyTransformerEncoder(args, dictionary, embed_tokens)
        encoder.apply(init_bert_params)
        return encoder

    def build_lm_head(self, embed_dim, output_dim, activation_fn, weight):
        if self.args.untied_head:
            return LinearHead(embed_dim, output_dim)
        if self.args.clap_head:
            return ClapHead(weight, self.args.initial_beta, padding_idx=self.dictionary.pad())
        return super().build_lm_head(embed_dim, output_dim, activation_fn, weight)


@register_model("roberta_energy")
class RobertaEnergyModel(EnergyModelMixin, RobertaModel):
    """RoBERTa + CLAP head / ALiBi + energy head; see the module docstring for the presets."""

    energy_family = MASKED

    def __init__(self, args, encoder):
        super().__init__(args, encoder)  # ends with BERT's init of every parameter
        positions = encoder.sentence_encoder.embed_positions
        if safe_getattr(args, "position_init", "normal") == "sinusoidal" and positions is not None:
            init_positions_sinusoidal(positions, args.embed_norm == "l2")
        self.energy_head = EnergyHead(args.encoder_embed_dim, args.energy_head)
        self.register_format()

    def _trunk(self):
        return self.encoder.sentence_encoder

    def _head_modules(self):
        return [self.energy_head, self.encoder.lm_head]

    def output_layer(self, features, masked_tokens=None, **unused):
        """The MLM head on features (..., C) -> logits (..., V) (fairseq's RobertaModel
        keeps it on the encoder only)."""
        return self.encoder.output_layer(features, masked_tokens=masked_tokens)

    @classmethod
    def hub_models(cls):
        return {}

    @classmethod
    def from_pretrained(cls, model_name_or_path, checkpoint_file="model.pt",
                        data_name_or_path=".", bpe="energy_byte_bpe", **kwargs):
        """fairseq's RoBERTa loader with our BPE as the default: it reads the folder's
        vocab.json + merges.txt (fairseq's default, `gpt2`, fetches GPT-2's files from the
        network). A checkpoint that names its BPE (energy-lm-from-hf's) keeps it."""
        return super().from_pretrained(model_name_or_path, checkpoint_file, data_name_or_path,
                                       bpe=bpe, **kwargs)

    @staticmethod
    def add_args(parser):
        RobertaModel.add_args(parser)
        add_energy_args(parser, RobertaEnergyOptions)

    @classmethod
    def build_model(cls, args, task):
        from omegaconf import OmegaConf

        if OmegaConf.is_config(args):
            OmegaConf.set_struct(args, False)
        roberta_energy_architecture(args)
        if not safe_hasattr(args, "max_positions"):
            if not safe_hasattr(args, "tokens_per_sample"):
                args.tokens_per_sample = task.max_positions()
            args.max_positions = args.tokens_per_sample
        encoder = RobertaEnergyEncoder(args, task.source_dictionary)
        if OmegaConf.is_config(args):
            OmegaConf.set_struct(args, True)
        model = cls(args, encoder)
        check_task_length(model, task)
        attach_dictionary(model, task)
        return model


@register_model_architecture("roberta_energy", "roberta_energy")
def roberta_energy_architecture(args):
    """Fill every energy_lm field, then RoBERTa's own defaults."""
    resolve_energy_options(args, RobertaEnergyOptions, causal=False)
    if args.clap_head and safe_getattr(args, "untie_weights_roberta", False):
        raise ValueError("--clap-head ties the output head to the input embeddings; "
                         "drop --untie-weights-roberta")
    args.no_scale_embedding = not args.scale_embedding
    roberta_base_architecture(args)


def _register_presets():
    for name, values in presets("roberta", "encoder", alibi_mode="symmetric"):
        def preset(args, values=values):
            for key, value in values.items():
                setattr(args, key, safe_getattr(args, key, value))
            roberta_energy_architecture(args)

        register_model_architecture("roberta_energy", name)(preset)


_register_presets()
