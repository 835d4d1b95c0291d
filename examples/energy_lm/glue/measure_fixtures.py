"""Does the fine-tune learn, and does pretraining help? A tiny pretrained encoder vs the
same model from random initialisation on the two docstring fixture tasks
(energy_lm.glue.fixtures), with identical fine-tuning settings.

    python examples/energy_lm/glue/measure_fixtures.py --out /tmp/glue_meas

Stages, each skipped when its output is there (an interrupted run resumes):
1. the embedded corpus (`energy-lm-prepare embedded`);
2. pretraining as `make demo` does: roberta_zero_clap_tiny (4 x 256, CLAP head, ALiBi),
   masked LM, --pretrain-updates updates of 16 x 128 tokens;
3. the fixtures (seed 1), preprocessed with the corpus's byte-level BPE and dictionary;
4. for each seed, both tasks fine-tuned through energy_lm.glue.finetune from the
   checkpoint and from random init (same arch, same YAML, same overrides);
5. the dev-score table (energy_lm.glue.collect: median over seeds), every run's
   numbers, and the wall and CPU time of each stage (OUT/timings.json).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from energy_lm.glue import collect, finetune, preprocess
from energy_lm.glue.fixtures import build_fixtures

BIN = Path(sys.executable).parent
ARCH = "roberta_zero_clap_tiny"
TASKS = ("SST-2", "MRPC")  # the fixtures' formats: class-or-function, same-module


def pretrain_command(data_bin: Path, save_dir: Path, updates: int):
    """`make demo`'s fairseq-train command (Makefile), into save_dir."""
    return [str(BIN / "fairseq-train"), str(data_bin), "--task", "masked_lm",
            "--criterion", "masked_lm", "--arch", ARCH, "--tokens-per-sample", "128",
            "--sample-break-mode", "none", "--batch-size", "16", "--optimizer", "adam",
            "--adam-betas", "(0.9,0.98)", "--adam-eps", "1e-6", "--weight-decay", "0.01",
            "--lr", "1e-3", "--lr-scheduler", "polynomial_decay", "--warmup-updates", "60",
            "--total-num-update", str(updates), "--max-update", str(updates),
            "--dropout", "0.1", "--attention-dropout", "0.0", "--clip-norm", "1.0",
            "--save-dir", str(save_dir), "--no-epoch-checkpoints", "--log-format", "simple",
            "--log-interval", "50", "--seed", "1"]


def cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes (user + system):
    on a shared machine the wall time also counts other people's jobs."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(timings: dict, name: str, fn, *args):
    start, cpu = time.time(), cpu_seconds()
    result = fn(*args)
    timings[name] = {"wall": round(time.time() - start, 1), "cpu": round(cpu_seconds() - cpu, 1)}
    print(f"[{name}: {timings[name]['wall']:.0f} s wall, {timings[name]['cpu']:.0f} s CPU]", flush=True)
    return result


def run_logged(cmd, log: Path) -> None:
    with open(log, "w") as out:
        subprocess.run(cmd, check=True, stdout=out, stderr=subprocess.STDOUT)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pretrain-updates", type=int, default=900)
    parser.add_argument("--updates", type=int, default=300, help="fine-tuning updates per run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--runs-dir", default="runs", help="sub-folder of OUT for the fine-tunes")
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS of every run (default 1: on a busy 2-core machine, "
                             "2 threads made each op wait at OpenMP barriers, up to 300x slower)")
    args = parser.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings_file = out / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}

    data_bin = out / "corpus" / "data-bin"
    if not (data_bin / "dict.txt").exists():
        timed(timings, "corpus", run_logged, [str(BIN / "energy-lm-prepare"), "embedded", "--out",
              str(out / "corpus"), "--workers", "2"], out / "corpus.log")
    checkpoint = out / "pretrain" / "checkpoint_last.pt"
    pretrain_log = out / "pretrain.log"
    if not pretrain_log.exists() or "done training" not in pretrain_log.read_text():
        timed(timings, "pretrain", run_logged,
              pretrain_command(data_bin, out / "pretrain", args.pretrain_updates), pretrain_log)
    glue_bin = out / "glue-bin"
    if not all((glue_bin / f"{task}-bin" / "glue.json").exists() for task in TASKS):
        timed(timings, "fixtures+preprocess", lambda: (
            build_fixtures(out / "fixtures", seed=1),
            preprocess.main([str(out / "fixtures"), "--out", str(glue_bin), "--pretrain-bin", str(data_bin)])))

    runs = out / args.runs_dir
    settings = ["--max-update", str(args.updates), "--batch-size", str(args.batch_size),
                "--lr", str(args.lr)]
    sources = {"pretrained": ["--checkpoint", str(checkpoint)],
               "random init": ["--random-init", "--arch", ARCH]}
    for seed in args.seeds:
        for task in args.tasks:
            for name, source in sources.items():
                run_dir = runs / name.replace(" ", "-") / f"{task}-seed{seed}"
                done = run_dir / "run.json"
                if done.exists() and json.loads(done.read_text())["returncode"] == 0:
                    continue
                timed(timings, f"{args.runs_dir}: {name} {task} seed {seed}", finetune.main,
                      [str(glue_bin / f"{task}-bin"), *source, "--out", str(run_dir), "--overwrite",
                       *settings, "--seed", str(seed)])
                timings_file.write_text(json.dumps(timings, indent=1) + "\n")
    timings_file.write_text(json.dumps(timings, indent=1) + "\n")

    rows = [(name, [collect.read_run(p) for p in collect.find_runs(runs / name.replace(" ", "-"))])
            for name in sources]
    lines = [collect.format_table(rows), "", "Every run (dev, at its best validation):"]
    for name, row_runs in rows:
        for task in args.tasks:
            numbers = [collect.cell_numbers(t, s) for t, s in row_runs if t.name == task and s]
            shown = "  ".join("/".join(f"{x:.1f}" for x in n) for n in numbers)
            means = [statistics.fmean(col) for col in zip(*numbers)]
            lines.append(f"  {name:12} {task:6} {shown}   mean {'/'.join(f'{m:.1f}' for m in means)}")
    # the shared stages, and this runs-dir's fine-tunes
    shown = {k.removeprefix(f"{args.runs_dir}: "): v for k, v in timings.items()
             if ": " not in k or k.startswith(f"{args.runs_dir}: ")}
    total = {kind: sum(t[kind] for t in shown.values()) for kind in ("wall", "cpu")}
    lines += ["", "Seconds (wall / CPU): " + ", ".join(
        f"{k} {v['wall']:.0f}/{v['cpu']:.0f}" for k, v in shown.items()),
        f"Total: {total['wall'] / 60:.1f} min wall, {total['cpu'] / 60:.1f} min CPU"]
    report = "\n".join(lines)
    (out / f"{args.runs_dir}-table.md").write_text(report + "\n")
    return report


if __name__ == "__main__":
    print(main())
