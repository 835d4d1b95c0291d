"""What both model families share, declared once: the energy_lm options as one fairseq
dataclass, the table of presets (variants x sizes), and their resolution and checks.

The LM family is a fairseq dataclass model: its config inherits `EnergyOptions`. The
RoBERTa family is an argparse model: `add_energy_args` generates its flags from its
options dataclass with fairseq's own `gen_parser_from_dataclass`, without defaults, so
that a preset can tell a flag the user gave from one left unset (fairseq's RoBERTa arch
functions read unset flags as missing). `resolve_energy_options` then fills the
defaults from the same dataclass, in both families.
"""

from dataclasses import MISSING, dataclass, field, fields
from enum import Enum
from typing import Dict, Iterator, Tuple

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.utils import safe_getattr

from energy_lm.kernels.alibi import check_alibi_mode
from energy_lm.modules.energy_head import ENERGY_HEAD_CHOICES


@dataclass
class EnergyOptions(FairseqDataclass):
    """The flags of both families (each family narrows `alibi` to its modes)."""
    alibi: str = field(
        default="none", metadata={"help": "ALiBi bias; replaces position embeddings"})
    clap_head: bool = field(
        default=False, metadata={"help": "CLAP output head: beta * h @ normalize(E).T "
                                         "(weight-tied)"})
    initial_beta: float = field(
        default=1.0, metadata={"help": "initial inverse temperature of the CLAP head "
                                       "(default 1.0)"})
    embed_norm: ChoiceEnum(["auto", "none", "l2"]) = field(
        default="auto", metadata={"help": "L2-normalise the input embedding rows; auto "
                                          "(default): l2 with a CLAP head, else none"})
    untied_head: bool = field(
        default=False, metadata={"help": "output head: an untied Linear(d, V, bias=False), "
                                         "replacing the preset's head (what "
                                         "energy-lm-add-head gives a headless CWT model)"})
    energy_head: ChoiceEnum(ENERGY_HEAD_CHOICES) = field(
        default="seed", metadata={"help": "energy head of the residual EBM: seed (default; "
                                          "the MonArc seed's code: a scaled bilinear form of "
                                          "context and token states with log q), linear "
                                          "(Linear(d, 1) on the final state: learned nothing "
                                          "on real text here) or rich (linear + log q + a "
                                          "bilinear term)"})
    layer_norm_eps: float = field(
        default=1e-5, metadata={"help": "eps of every layer norm of the trunk and LM head "
                                        "(default 1e-5, fairseq's; an imported model keeps "
                                        "its source's)"})


def add_energy_args(parser, options: type) -> None:
    """argparse flags of an argparse model family, generated from its options dataclass
    (no defaults: see the module docstring)."""
    gen_parser_from_dataclass(parser, options(), delete_default=True)


def resolve_energy_options(args, options: type, causal: bool) -> None:
    """Fill every unset option from the `options` dataclass, resolve the derived ones and
    check them, for either family (args: a namespace or fairseq's model config)."""
    for spec in fields(options):
        if spec.name.startswith("_"):
            continue
        value = safe_getattr(args, spec.name, None)
        if value is None:
            value = spec.default if spec.default is not MISSING else spec.default_factory()
        setattr(args, spec.name, value.value if isinstance(value, Enum) else value)
    if args.embed_norm == "auto":  # before untied_head: the trunk keeps the preset's norm
        args.embed_norm = "l2" if args.clap_head else "none"
    if args.untied_head:  # replaces the preset's head
        args.clap_head = False
    if not float(args.layer_norm_eps) > 0:
        raise ValueError(f"--layer-norm-eps must be > 0, got {args.layer_norm_eps}")
    args.layer_norm_eps = float(args.layer_norm_eps)
    if args.alibi != "none":  # ALiBi replaces position embeddings
        args.no_token_positional_embeddings = True
    check_alibi_mode(args.alibi, causal)


# The presets of both families: {family}_{variant}_{size}; a flag given on the command
# line (or in a YAML) overrides the preset's value. The embedding norm follows the head
# (embed_norm auto: l2 with a CLAP head).
PRESET_SIZES: Dict[str, Tuple[int, int, int, int]] = {  # layers, dim, ffn dim, heads
    "tiny": (4, 256, 1024, 4),
    "base": (12, 768, 3072, 12),    # RoBERTa base, GPT-2 small; the seeds' 163M trunk
    "large": (24, 1024, 4096, 16),  # RoBERTa large; the seeds' 430M trunk
}
PRESET_VARIANTS: Dict[str, Tuple[bool, bool]] = {  # CLAP head, ALiBi
    "clap": (True, False),        # learned positions + CLAP head
    "alibi": (False, True),       # ALiBi (no position embeddings) + the family's head
    "zero_clap": (True, True),    # ALiBi + CLAP head
}


def presets(family: str, side: str, alibi_mode: str) -> Iterator[Tuple[str, dict]]:
    """(name, values) of every preset of a family; side is "encoder" or "decoder" (the
    prefix of fairseq's size flags), alibi_mode the family's ALiBi mode."""
    for variant, (clap, alibi) in PRESET_VARIANTS.items():
        for size, (layers, dim, ffn, heads) in PRESET_SIZES.items():
            yield f"{family}_{variant}_{size}", {
                "clap_head": clap, "alibi": alibi_mode if alibi else "none",
                f"{side}_layers": layers, f"{side}_embed_dim": dim,
                f"{side}_ffn_embed_dim": ffn, f"{side}_attention_heads": heads}
