"""`energy-lm-from-hf SRC OUT`: a Hugging Face GPT-2 or RoBERTa as a fairseq model in
fairseq's hub layout (energy_lm.hf.from_hf), checked against the source before it is
written."""

import argparse
from typing import List, Optional

from energy_lm.cli.errors import log_to_stdout, run_reporting_errors


def main(argv: Optional[List[str]] = None) -> None:
    from energy_lm.data.errors import PrepareError
    from energy_lm.hf.errors import BridgeError
    from energy_lm.hf.from_hf import TRAIN_ARGS, convert

    parser = argparse.ArgumentParser(
        prog="energy-lm-from-hf", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert a Hugging Face GPT2LMHeadModel (-> transformer_lm_energy) or "
                    "RobertaForMaskedLM / RobertaModel (-> roberta_energy) into fairseq's hub "
                    "layout: OUT/model.pt, dict.txt, the tokenizer files and train-args.txt "
                    "(the fairseq-train flags of the architecture, for --restore-file).",
        epilog="example:\n  energy-lm-from-hf gpt2-folder gpt2-fairseq\n"
               "  fairseq-train DATA $(cat gpt2-fairseq/train-args.txt) --restore-file "
               "gpt2-fairseq/model.pt --criterion monarc ...")
    parser.add_argument("src", help="a folder written by save_pretrained (config.json, weights, "
                                    "tokenizer), or a hub id (downloaded; needs a network)")
    parser.add_argument("out", help="the output folder (must be empty or absent)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty OUT")
    args = parser.parse_args(argv)
    import energy_lm  # noqa: F401  (registrations and fairseq fixes for the build)

    result = run_reporting_errors("energy-lm-from-hf",
                                  lambda: convert(args.src, args.out, args.force),
                                  (BridgeError, PrepareError))
    print(f"{result['architecture']} -> {args.out}/model.pt; {result['agreement'].describe()}")
    print(f"fairseq-train flags of the architecture ({args.out}/{TRAIN_ARGS}): "
          f"{' '.join(result['train_args'])}")


def cli_main() -> None:
    log_to_stdout()
    main()


if __name__ == "__main__":
    cli_main()
