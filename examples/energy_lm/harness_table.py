"""The shipped lm-evaluation-harness tasks on the three causal families this package
trains: a CE LM, a MonArc ELM (scored by its LM q and by its ELM, log Z estimated or
exact) and a headless CWT LM given a head and a short CE fine-tune (the README's
commands), all tiny transformer_lm models trained through fairseq-train on one corpus.

    energy-lm-prepare embedded --out demo/corpus --workers 2     # make demo's corpus
    python examples/energy_lm/harness_table.py --data demo/corpus/data-bin --out harness-table

Every run and evaluation is skipped when its output exists, so an interrupted table
resumes. One thread (OMP_NUM_THREADS=1 unless set): it may run beside another job.
Prints (and writes OUT/table.md) each task's metrics with the harness's standard errors
and each evaluation's seconds per request, then the harness's time per token on the
test split next to energy-lm-eval-elm's on the same split.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replicate import BIN, CAUSAL, RESET, train  # noqa: E402  (same folder)

TASKS = ["energy_lm_lastword", "energy_lm_cloze", "energy_lm_perplexity"]
# (task, metric) columns of the table, the harness's own metric names
COLUMNS = [("energy_lm_lastword", "acc"), ("energy_lm_lastword", "perplexity"),
           ("energy_lm_cloze", "acc"), ("energy_lm_cloze", "acc_norm"),
           ("energy_lm_perplexity", "bits_per_byte")]
CAUSAL_ARCH = ["--arch", "transformer_lm_alibi_tiny"]
CWT_ARCH = ["--arch", "transformer_lm_clap_tiny"]  # the README's headless LM


def trained(data: Path, out: Path, updates: int, seed: int) -> Dict[str, Path]:
    """The checkpoints to score: CE and MonArc from scratch, CWT + head + CE fine-tune."""
    steps = ["--max-update", str(updates), "--total-num-update", str(updates)]
    runs = {}
    for label, flags in (("cross_entropy", [*CAUSAL_ARCH, "--criterion", "cross_entropy"]),
                         ("monarc", [*CAUSAL_ARCH, "--criterion", "monarc"]),
                         ("cwt", [*CWT_ARCH, "--criterion", "cwt"])):
        train(data, out / label, [*CAUSAL, *flags, *steps], seed)
        runs[label] = out / label / "checkpoint_best.pt"
    headless, headed = runs.pop("cwt"), out / "cwt" / "headed.pt"
    if not headed.exists():
        subprocess.run([str(BIN / "energy-lm-add-head"), str(headless), str(headed)],
                       check=True, capture_output=True)
    fine = max(updates // 3, 1)
    train(data, out / "cwt_head", [*CAUSAL, *CWT_ARCH, "--untied-head", "--restore-file",
                                   str(headed), *RESET, "--criterion", "cross_entropy",
                                   "--lr", "1e-4", "--warmup-updates", "0", "--max-update",
                                   str(fine), "--total-num-update", str(fine)], seed)
    runs["cwt + head"] = out / "cwt_head" / "checkpoint_best.pt"
    return runs


def harness(data: Path, tasks_dir: Path, checkpoint: Path, scoring: str, log_z: str,
            out: Path, limit: int) -> dict:
    """energy-lm-harness on the shipped tasks; returns its results and wall seconds."""
    record = out / "record.json"
    if record.exists():
        return json.loads(record.read_text())
    model_args = f"path={checkpoint},data={data},scoring={scoring}"
    if scoring == "elm":
        model_args += f",log_z={log_z}"
    start = time.time()
    subprocess.run([str(BIN / "energy-lm-harness"), "--model_args", model_args, "--tasks",
                    *TASKS, "--include_path", str(tasks_dir), "--limit", str(limit),
                    "--output_path", str(out / "results"), "--verbosity", "WARNING"],
                   check=True, capture_output=True)
    seconds = time.time() - start
    results = json.loads(next((out / "results").rglob("results_*.json")).read_text())
    requests = sum(n["effective"] for n in results["n-samples"].values())
    kept = dict(results=results["results"], seconds=seconds, documents=requests)
    record.write_text(json.dumps(kept, indent=1))
    return kept


def timing(data: Path, tasks_dir: Path, checkpoint: Path, out: Path) -> dict:
    """The test split's tokens two ways: the perplexity task on the whole split through
    the harness (scored by the LM, then by the ELM with the top-16 + 16-sample estimate
    of log Z), and energy-lm-eval-elm on the split (LM and ELM in one pass, the same
    estimate). Wall seconds of each and eval-elm's token count."""
    record = out / "timing.json"
    if record.exists():
        return json.loads(record.read_text())
    out.mkdir(parents=True, exist_ok=True)
    kept = {}
    for scoring in ("lm", "elm"):
        model_args = f"path={checkpoint},data={data},scoring={scoring}"
        if scoring == "elm":
            model_args += ",log_z=estimate,topk=16,num_samples=16"
        start = time.time()
        subprocess.run([str(BIN / "energy-lm-harness"), "--model_args", model_args, "--tasks",
                        "energy_lm_perplexity", "--include_path", str(tasks_dir),
                        "--output_path", str(out / f"results-{scoring}"), "--verbosity",
                        "WARNING"], check=True, capture_output=True)
        kept[f"harness_{scoring}_s"] = time.time() - start
    start = time.time()
    subprocess.run([str(BIN / "energy-lm-eval-elm"), str(data), "--path", str(checkpoint),
                    "--split", "test", "--topk", "16", "--num-samples", "16", "--cpu",
                    "--json", str(out / "eval-elm.json")], check=True, capture_output=True)
    kept["eval_elm_s"] = time.time() - start
    kept["tokens"] = json.loads((out / "eval-elm.json").read_text())["tokens"]
    record.write_text(json.dumps(kept, indent=1))
    return kept


