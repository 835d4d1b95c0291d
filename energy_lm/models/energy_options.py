"""Options shared by both model families: command-line flags and their validation."""

from fairseq.utils import safe_getattr

from energy_lm.modules.alibi import check_alibi_mode


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


def check_energy_args(args, causal: bool) -> None:
    check_alibi_mode(args.alibi, causal)
    if args.clap_head and safe_getattr(args, "untie_weights_roberta", False):
        raise ValueError("--clap-head ties the output head to the input embeddings; "
                         "drop --untie-weights-roberta")
