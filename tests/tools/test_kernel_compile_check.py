"""tools/kernel_compile_check.py's verdict on one compiled variant (no compilation here:
`make test` runs the check itself, on every launch of the Triton host code)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from kernel_compile_check import Variant  # noqa: E402


def variant(**changes):
    fields = dict(kernel="_fwd_kernel", arch=90, dtype="bfloat16", head_dim=64, shared=40_000,
                  spill_bytes=0, tensor_cores=True, tf32=False)
    fields.update(changes)
    return Variant(**fields)


def test_a_variant_within_every_limit_passes():
    assert variant().problems(allowed_spills=0) == []


@pytest.mark.parametrize("changes,allowed,found", [
    (dict(shared=232_449), 0, "shared memory 232,449 B > 232,448 B"),
    (dict(arch=80, shared=166_913), 0, "shared memory 166,913 B > 166,912 B"),
    (dict(spill_bytes=8), 0, "spills 8 B > baseline 0 B"),
    (dict(scratch=64), 0, "global scratch 64 B"),
    (dict(tensor_cores=False), 0, "no tensor-core instruction"),
    (dict(dtype="float32", tensor_cores=False, tf32=True), 0, "TF32 in an fp32 kernel"),
    (dict(error="does not compile: CompilationError: x"), 0, "does not compile"),
])
def test_each_limit_fails_the_variant(changes, allowed, found):
    problems = variant(**changes).problems(allowed_spills=allowed)
    assert any(found in p for p in problems), problems


def test_spills_within_the_recorded_baseline_pass():
    assert variant(dtype="float32", tensor_cores=False, spill_bytes=40).problems(40) == []
    assert variant(dtype="float32", tensor_cores=False, spill_bytes=41).problems(40)
