"""Small-scale replication of the seeds' comparisons on a real corpus, 3 seeds each.

    energy-lm-prepare debian --out debian --workers 2          # ~2.5M words, offline
    python examples/energy_lm/replicate.py --data debian/data-bin --out replication \
        --comparisons mlm causal cwt --jobs 2

Comparisons (tiny 4 x 256 models, blocks of 128 tokens, batch 16, 2 CPU cores):
  mlm     RoBERTa baseline (stock fairseq head, learned positions) vs learned-clap vs
          alibi vs zero-clap at equal updates: valid MLM perplexity.
  causal  CE vs MonArc vs NCE at equal updates (LM ppl; ELM ppl with Z = 1 and with
          log Z from K samples), and CE at MonArc's wall-clock (CE gets the time MonArc
          took, as many updates as fit). ~38 min of one core per seed.
  cwt     masked LM with CE vs headless CWT at equal training time (CWT's share minus
          the time of its head fine-tune), then: accuracy on the docstring
          classification fixtures (energy_lm/configs/glue) fine-tuned from each
          encoder, and valid MLM ppl after CWT's add-head fine-tune.
Threads: runs inherit OMP_NUM_THREADS. `--jobs 2` runs two seeds side by side, each in
its own process with one thread (the runs of one seed stay in order, so its
equal-wall-clock rows see one load); on a 2-core machine that beats one run with 2
threads, and anything else on the machine slows every run (oversubscribed cores made
runs up to 6x slower here).
Every run goes through the real fairseq-train; a finished run (its `done` marker) is
not run again, so an interrupted replication resumes. Results: OUT/results.json and a
markdown table on stdout (mean ± std over seeds).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

BIN = Path(sys.executable).parent
COMMON = ["--tokens-per-sample", "128", "--batch-size", "16", "--optimizer", "adam",
          "--adam-betas", "(0.9,0.98)", "--adam-eps", "1e-6", "--weight-decay", "0.01",
          "--lr", "1e-3", "--lr-scheduler", "polynomial_decay", "--warmup-updates", "60",
          "--dropout", "0.1", "--attention-dropout", "0.0", "--clip-norm", "1.0", "--cpu",
          "--no-epoch-checkpoints", "--no-last-checkpoints", "--log-format", "json",
          "--log-interval", "50", "--num-workers", "0", "--validate-interval-updates", "0"]
TINY_ENCODER = ["--encoder-layers", "4", "--encoder-embed-dim", "256",
                "--encoder-ffn-embed-dim", "1024", "--encoder-attention-heads", "4",
                "--max-positions", "128"]
MLM = ["--task", "masked_lm", "--sample-break-mode", "none"]
CAUSAL = ["--task", "language_modeling", "--sample-break-mode", "none"]
MLM_ARCHS = {  # label: arch flags (the baseline is fairseq's own RoBERTa)
    "baseline": ["--arch", "roberta_base", *TINY_ENCODER],
    "learned-clap": ["--arch", "roberta_clap_tiny", "--max-positions", "128"],
    "alibi": ["--arch", "roberta_alibi_tiny"],
    "zero-clap": ["--arch", "roberta_zero_clap_tiny"],
}
CAUSAL_ARCH = ["--arch", "transformer_lm_alibi_tiny"]
# CWT scores raw input embeddings (no L2 norm, as the original); ALiBi lets a tiny
# encoder learn context in minutes on 2 cores
ENCODER_ARCH = ["--arch", "roberta_alibi_tiny"]
RESET = ["--reset-optimizer", "--reset-lr-scheduler", "--reset-dataloader", "--reset-meters"]


def train(data: Path, save_dir: Path, args: List[str], seed: int, common=COMMON) -> dict:
    """fairseq-train into save_dir (skipped when done); returns the run's summary:
    last valid loss (bits), train wall seconds, updates. common: the flags before args."""
    summary_file = save_dir / "summary.json"
    if summary_file.exists():
        return json.loads(summary_file.read_text())
    save_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(BIN / "fairseq-train"), str(data), *common, *args, "--seed", str(seed),
           "--save-dir", str(save_dir)]
    start = time.time()
    with open(save_dir / "train.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    summary = dict(parse_log(save_dir / "train.log"), seconds=time.time() - start)
    summary_file.write_text(json.dumps(summary))
    return summary


def log_records(path: Path) -> List[dict]:
    """Every json record of a json-format fairseq log, in order."""
    records = []
    for line in path.read_text().splitlines():
        brace = line.find("{")
        if brace < 0:
            continue
        try:
            records.append(json.loads(line[brace:]))
        except json.JSONDecodeError:
            continue
    return records


def parse_log(path: Path) -> dict:
    """The last valid record and the last train record of a json-format fairseq log."""
    valid, train_rec = {}, {}
    for record in log_records(path):
        if "valid_loss" in record:
            valid = record
        elif "train_loss" in record:
            train_rec = record
    if not valid:
        raise RuntimeError(f"{path}: no validation record (did the run fail?)")
    return {"valid_loss": float(valid["valid_loss"]),
            "updates": int(float(train_rec.get("train_num_updates", 0))),
            "train_wall": float(train_rec.get("train_train_wall", 0.0))}


def mean_std(values: List[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    if all(float(v).is_integer() for v in values) and std == 0.0:
        return f"{statistics.mean(values):.0f}"
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def ppl(bits: float) -> float:
    return 2.0 ** bits


# ---------------------------------------------------------------- comparison 1
def compare_mlm(data: Path, out: Path, seeds: List[int], updates: int) -> Dict[str, List[float]]:
    rows: Dict[str, List[float]] = {label: [] for label in MLM_ARCHS}
    for seed in seeds:
        for label, arch in MLM_ARCHS.items():
            run = train(data, out / "mlm" / f"{label}_seed{seed}",
                        [*MLM, "--criterion", "masked_lm", *arch, "--max-update", str(updates),
                         "--total-num-update", str(updates), "--no-save"], seed)
            rows[label].append(ppl(run["valid_loss"]))
    return rows


# ---------------------------------------------------------------- comparison 2
def eval_elm(data: Path, checkpoint: Path, num_samples: int, batches: int) -> dict:
    cached = checkpoint.with_suffix(".elm-eval.json")  # the every-target scoring rule
    if cached.exists():
        return json.loads(cached.read_text())
    from energy_lm.cli.eval_elm import main as eval_main

    result = eval_main([str(data), "--path", str(checkpoint), "--num-samples", str(num_samples),
                        "--batch-size", "4", "--max-batches", str(batches), "--cpu"])
    cached.write_text(json.dumps(result))
    return result


def compare_causal(data: Path, out: Path, seeds: List[int], updates: int, num_samples: int,
                   eval_batches: int) -> Dict[str, List[float]]:
    rows: Dict[str, List[float]] = {}

    def add(key, value):
        rows.setdefault(key, []).append(value)

    for seed in seeds:
        runs = {}
        for criterion in ("cross_entropy", "monarc", "nce"):
            runs[criterion] = train(data, out / "causal" / f"{criterion}_seed{seed}",
                                    [*CAUSAL, "--criterion", criterion, *CAUSAL_ARCH,
                                     "--max-update", str(updates), "--total-num-update",
                                     str(updates)], seed)
        # CE for as long as MonArc trained: stop on time, schedule as if for 4x the updates
        budget_h = runs["monarc"]["train_wall"] / 3600
        runs["ce_equal_time"] = train(
            data, out / "causal" / f"ce_equal_time_seed{seed}",
            [*CAUSAL, "--criterion", "cross_entropy", *CAUSAL_ARCH, "--stop-time-hours",
             f"{budget_h:.6f}", "--max-update", str(4 * updates), "--total-num-update",
             str(4 * updates)], seed)
        for name, run in runs.items():
            add(f"{name}:updates", run["updates"])
            add(f"{name}:seconds", run["train_wall"])
            result = eval_elm(data, out / "causal" / f"{name}_seed{seed}" / "checkpoint_best.pt",
                              num_samples, eval_batches)
            add(f"{name}:lm", ppl(result["lm"]))
            if name in ("monarc", "nce"):
                add(f"{name}:elm_z1", ppl(result["elm_z1"]))
                add(f"{name}:elm_est", ppl(result["elm_est"]))
    return rows


# ---------------------------------------------------------------- comparison 3
def glue_fixture_bins(data: Path, out: Path) -> List[Path]:
    """The docstring classification fixtures in GLUE's formats, binarized with the
    pretraining corpus's BPE and dictionary (built once)."""
    from energy_lm.glue import fixtures, preprocess

    bins = sorted(out.glob("*-bin"))
    if not bins:
        folders = fixtures.build_fixtures(out / "fixtures")
        bins = preprocess.main([str(out / "fixtures"), "--out", str(out), "--tasks", *folders,
                                "--pretrain-bin", str(data)])
    return bins


