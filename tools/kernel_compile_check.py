"""Compile every paired-attention kernel launch for A100 (sm_80) and H100 (sm_90), without a GPU.

    python tools/kernel_compile_check.py            # the table; exit 1 when a variant fails
    python tools/kernel_compile_check.py --quick    # bf16 and fp32 only (`make test` runs it)

The launches are the project's own: `energy_lm.kernels.triton_paired`'s host code
(`_forward`, `_backward`) runs on meta tensors (shapes, dtypes and strides, no memory)
with a stand-in Triton driver that names the target GPU, and each kernel launch it makes
is compiled instead of run (`JITFunction.warmup`: the signature, specialisation,
constexprs, warps and stages Triton derives from those very arguments). Triton's
bundled ptxas then reports registers and spills for the target. A variant fails when it
does not compile, needs more shared memory than the target has, needs global scratch
memory, spills more than the baseline recorded in tools/kernel_compile_baseline.json
allows, or (16-bit inputs) has no tensor-core instruction / (fp32) uses TF32.

Every variant runs the heaviest flag set (causal, ALiBi, packed documents, padding), the
one with the most live registers, with one key/value head per query head (G = 1) and
with two query heads per key/value head (G = 2).
"""

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "tools" / "kernel_compile_baseline.json"
TARGETS = {80: ("A100", 166_912), 90: ("H100", 232_448)}  # shared memory per block (opt-in max)
DTYPES = ("bfloat16", "float16", "float32")
HEAD_DIMS = (64, 72, 128, 256)  # wider heads are refused (backends: triton's max_head_dim)
KERNELS = ("_fwd_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel")
GROUPS = (1, 2)  # query heads per key/value head: multi-head, grouped-query


@dataclass
class Variant:
    kernel: str
    arch: int
    dtype: str
    head_dim: int
    group: int = 1            # query heads per key/value head
    warps: int = 0
    stages: int = 0
    registers: int = 0
    spill_bytes: int = 0      # spill stores + loads, bytes
    shared: int = 0
    scratch: int = 0
    tensor_cores: Optional[bool] = None
    tf32: Optional[bool] = None
    error: str = ""

    @property
    def key(self) -> str:
        return f"{self.kernel} sm_{self.arch} {self.dtype} D={self.head_dim} G={self.group}"

    def problems(self, allowed_spills: int) -> List[str]:
        if self.error:
            return [self.error]
        found = []
        limit = TARGETS[self.arch][1]
        if self.shared > limit:
            found.append(f"shared memory {self.shared:,} B > {limit:,} B")
        if self.scratch:
            found.append(f"global scratch {self.scratch} B")
        if self.spill_bytes > allowed_spills:
            found.append(f"spills {self.spill_bytes} B > baseline {allowed_spills} B")
        if self.dtype != "float32" and not self.tensor_cores:
            found.append("no tensor-core instruction")
        if self.dtype == "float32" and self.tf32:
            found.append("TF32 in an fp32 kernel")
        return found


