"""Old home of `energy-lm-eval-elm`, kept while experiments started before the move still
run `python -m energy_lm.eval_elm`; the tool is `energy_lm.cli.eval_elm`."""

from energy_lm.cli.eval_elm import cli_main, main  # noqa: F401

if __name__ == "__main__":
    cli_main()
