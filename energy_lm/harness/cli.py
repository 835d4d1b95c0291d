"""`energy-lm-harness`: lm-evaluation-harness's own `run` command with the model chosen.

    energy-lm-harness-tasks harness-tasks
    energy-lm-harness --model_args path=runs/lm-nce/checkpoint_best.pt,data=corpus/data-bin,scoring=elm \\
        --tasks energy_lm_lastword energy_lm_perplexity --include_path harness-tasks \\
        --limit 20 --output_path results

Every flag is the harness's (`--tasks`, `--include_path`, `--num_fewshot`, `--limit`,
`--batch_size`, `--output_path`, `--log_samples`, ...); `--model` is `energy_lm`
(energy_lm.harness.model: its model_args). Runs offline: the harness's and the datasets
library's hub access is off unless HF_HUB_OFFLINE / HF_DATASETS_OFFLINE say otherwise.
"""

import os
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--model" or a.startswith("--model=") for a in argv):
        raise ValueError("energy-lm-harness chooses --model energy_lm itself; give only "
                         "--model_args")
    if not any(a == "--model_args" or a.startswith("--model_args=") for a in argv) and \
            not {"-h", "--help"} & set(argv):
        raise ValueError("--model_args path=CHECKPOINT,data=DATA_BIN[,scoring=lm|elm]"
                         "[,log_z=exact|estimate] is required")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    import energy_lm.harness.model  # noqa: F401  (registers the model `energy_lm`)

    setup_logging()
    sys.argv = ["energy-lm-harness", "run", "--model", "energy_lm", *argv]
    parser = HarnessCLI()
    parser.execute(parser.parse_args())


def cli_main() -> None:
    from energy_lm.cli.errors import run_reporting_errors
    from energy_lm.harness.model import HarnessArgumentError
    from energy_lm.patches.shared_cpu import fit_threads

    fit_threads()  # the cores other processes leave free
    run_reporting_errors("energy-lm-harness", main, (HarnessArgumentError, ValueError))
