"""`energy-lm-prepare`: the console script of energy_lm.data.prepare (one line on a
wrong input, what was built on success)."""

from energy_lm.cli.errors import log_to_stdout, run_reporting_errors
from energy_lm.data.prepare import PrepareError, main


def cli_main() -> None:
    log_to_stdout()
    data_bin = run_reporting_errors("energy-lm-prepare", main, PrepareError)
    if data_bin is None:
        print("the output folder already holds this corpus (same arguments): nothing to do")
    else:
        print(f"binarized data in {data_bin}")


if __name__ == "__main__":
    cli_main()
