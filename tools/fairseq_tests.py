"""fairseq's own tests, bare and with energy_lm, on this stack: every test that passes
with bare fairseq must pass with the package installed.

    python tools/fairseq_tests.py [--keep DIR]

The tests come from the source distribution of the installed fairseq (fairseq-fixed on
PyPI carries tests/*.py, though not the tests/utils.py helper that 14 of them import;
tools/fairseq_test_helpers.py stands in for the part that test_reproducibility.py and
test_checkpoint_utils.py need, and the files that need the rest fail to import in both
runs and are counted apart). Both runs use this
interpreter, side by side in two copies of the tests; the bare one sets
ENERGY_LM_NO_AUTOLOAD=1, so fairseq runs without any of the package's registrations or
patches. Exit 1, naming them, if a test passes bare and
fails with the package, or one of MUST_PASS (fairseq's reproducibility tests, which fail
bare on this stack) fails with it; the summary line gives both counts and the seconds.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path
from typing import Dict, Set

DISTRIBUTION = "fairseq-fixed"
# imported by test_reproducibility (for the helpers), not run: its hundred training runs
# would double CI's time, and most need helpers the stand-in does not implement
NOT_COLLECTED = ("test_binaries.py",)
# fail bare on this stack (torch's weights-only load refuses fairseq's checkpoints), so
# the bare-vs-package comparison cannot guard them: they must pass with the package
MUST_PASS = ("tests.test_reproducibility.TestReproducibility::test_reproducibility",
             "tests.test_reproducibility.TestReproducibility::test_mid_epoch_reproducibility")


def fetch_tests(into: Path) -> Path:
    """The tests/ folder of the installed fairseq's source distribution, as a package."""
    version = metadata.version(DISTRIBUTION)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-binary", ":all:",
                    f"{DISTRIBUTION}=={version}", "-d", str(into)], check=True)
    archive = next(into.glob("*.tar.gz"))
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers()
                   if "/tests/" in m.name and m.name.split("/")[1] == "tests" and m.isfile()]
        tar.extractall(into, members=members, filter="data")
    tests = next(into.glob("*/tests"))
    (tests / "__init__.py").touch()  # `from tests.x import ...` as in fairseq's own tree
    if not (tests / "utils.py").exists():  # the sdist leaves fairseq's helper out
        shutil.copy(Path(__file__).with_name("fairseq_test_helpers.py"), tests / "utils.py")
    return tests


def start_run(tests: Path, bare: bool, report: Path) -> subprocess.Popen:
    """One pytest run over the folder, started in the background (one thread)."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.pop("ENERGY_LM_NO_AUTOLOAD", None)
    if bare:
        env["ENERGY_LM_NO_AUTOLOAD"] = "1"
    return subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "--continue-on-collection-errors", f"--junitxml={report}",
                             *(f"--ignore=tests/{name}" for name in NOT_COLLECTED), "tests"],
                            cwd=tests.parent, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def outcomes(report: Path) -> Dict[str, str]:
    """{test id: passed | failed | skipped} of a finished run's junit report."""
    result = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        result[name] = ("failed" if kinds & {"failure", "error"} else
                        "skipped" if "skipped" in kinds else "passed")
    return result


def compare(bare: Dict[str, str], ours: Dict[str, str]) -> Set[str]:
    """The tests that pass bare, or are in MUST_PASS, and do not pass with the package."""
    return {name for name in {*bare, *MUST_PASS}
            if (bare.get(name) == "passed" or name in MUST_PASS) and ours.get(name) != "passed"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="work here (default: a temporary folder)")
    args = parser.parse_args(argv)
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        # the two runs side by side (one thread each, two cores), each in its own copy
        # of the tests: a test that writes beside itself cannot meet the other run
        runs = [start_run(fetch_tests(work / name), bare, work / f"{name}.xml")
                for name, bare in (("bare", True), ("energy_lm", False))]
        for run in runs:
            run.wait()
        bare, ours = outcomes(work / "bare.xml"), outcomes(work / "energy_lm.xml")
    broken = compare(bare, ours)
    passed = sum(o == "passed" for o in bare.values())
    print(f"fairseq's own tests: {passed} pass bare, "
          f"{sum(o == 'passed' for o in ours.values())} with energy_lm, "
          f"{len(broken)} broken by it ({time.time() - start:.0f} s)")
    for name in sorted(broken):
        why = "passes bare" if bare.get(name) == "passed" else "must pass"
        print(f"  {why}, not with energy_lm ({ours.get(name, 'not run')}): {name}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
