"""`energy-lm-to-hf CHECKPOINT OUT [--data DATA_BIN]`: a checkpoint trained here as a
folder stock transformers loads, the energy head beside it (energy_lm.hf.to_hf),
checked against the fairseq model before it is written."""

import argparse
from pathlib import Path
from typing import List, Optional

from energy_lm.cli.errors import log_to_stdout, run_reporting_errors


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="energy-lm-to-hf", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export a transformer_lm_energy checkpoint (learned positions) as "
                    "GPT2LMHeadModel, a roberta_energy one as RobertaForMaskedLM (or, with a "
                    "CLAP or linear head, RobertaModel + lm_head.safetensors), with its "
                    "tokenizer, and the energy head in energy_head.safetensors (config.json: "
                    "energy_lm). energy-lm-from-hf OUT brings it back, energy head included.",
        epilog="example:\n  energy-lm-to-hf runs/x/checkpoint_last.pt x-hf --data corpus/data-bin\n"
               "  python -c \"from transformers import AutoModelForCausalLM as M; "
               "M.from_pretrained('x-hf')\"")
    parser.add_argument("checkpoint", type=Path, help="a checkpoint of fairseq-train (or model.pt)")
    parser.add_argument("out", type=Path, help="the output folder (must be empty or absent)")
    parser.add_argument("--data", type=Path, help="the data-bin the model was trained on (its "
                        "dict.txt and BPE files); default: the one the checkpoint names")
    parser.add_argument("--mode", choices=("lm", "mlm", "add_head"), default="lm",
                        help="lm (default): the model with its head; mlm: the trunk alone "
                             "(AutoModel); add_head: the trunk with a new LM head copied from "
                             "the input embedding rows (as energy-lm-add-head), for a headless "
                             "(CWT) checkpoint")
    parser.add_argument("--force", action="store_true", help="replace a non-empty OUT")
    args = parser.parse_args(argv)
    import energy_lm  # noqa: F401  (registrations and fairseq fixes for the load)
    from energy_lm.data.errors import PrepareError
    from energy_lm.hf.errors import BridgeError
    from energy_lm.hf.to_hf import convert

    result = run_reporting_errors(
        "energy-lm-to-hf", lambda: convert(args.checkpoint, args.out, args.data, args.force, args.mode),
        (BridgeError, PrepareError))
    print(f"{args.checkpoint} -> {args.out} ({result['architecture']}); "
          f"{result['agreement'].describe()}")


def cli_main() -> None:
    log_to_stdout()
    main()


if __name__ == "__main__":
    cli_main()
