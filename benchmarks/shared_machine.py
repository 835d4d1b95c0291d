"""`make demo`'s training speed on a shared machine: quiet, beside a one-thread and
beside a two-thread CPU-bound process (issue 24's targets: at most 2.2x and 3x slower
than quiet).

    python benchmarks/shared_machine.py --out shared-machine   # about 15 min on 2 cores

Each run is `make demo` itself (its fairseq-train command and its thread choice) with
DEMO_UPDATES=--updates in a fresh DEMO_DIR whose corpus is prepared once and copied in;
the speed is updates per second over the training log intervals after the first (fairseq's
own `ups`), so start-up, the corpus and fill-mask are not in it. A competitor is
a separate Python process multiplying 512 x 512 matrices in a loop with 1 or 2 torch
threads, started a second before the run (so that the run sees it as it starts) and
killed after. The settings alternate within each repeat (quiet, 1-thread, 2-thread,
...) so a drift of machine speed hits them alike; the table gives each slowdown per
repeat (quiet speed of the same repeat / speed beside the competitor) and their median.

Run it on an otherwise quiet machine: another job is a competitor the table does not
know about.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
COMPETITOR = ("import torch\ntorch.set_num_threads({threads})\n"
              "a = torch.randn(512, 512)\nwhile True:\n    a = torch.tanh(a @ a)\n")
UPS = re.compile(r", ups=([0-9.]+),")


def speed(log: str) -> float:
    """Updates per second after the first log interval (start-up, the data worker's
    first batches) of a fairseq simple-format log: the train_inner lines' own `ups`
    (each over its interval), combined as total updates over total time."""
    rates = [float(u) for u in UPS.findall(
        "\n".join(line for line in log.splitlines() if "| train_inner |" in line))][1:]
    if not rates:
        raise SystemExit("shared_machine: fewer than two training log lines: "
                         "raise --updates (the demo logs every 50 updates)")
    return len(rates) / sum(1.0 / r for r in rates)


def start_competitor(threads: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.Popen([sys.executable, "-c", COMPETITOR.format(threads=threads)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)  # torch imported and multiplying before the run measures the cores
    return proc


def run_demo(corpus: Path, work: Path, updates: int, competitor: int) -> Dict:
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(corpus, work / "corpus")  # creates work
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    args = ["make", "-C", str(ROOT), "demo", f"DEMO_DIR={work}", f"DEMO_UPDATES={updates}"]
    proc = start_competitor(competitor) if competitor else None
    try:
        done = subprocess.run(args, env=env, capture_output=True, text=True)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
    log = done.stdout + done.stderr
    if done.returncode != 0:
        raise SystemExit(f"shared_machine: make demo failed ({done.returncode}):\n{log[-3000:]}")
    threads = re.search(r"cores are busy with other processes: (\d+) thread", log)
    return dict(updates_per_s=speed(log), threads=int(threads.group(1)) if threads else None)


def table(results: List[Dict]) -> str:
    rows = ["| setting | updates/s per repeat | slowdown vs quiet per repeat "
            "| median slowdown | target |", "|---|---|---|---|---|"]
    targets = {0: "", 1: "<= 2.2", 2: "<= 3"}
    quiet = {r["repeat"]: r["updates_per_s"] for r in results if r["competitor"] == 0}
    for comp in (0, 1, 2):
        mine = [r for r in results if r["competitor"] == comp]
        if not mine:
            continue
        slow = [quiet[r["repeat"]] / r["updates_per_s"] for r in mine if r["repeat"] in quiet]
        name = "quiet" if comp == 0 else f"beside a {comp}-thread process"
        rows.append(f"| {name} | "
                    + ", ".join(f"{r['updates_per_s']:.2f}" for r in mine) + " | "
                    + ", ".join(f"{s:.2f}x" for s in slow) + " | "
                    + (f"{statistics.median(slow):.2f}x" if slow else "") + f" | {targets[comp]} |")
    return "\n".join(rows)


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--updates", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    corpus = args.out / "corpus"
    if not (corpus / "data-bin" / "dict.txt").exists():
        subprocess.run([str(ROOT / ".venv/bin/energy-lm-prepare"), "embedded", "--out",
                        str(corpus), "--workers", "2"], check=True, capture_output=True)
    records = args.out / "runs.jsonl"
    results = [json.loads(line) for line in records.read_text().splitlines()] \
        if records.exists() else []
    for repeat in range(args.repeats):
        for comp in (0, 1, 2):
            key = dict(repeat=repeat, competitor=comp)
            if any(all(r.get(k) == v for k, v in key.items()) for r in results):
                continue  # resumed: done already
            got = run_demo(corpus, args.out / "demo", args.updates, comp)
            results.append({**key, **got})
            with records.open("a") as f:
                f.write(json.dumps(results[-1]) + "\n")
            print(f"repeat {repeat} competitor {comp}: "
                  f"{got['updates_per_s']:.2f} updates/s (threads chosen: {got['threads']})",
                  flush=True)
    text = table(results)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
