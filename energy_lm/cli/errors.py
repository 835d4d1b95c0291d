"""What every energy-lm command does around its `main`: log to stdout, and turn an
expected error (a wrong input or flag) into one line `PROG: error: ...` and exit 1,
with no traceback. Unexpected errors keep their traceback."""

import logging
import sys
from typing import Callable, Tuple, Type, TypeVar, Union

T = TypeVar("T")
LOG_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"


def log_to_stdout() -> None:
    logging.basicConfig(format=LOG_FORMAT, level=logging.INFO, stream=sys.stdout)


def run_reporting_errors(prog: str, main: Callable[[], T],
                         errors: Union[Type[Exception], Tuple[Type[Exception], ...]]) -> T:
    try:
        return main()
    except errors as err:
        sys.exit(f"{prog}: error: {err}")
