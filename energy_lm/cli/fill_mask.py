"""`energy-lm-fill-mask`: load a RoBERTa-family checkpoint with fairseq's
`RobertaModel.from_pretrained` and print the top-k fillings of `<mask>`.

    energy-lm-fill-mask CHECKPOINT_DIR DATA_BIN ["A sentence with a <mask> ." ...]
    energy-lm-fill-mask CHECKPOINT_DIR DATA_BIN --scoring elm     # ranked by q * exp(-E)

`--scoring elm` (a masked checkpoint with an energy head: MonArc or NCE) ranks q's top
`--elm-candidates` fillings by the ELM, q * exp(-E) renormalised over them (`all`: over
the whole vocabulary, exactly); the header line says which.

DATA_BIN holds dict.txt and, for the embedded corpus, the byte-level BPE files
(vocab.json, merges.txt) that `energy-lm-prepare embedded` puts there; without them
the GPT-2 BPE is used.
"""

import argparse
import logging
from pathlib import Path
from typing import List, Optional

from energy_lm.data.bpe import MERGES_FILE, VOCAB_FILE

DEFAULT_SENTENCES = [
    "Return a new <mask> containing the items of the iterable.",
    "Raise a ValueError if the <mask> is not found.",
    "The default value is <mask>.",
    "Return a list of all the <mask> in the directory.",
    "The <mask> statement is used to leave a loop.",
]


def load_roberta(checkpoint_dir: Path, data_bin: Path, checkpoint_file: str = "checkpoint_best.pt"):
    from fairseq.models.roberta import RobertaModel

    bpe_kwargs = {"bpe": "gpt2"}
    if (data_bin / VOCAB_FILE).exists() and (data_bin / MERGES_FILE).exists():
        bpe_kwargs = {"bpe": "energy_byte_bpe", "bpe_vocab": str(data_bin / VOCAB_FILE),
                      "bpe_merges": str(data_bin / MERGES_FILE)}
    model = RobertaModel.from_pretrained(str(checkpoint_dir), checkpoint_file, str(data_bin),
                                         **bpe_kwargs)
    return model.eval()


class FillMaskError(ValueError):
    pass


MASK = "<mask>"


def check_sentences(sentences: List[str]) -> None:
    """fairseq's fill_mask takes exactly one <mask> per sentence (it asserts)."""
    for sentence in sentences:
        count = sentence.count(MASK)
        if count != 1:
            raise FillMaskError(f"each sentence needs exactly one {MASK}, got {count} in "
                                f"{sentence!r}")


def check_model(roberta, topk: int) -> None:
    from energy_lm.inference.protocol import is_masked_model

    if not is_masked_model(roberta.model) or getattr(roberta.task, "mask_idx", None) is None:
        raise FillMaskError(f"the checkpoint is a {type(roberta.model).__name__} trained with "
                            f"the {type(roberta.task).__name__}: fill-mask needs a masked LM "
                            f"(a RoBERTa-family checkpoint of --task masked_lm)")
    vocab = len(roberta.task.source_dictionary)
    if not 1 <= topk <= vocab:
        raise FillMaskError(f"--topk must be in [1, {vocab}] (the vocabulary), got {topk}")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="energy-lm-fill-mask", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint_dir", type=Path, help="folder of the checkpoint")
    parser.add_argument("data_bin", type=Path, help="the data-bin the model was trained on")
    parser.add_argument("sentences", nargs="*", default=DEFAULT_SENTENCES,
                        help=f"sentences with one {MASK} each (default: a few examples)")
    parser.add_argument("--checkpoint-file", default="checkpoint_best.pt",
                        help="file in CHECKPOINT_DIR (default checkpoint_best.pt)")
    parser.add_argument("--topk", type=int, default=3, help="fillings to print per sentence")
    parser.add_argument("--scoring", choices=["lm", "elm"], default="lm",
                        help="rank by the MLM head q (default) or by the ELM q * exp(-E)")
    parser.add_argument("--elm-candidates", default="32",
                        help="with --scoring elm: q's top N fillings get an energy and the "
                             "ELM is renormalised over them; 'all': the whole vocabulary")
    parser.add_argument("--verbose", action="store_true", help="keep fairseq's INFO logging")
    args = parser.parse_intermixed_args(argv)
    if args.topk < 1:
        parser.error(f"--topk must be >= 1, got {args.topk}")
    if args.elm_candidates == "all":
        elm_candidates = None
    elif args.elm_candidates.isdigit() and (int(args.elm_candidates) >= args.topk
                                            or args.scoring == "lm"):
        elm_candidates = int(args.elm_candidates)
    else:
        parser.error(f"--elm-candidates must be 'all' or a count >= --topk ({args.topk}), "
                     f"got {args.elm_candidates!r}")
    for path, what in ((args.checkpoint_dir / args.checkpoint_file, "checkpoint"),
                       (args.data_bin / "dict.txt", "dictionary (DATA_BIN/dict.txt)")):
        if not path.is_file():
            parser.error(f"{what} not found: {path}")
    try:
        check_sentences(args.sentences)
    except FillMaskError as err:
        parser.error(str(err))
    if not args.verbose:  # the hub logs the whole training config at INFO
        logging.getLogger("fairseq").setLevel(logging.WARNING)

    roberta = load_roberta(args.checkpoint_dir, args.data_bin, args.checkpoint_file)
    check_model(roberta, args.topk)
    if args.scoring == "elm":
        from energy_lm.inference.protocol import require

        require(roberta.model, "masked", "energy", user="--scoring elm", error=FillMaskError)
    print(f"model: {type(roberta.model).__name__} ({args.checkpoint_dir / args.checkpoint_file})")
    if args.scoring == "elm":
        over = ("the whole vocabulary (exact)" if elm_candidates is None
                else f"the top {elm_candidates} fillings of q")
        print(f"scoring: elm, q * exp(-E) renormalised over {over}")
    else:
        print("scoring: lm, the MLM head's probability q")
    for sentence in args.sentences:
        print(f"\n{sentence}")
        for filled, prob, token in roberta.fill_mask(sentence, topk=args.topk,
                                                     scoring=args.scoring,
                                                     elm_candidates=elm_candidates):
            print(f"  {prob:6.3f}  {token.strip()!r:16}  {filled}")


def cli_main() -> None:
    from energy_lm.cli.errors import run_reporting_errors
    from energy_lm.patches.shared_cpu import fit_threads

    fit_threads()  # the cores other processes leave free
    run_reporting_errors("energy-lm-fill-mask", main, ValueError)  # wrong model or data


if __name__ == "__main__":
    cli_main()