class _StandInDriver:
    """What Triton asks of its active driver before it compiles a launch."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def is_active(self):
        return True


class _CompileInstead:
    """A kernel whose launches `kernel[grid](...)` compile (warmup) and are recorded."""

    def __init__(self, jit, sink: list):
        self.jit, self.sink = jit, sink

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            try:
                compiled = self.jit.warmup(*args, grid=grid, **kwargs)
                self.sink.append((self.jit.__name__, grid, compiled, ""))
            except Exception as err:  # a compiler error is a finding, not a crash
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                self.sink.append((self.jit.__name__, grid, None,
                                  f"does not compile: {type(err).__name__}: {first[:160]}"))
        return launch


def _ptxas_report(ptx: str, arch: int) -> Dict[str, int]:
    """Registers and spill bytes of one kernel, from the bundled ptxas (-v)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "k.ptx")
        src.write_text(ptx)
        run = subprocess.run([get_ptxas(arch).path, "-v", "--regAllocOptLevel=2",
                              f"--gpu-name={sm_arch_from_capability(arch)}", str(src),
                              "-o", str(Path(tmp, "k.o"))], capture_output=True, text=True)
    log = run.stderr
    regs = re.search(r"Used (\d+) registers", log)
    spills = [int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", log)]
    return {"registers": int(regs.group(1)) if regs else -1, "spill_bytes": sum(spills)}


def _launches(arch: int, dtype: str, head_dim: int, group: int) -> List[tuple]:
    """Run the host code of a full paired attention (forward, backward) on meta tensors."""
    import torch
    from triton.runtime.driver import driver

    import energy_lm.kernels.triton_paired as tp

    sink: list = []
    saved = {name: getattr(tp, name) for name in KERNELS}
    for name in KERNELS:
        setattr(tp, name, _CompileInstead(saved[name], sink))
    previous = getattr(driver, "_active", None)  # none on a machine without a GPU
    driver.set_active(_StandInDriver(arch))
    target_arch = tp._target_arch
    tp._target_arch = lambda device: arch  # the host code's own choice for this target
    for jit in saved.values():  # a kernel keeps the target it first compiled for, per device
        jit.device_caches.clear()
    try:
        meta, dt = torch.device("meta"), getattr(torch, dtype)
        b, h, n, m = 2, 4, 37, 11
        hk = h // group

        def t(heads, rows):
            return torch.empty(b, heads, rows, head_dim, device=meta, dtype=dt)

        q, k, v, q_c, k_c, v_c = t(h, n), t(hk, n), t(hk, n), t(h, m), t(hk, m), t(hk, m)
        # the public entry's own step: a head dim off 16 gets zero columns on a GPU
        q, k, v, q_c, k_c, v_c = tp._padded((q, k, v, q_c, k_c, v_c),
                                            tp._head_padding(head_dim, meta))
        aux = tp._aux_tensors(k, torch.zeros(b, m, dtype=torch.long, device=meta),
                              torch.empty(h, device=meta), torch.zeros(b, n, dtype=torch.long,
                                                                       device=meta),
                              torch.zeros(b, n, dtype=torch.bool, device=meta))
        flags = dict(CAUSAL=True, ALIBI=1, HAS_SEG=True, HAS_PAD=True)
        out, out_c, lse = tp._forward(q, k, v, q_c, k_c, v_c, aux, flags, with_data=True,
                                      head_dim=head_dim)
        tp._backward(q, k, v, q_c, k_c, v_c, out, out_c, lse, aux, flags, out, out_c,
                     with_data=True, head_dim=head_dim)
    finally:
        driver._active = previous
        tp._target_arch = target_arch
        for name, jit in saved.items():
            jit.device_caches.clear()
            setattr(tp, name, jit)
    return sink


def check(arch: int, dtype: str, head_dim: int, group: int) -> List[Variant]:
    found = []
    for name, _grid, compiled, error in _launches(arch, dtype, head_dim, group):
        var = Variant(name, arch, dtype, head_dim, group, error=error)
        if compiled is not None:
            md = compiled.metadata
            ptx = compiled.asm["ptx"]
            var.warps, var.stages = md.num_warps, md.num_stages
            var.shared, var.scratch = md.shared, getattr(md, "global_scratch_size", 0) or 0
            var.tensor_cores = bool(re.search(r"\b(wgmma|mma)\.", ptx))
            var.tf32 = ".tf32" in ptx
            report = _ptxas_report(ptx, arch)
            var.registers, var.spill_bytes = report["registers"], report["spill_bytes"]
        found.append(var)
    return found


def _check_case(case: tuple) -> List[Variant]:
    return check(*case)


def row(var: Variant, problems: List[str]) -> str:
    gpu = TARGETS[var.arch][0]
    tc = "-" if var.tensor_cores is None else ("yes" if var.tensor_cores else "no")
    return (f"| {var.kernel} | {gpu} sm_{var.arch} | {var.dtype} | {var.head_dim} | {var.group} | "
            f"{var.warps} | "
            f"{var.stages} | {var.registers} | {var.spill_bytes} | {var.shared:,} | {tc} | "
            f"{'; '.join(problems) or 'ok'} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="bf16 and fp32 only (what `make test` runs: every tile "
                             "configuration the host code chooses, fp16 taking bf16's)")
    parser.add_argument("--workers", type=int, default=2, help="compiling processes (2)")
    parser.add_argument("--record-baseline", action="store_true",
                        help="write today's spills as the allowed ones (after a reviewed change)")
    args = parser.parse_args(argv)
    # before Triton is imported, here and in the workers (they inherit the environment)
    os.environ.pop("TRITON_INTERPRET", None)  # real compilation, whatever the caller set
    os.environ.setdefault("TRITON_CACHE_DIR", str(ROOT / ".cache" / "triton-compile-check"))
    baseline = json.loads(BASELINE.read_text()) if BASELINE.is_file() else {}
    dtypes = ("bfloat16", "float32") if args.quick else DTYPES
    dims = HEAD_DIMS
    print("| kernel | target | dtype | D | G | warps | stages | registers | spill bytes | "
          "shared B | tensor cores | verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    start, failures, spills = time.time(), [], {}
    cases = [(arch, dtype, head_dim, group) for arch in TARGETS for dtype in dtypes
             for head_dim in dims for group in GROUPS]
    # one process per core: each sets its own stand-in driver
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        for variants in pool.imap(_check_case, cases):
            for var in variants:
                spills[var.key] = var.spill_bytes
                problems = var.problems(int(baseline.get(var.key, 0)))
                print(row(var, problems), flush=True)
                if problems:
                    failures.append(f"{var.key}: {'; '.join(problems)}")
    if args.record_baseline:
        BASELINE.write_text(json.dumps(dict(sorted(spills.items())), indent=1) + "\n")
    took = time.time() - start
    if failures:
        print(f"kernel compile check: {len(failures)} variant(s) fail ({took:.0f} s): "
              + " | ".join(failures[:6]) + (" | ..." if len(failures) > 6 else ""))
        return 1
    print(f"kernel compile check: every variant compiles within its target's limits "
          f"({took:.0f} s)")
    return 0


sys.path.insert(0, str(ROOT))

if __name__ == "__main__":
    sys.exit(main())
