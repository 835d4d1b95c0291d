"""`--help` of every console script the package installs: exit 0, nothing but the help
(no log lines of fairseq's imports), usage examples whose continuation lines survive,
and a help text for every option."""

import re
import subprocess
import tomllib

import pytest

from conftest import BIN, REPO

pytestmark = pytest.mark.slow

SCRIPTS = sorted(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])


def options_without_help(text: str):
    """argparse prints an option's help on its line or, when the option is long, on the
    next line indented past the option column; an option with neither has none."""
    lines = text.splitlines()
    bare = []
    for i, line in enumerate(lines):
        match = re.match(r"^  (-\S.*?)(?:\s{2,}(\S.*))?$", line)
        if not match or match.group(2):
            continue
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if not re.match(r"^\s{6,}\S", following) or following.lstrip().startswith("-"):
            bare.append(match.group(1))
    return bare


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_is_clean(script):
    result = subprocess.run([str(BIN / script), "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    text = result.stdout + result.stderr
    assert text.startswith("usage:"), text[:300]  # no log line before the usage
    assert "tensorboardX" not in text and "WARNING" not in text
    # a collapsed line continuation leaves a long run of spaces inside a line
    assert not re.search(r"\S {16,}--", text), text
    assert not options_without_help(result.stdout), options_without_help(result.stdout)
