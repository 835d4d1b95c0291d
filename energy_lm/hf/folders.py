"""Output folders written whole or not at all: everything goes to `OUT.partial`, renamed
to OUT only when complete, so a crash or a refused input leaves no half folder."""

import contextlib
import shutil
from pathlib import Path

from energy_lm.data.prepare import promote
from energy_lm.hf.errors import BridgeError


def check_target(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise BridgeError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise BridgeError(f"{out} is not empty; --force replaces it")


@contextlib.contextmanager
def staged_folder(out: Path, force: bool):
    """Yields the staging folder; on success it becomes OUT (an old OUT is replaced only
    with force), on any error it is removed and OUT is untouched."""
    out = Path(out).resolve()
    check_target(out, force)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed run
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    promote(staging, out)