def fixture_accuracy(task_bin: Path, checkpoint: Path, run: Path, seed: int, updates: int) -> float:
    from energy_lm.glue import collect, finetune

    if not (run / "run.json").exists():
        finetune.main([str(task_bin), "--out", str(run), "--checkpoint", str(checkpoint), "--cpu",
                       "--max-update", str(updates), "--seed", str(seed), "--overwrite"])
    task, scores = collect.read_run(run)
    return collect.cell_numbers(task, scores)[-1] if scores else float("nan")  # percent


def compare_cwt(data: Path, out: Path, seeds: List[int], updates: int,
                glue_updates: int) -> Dict[str, List[float]]:
    """Masked LM by CE for `updates` steps vs CWT for the same training time minus that of
    its head fine-tune (a tenth of `updates` CE steps)."""
    rows: Dict[str, List[float]] = {}

    def add(key, value):
        rows.setdefault(key, []).append(value)

    base = out / "cwt"
    bins = glue_fixture_bins(data, base / "glue")
    head_updates = max(1, updates // 10)
    for seed in seeds:
        ce = train(data, base / f"ce_seed{seed}", [*MLM, "--criterion", "masked_lm", *ENCODER_ARCH,
                                                   "--max-update", str(updates),
                                                   "--total-num-update", str(updates)], seed)
        budget_h = ce["train_wall"] * (1 - head_updates / updates) / 3600
        cwt = train(data, base / f"cwt_seed{seed}",
                    [*MLM, "--criterion", "cwt", *ENCODER_ARCH, "--stop-time-hours",
                     f"{budget_h:.6f}", "--max-update", str(4 * updates), "--total-num-update",
                     str(4 * updates)], seed)
        with_head = base / f"cwt_seed{seed}" / "with_head.pt"
        if not with_head.exists():
            subprocess.run([str(BIN / "energy-lm-add-head"),
                            str(base / f"cwt_seed{seed}" / "checkpoint_best.pt"), str(with_head)],
                           check=True, capture_output=True)
        head = train(data, base / f"cwt_head_seed{seed}",
                     [*MLM, "--criterion", "masked_lm", *ENCODER_ARCH, "--untied-head",
                      "--restore-file", str(with_head), *RESET, "--max-update", str(head_updates),
                      "--total-num-update", str(head_updates)], seed)
        add("ce:updates", ce["updates"])
        add("ce:seconds", ce["train_wall"])
        add("cwt:updates", cwt["updates"])
        add("cwt:seconds", cwt["train_wall"] + head["train_wall"])
        add("ce:mlm_ppl", ppl(ce["valid_loss"]))
        add("cwt:mlm_ppl", ppl(head["valid_loss"]))
        for name in ("ce", "cwt"):
            checkpoint = base / f"{name}_seed{seed}" / "checkpoint_best.pt"
            for task_bin in bins:
                task = task_bin.name[:-len("-bin")]
                acc = fixture_accuracy(task_bin, checkpoint,
                                       base / "finetune" / f"{name}_{task}_seed{seed}", seed,
                                       glue_updates)
                add(f"{name}:{task}", acc)
    return rows


def print_tables(results: dict, args) -> None:
    if "mlm" in results:
        print(f"\n### MLM ({args.updates} updates, seeds {args.seeds}): valid MLM perplexity\n")
        print("| model | valid MLM ppl |\n|---|---|")
        for label, values in results["mlm"].items():
            print(f"| {label} | {mean_std(values)} |")
    if "causal" in results:
        r = results["causal"]
        print(f"\n### Causal LM (valid perplexity; ELM log Z from K = {args.num_samples} "
              f"samples; seeds {args.seeds})\n")
        print("| run | updates | train s | LM ppl | ELM ppl, Z = 1 | ELM ppl, K-sample log Z |")
        print("|---|---|---|---|---|---|")
        labels = {"cross_entropy": "CE", "monarc": "MonArc", "nce": "NCE",
                  "ce_equal_time": "CE, MonArc's wall-clock"}
        for name, label in labels.items():
            if f"{name}:lm" in r:
                print(f"| {label} | {mean_std(r[f'{name}:updates'])} | "
                      f"{mean_std(r[f'{name}:seconds'])} | {mean_std(r[f'{name}:lm'])} | "
                      f"{mean_std(r.get(f'{name}:elm_z1', []))} | "
                      f"{mean_std(r.get(f'{name}:elm_est', []))} |")
    if "cwt" in results:
        r = results["cwt"]
        tasks = sorted({key.split(":")[1] for key in r} - {"updates", "seconds", "mlm_ppl"})
        print(f"\n### CE vs CWT masked LM at equal training time (seeds {args.seeds})\n")
        print("| pretraining | updates | train s | valid MLM ppl | " +
              " | ".join(f"{t} dev acc" for t in tasks) + " |")
        print("|---|---|---|---|" + "---|" * len(tasks))
        for name, label in (("ce", "CE (masked_lm)"), ("cwt", "CWT + add-head fine-tune")):
            print(f"| {label} | {mean_std(r[f'{name}:updates'])} | {mean_std(r[f'{name}:seconds'])} | "
                  f"{mean_std(r[f'{name}:mlm_ppl'])} | " +
                  " | ".join(mean_std(r[f"{name}:{t}"]) for t in tasks) + " |")


def seeds_side_by_side(comparison: str, args) -> Dict[str, List[float]]:
    """Run each seed of a comparison as its own process of this script, `args.jobs` at a
    time with one thread each (the runs of one seed stay sequential, so its equal-time
    rows see one load), and merge their rows in seed order."""
    if comparison == "cwt":  # shared by every seed: build it once, before the children
        glue_fixture_bins(args.data, args.out / "cwt" / "glue")
    rows_dir = args.out / comparison
    rows_dir.mkdir(parents=True, exist_ok=True)

    def one_seed(seed: int) -> dict:
        rows_file = rows_dir / f"rows_seed{seed}.json"
        cmd = [sys.executable, __file__, "--data", str(args.data), "--out", str(args.out),
               "--comparisons", comparison, "--seeds", str(seed), "--updates", str(args.updates),
               "--num-samples", str(args.num_samples), "--eval-batches", str(args.eval_batches),
               "--glue-updates", str(args.glue_updates), "--rows-only", str(rows_file)]
        with open(rows_dir / f"seed{seed}.log", "w") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
        return json.loads(rows_file.read_text())

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        per_seed = list(pool.map(one_seed, args.seeds))
    merged: Dict[str, List[float]] = {}
    for rows in per_seed:
        for key, values in rows.items():
            merged.setdefault(key, []).extend(values)
    return merged


def run_comparison(comparison: str, args) -> Dict[str, List[float]]:
    if args.jobs > 1 and len(args.seeds) > 1:
        return seeds_side_by_side(comparison, args)
    if comparison == "mlm":
        return compare_mlm(args.data, args.out, args.seeds, args.updates)
    if comparison == "causal":
        return compare_causal(args.data, args.out, args.seeds, args.updates, args.num_samples,
                              args.eval_batches)
    return compare_cwt(args.data, args.out, args.seeds, args.updates, args.glue_updates)


def main(argv: Optional[List[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="data-bin (energy-lm-prepare)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--comparisons", nargs="+", default=["mlm", "causal", "cwt"],
                        choices=["mlm", "causal", "cwt"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--updates", type=int, default=500)
    parser.add_argument("--num-samples", type=int, default=8, help="K for the ELM's log Z")
    parser.add_argument("--eval-batches", type=int, default=50, help="valid batches of 4 blocks")
    parser.add_argument("--glue-updates", type=int, default=300,
                        help="fine-tuning updates on each fixture task (comparison cwt)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="seeds run side by side, one thread each (2 on a 2-core machine)")
    parser.add_argument("--rows-only", type=Path, help=argparse.SUPPRESS)  # one seed's child
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.rows_only:  # a child of seeds_side_by_side: its rows, no table
        if len(args.comparisons) != 1 or args.jobs != 1:
            parser.error("--rows-only takes one comparison and --jobs 1")
        rows = run_comparison(args.comparisons[0], args)
        args.rows_only.write_text(json.dumps(rows))
        return rows
    results_file = args.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    for comparison in args.comparisons:
        started = time.time()
        results[comparison] = run_comparison(comparison, args)
        results.setdefault("minutes", {})[comparison] = (time.time() - started) / 60
        results_file.write_text(json.dumps(results, indent=1))
    print_tables(results, args)
    return results


if __name__ == "__main__":
    main()
