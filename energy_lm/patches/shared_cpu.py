"""Threads for the cores that are free when a CPU run starts.

torch takes every core by default, and its OpenMP threads spin while they wait for each
other. Beside one other busy process on a 2-core machine, a 2-thread run keeps waiting
for the thread that shares its core with that process: `make demo` trained at 0.26-0.44
updates/s against 3.6 quiet. So a CPU run that was not told its thread count
(OMP_NUM_THREADS, or torch.set_num_threads before fairseq builds its trainer) counts the
cores other processes keep busy, over 0.3 s of /proc/stat on the cores this process may
use, and takes the rest, at least one; on a quiet machine nothing changes. With one
thread no OpenMP thread waits for another, so the wait policy no longer matters.

`install()` wraps fairseq's Trainer (fairseq-train and fairseq-hydra-train on the CPU);
the package's tools call `fit_threads()` at start. One log line says what was chosen.
"""

import logging
import os
import time
from typing import Dict, Optional, Sequence, Tuple

from energy_lm.patches.replace import replace

logger = logging.getLogger(__name__)
_DONE = {"fitted": False}


def cpu_times(cpus: Optional[Sequence[int]] = None) -> Dict[int, Tuple[int, int]]:
    """{cpu: (idle + iowait, total)} jiffies from /proc/stat, for the given cpus."""
    times = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            cpu = int(name[3:])
            if cpus is None or cpu in cpus:
                numbers = [int(v) for v in values]
                times[cpu] = (numbers[3] + numbers[4], sum(numbers))
    return times


def busy_cores(interval: float = 0.3) -> Tuple[float, int]:
    """(cores kept busy by other processes, cores this process may use), measured while
    this process sleeps."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    before = cpu_times(cpus)
    time.sleep(interval)
    after = cpu_times(cpus)
    busy = 0.0
    for cpu, (idle1, total1) in after.items():
        idle0, total0 = before.get(cpu, (idle1, total1))
        busy += 1.0 - (idle1 - idle0) / max(total1 - total0, 1)
    return busy, len(after)


def threads_for(busy: float, cores: int) -> int:
    """The cores left free, at least one: a core counts as busy from half its time on."""
    return max(1, cores - int(busy + 0.5))


def fit_threads(interval: float = 0.3) -> Optional[int]:
    """Lower torch's thread count to the free cores, once per process, unless the user set
    OMP_NUM_THREADS or torch's count is already at most that. Returns the count chosen
    (None when nothing was measured)."""
    if _DONE["fitted"] or "OMP_NUM_THREADS" in os.environ:
        return None
    _DONE["fitted"] = True
    import torch

    try:
        busy, cores = busy_cores(interval)
    except (OSError, ValueError):  # no /proc/stat: leave torch's default
        return None
    threads = threads_for(busy, cores)
    if threads < torch.get_num_threads():
        logger.info(f"{busy:.1f} of {cores} cores are busy with other processes: "
                    f"{threads} thread(s) (set OMP_NUM_THREADS to choose)")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def install() -> None:
    """Fit the threads when fairseq builds a Trainer on the CPU (idempotent)."""
    from fairseq.trainer import Trainer

    replace(Trainer, "__init__", _fitting_threads)


def _fitting_threads(original):
    def __init__(self, cfg, *args, **kwargs):
        import torch

        if getattr(cfg.common, "cpu", False) or not torch.cuda.is_available():
            fit_threads()
        original(self, cfg, *args, **kwargs)

    __init__.__doc__ = original.__doc__
    return __init__
