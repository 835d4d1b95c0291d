"""Options shared by both model families: command-line flags and their validation."""

from fairseq.utils import safe_getattr

from energy_lm.kernels.alibi import check_alibi_mode
from energy_lm.modules.energy_head import ENERGY_HEAD_CHOICES


def add_energy_args(parser, alibi_choices, alibi_help):
    """argparse flags of the RoBERTa family; the LM family declares the same fields in
    its dataclass (fairseq builds its flags from that)."""
    parser.add_argument("--alibi", choices=alibi_choices, help=alibi_help)
    parser.add_argument("--clap-head", action="store_true",
                        help="CLAP output head: beta * h @ normalize(E).T (weight-tied)")
    parser.add_argument("--initial-beta", type=float, metavar="B",
                        help="initial inverse temperature of the CLAP head (default 1.0)")
    parser.add_argument("--embed-norm", choices=["none", "l2"],
                        help="L2-normalise the input embedding rows (default: l2 with "
                             "--clap-head, else none)")
    parser.add_argument("--untied-head", action="store_true",
                        help="output head: an untied Linear(d, V, bias=False), replacing the "
                             "preset's head (what energy-lm-add-head gives a headless CWT model)")
    parser.add_argument("--energy-head", choices=ENERGY_HEAD_CHOICES,
                        help="energy head of the residual EBM: linear (default; Linear(d, 1) "
                             "on the final state) or rich (adds log q and a bilinear term)")


def check_energy_args(args, causal: bool) -> None:
    check_alibi_mode(args.alibi, causal)
    if args.clap_head and safe_getattr(args, "untie_weights_roberta", False):
        raise ValueError("--clap-head ties the output head to the input embeddings; "
                         "drop --untie-weights-roberta")
