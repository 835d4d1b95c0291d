"""Print `OMP_WAIT_POLICY=PASSIVE` when the CPUs are busy right now, else nothing
(`make demo` puts the output before its fairseq-train command).

Why: torch's OpenMP threads spin while they wait for each other; when another
CPU-bound process shares the cores, a spinning thread holds a core the other side of
the barrier needs, and the demo ran 3.4x slower (40 updates: 60.8 s against 17.7 s
quiet). PASSIVE threads sleep instead: 1.85x (100 updates: 63.0 s against 34.0 s quiet),
but on a quiet machine they cost about 10% (37.5 s against 34.0 s), so the policy is
set only when the machine is busy when the demo starts: less than half the CPU time
idle over 0.3 s (read from /proc/stat; on a system without it, nothing is printed).
"""

import time


def idle_share(interval: float = 0.3) -> float:
    def sample():
        with open("/proc/stat") as f:
            values = [int(x) for x in f.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, total

    idle0, total0 = sample()
    time.sleep(interval)
    idle1, total1 = sample()
    return (idle1 - idle0) / max(total1 - total0, 1)


def policy() -> str:
    try:
        busy = idle_share() < 0.5
    except OSError:
        busy = False
    return "OMP_WAIT_POLICY=PASSIVE" if busy else ""


if __name__ == "__main__":
    print(policy())
