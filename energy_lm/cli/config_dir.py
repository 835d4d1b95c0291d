"""`energy-lm-config-dir`: where the packaged hydra configs are, for `--config-dir`.

    fairseq-hydra-train --config-dir "$(energy-lm-config-dir pretraining)" \\
        --config-name roberta_clap_tiny task.data=corpus/data-bin
"""

import argparse
import sys
from typing import List, Optional

from energy_lm.cli.errors import run_reporting_errors
from energy_lm.configs import GROUPS, config_dir


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="energy-lm-config-dir", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print the folder of a group of the hydra configs installed with "
                    "energy_lm, for fairseq-hydra-train's --config-dir.",
        epilog='example:\n  fairseq-hydra-train --config-dir "$(energy-lm-config-dir '
               'pretraining)" \\\n      --config-name roberta_clap_tiny task.data=corpus/data-bin')
    parser.add_argument("group", choices=GROUPS, help="pretraining (tiny runs), seeds (the "
                        "seeds' experiments), glue (fine-tuning)")
    parser.add_argument("--list", action="store_true", help="also list the config names")
    args = parser.parse_args(argv)
    folder = config_dir(args.group)
    print(folder)
    if args.list:
        for path in sorted(folder.glob("*.yaml")):
            print(f"  {path.stem}")


def cli_main() -> None:
    run_reporting_errors("energy-lm-config-dir", lambda: main(sys.argv[1:]), ValueError)