def cell(results: dict, task: str, metric: str) -> str:
    value = results[task].get(f"{metric},none")
    error = results[task].get(f"{metric}_stderr,none")
    if not isinstance(error, (int, float)):
        return f"{value:.3f}"
    return f"{value:.3f} ± {error:.3f}"


def table(rows: List[tuple], limit: int, updates: int) -> str:
    head = " | ".join(f"{task.replace('energy_lm_', '')} {metric}" for task, metric in COLUMNS)
    lines = [f"Shipped tasks, the first {limit} documents of each (± the harness's standard "
             f"error); models trained {updates} updates:", "",
             f"| model | scoring | {head} | s per document |",
             "|---|---|" + "---|" * len(COLUMNS) + "---|"]
    for label, scoring, kept in rows:
        cells = " | ".join(cell(kept["results"], task, metric) for task, metric in COLUMNS)
        lines.append(f"| {label} | {scoring} | {cells} | "
                     f"{kept['seconds'] / kept['documents']:.2f} |")
    return "\n".join(lines)


def timing_table(kept: dict) -> str:
    per = 1000 / kept["tokens"]
    return "\n".join([
        f"The MonArc checkpoint on the test split's {kept['tokens']} tokens, wall seconds "
        "per 1,000 tokens (one thread; log Z by the top-16 + 16-sample estimate):", "",
        "| harness, LM | harness, ELM | energy-lm-eval-elm (LM and ELM in one pass) |",
        "|---|---|---|",
        f"| {kept['harness_lm_s'] * per:.2f} | {kept['harness_elm_s'] * per:.2f} | "
        f"{kept['eval_elm_s'] * per:.2f} |"])


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="an energy-lm-prepare data-bin")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--updates", type=int, default=600, help="CE, MonArc and CWT runs")
    parser.add_argument("--limit", type=int, default=100, help="documents per task")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log-z", choices=["estimate", "exact"], default="estimate",
                        help="the ELM's log Z (exact: V energies at every position of a "
                             "request's window, ~60x the estimate's cost)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    data, out = args.data.resolve(), args.out.resolve()
    tasks_dir = out / "tasks"
    if not (tasks_dir / "energy_lm_cloze.yaml").is_file():
        subprocess.run([str(BIN / "energy-lm-harness-tasks"), str(tasks_dir), "--corpus",
                        str(data.parent)], check=True, capture_output=True)
    runs = trained(data, out, args.updates, args.seed)
    rows = []
    for label, checkpoint in runs.items():
        for scoring in (("lm", "elm") if label == "monarc" else ("lm",)):
            name = f"{label.replace(' + ', '_')}-{scoring}"
            if scoring == "elm":
                name += f"-{args.log_z}"
            kept = harness(data, tasks_dir, checkpoint, scoring, args.log_z,
                           out / "harness" / name, args.limit)
            rows.append((label, f"elm ({args.log_z} Z)" if scoring == "elm" else scoring, kept))
    text = table(rows, args.limit, args.updates)
    text += "\n\n" + timing_table(timing(data, tasks_dir, runs["monarc"], out / "timing"))
    (out / "table.md").write_text(text + "\n")
    print(text)
    return text


if __name__ == "__main__":
    main()
