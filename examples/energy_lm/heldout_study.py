"""Does the energy help on text it was not tuned on? (issue 37, the generalisation arm)

On corpora that played no part in choosing the defaults (the embedded corpus; the King
James Bible, `energy-lm-prepare kjv`), transformer_lm_alibi_tiny with replicate.py's
settings (blocks of 128, batch 16, lr 1e-3, warmup 60) is trained from scratch for
--epochs epochs with each criterion at its defaults (cross_entropy, monarc, nce), for each
seed, keeping a checkpoint per epoch. Then, per run:

  per epoch   the training log's train and valid energy_acc, and eval-elm's labelled
              estimate of ELM - LM on the whole valid split (top-8 + 8 tail samples): the
              energy's train/valid gap as training repeats the corpus
  last epoch  exact Z on --blocks valid blocks drawn at random (--block-seed 1, the same
              blocks for every run of a corpus), token by token: ELM - LM, ELM - CE and
              LM - CE paired over seeds and tokens, the standard error bootstrapped over
              blocks and seeds (run_scoring.paired_clustered)

    energy-lm-prepare embedded --out embedded --workers 2
    energy-lm-prepare kjv --out kjv --workers 2
    OMP_NUM_THREADS=1 python examples/energy_lm/heldout_study.py --out heldout \\
        --corpus embedded=embedded/data-bin kjv=kjv/data-bin --jobs 2

Runs resume where they stopped (a checkpoint every 100 updates, the log appended);
finished runs and evaluations are not redone; OUT/heldout.md is rewritten after every
finished piece, so an interrupted study leaves its partial tables.
"""

import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replicate import BIN, CAUSAL, CAUSAL_ARCH, COMMON, log_records  # noqa: E402
from run_scoring import (  # noqa: E402
    elm_bits, paired_clustered, read_records, run_eval_elm, score_whole_split)

CRITERIA = {"ce": ["--criterion", "cross_entropy"], "monarc": ["--criterion", "monarc"],
            "nce": ["--criterion", "nce"]}
# replicate.py's flags, keeping a checkpoint per epoch and checkpoint_last (to resume)
RESUMABLE = [f for f in COMMON if f not in ("--no-epoch-checkpoints", "--no-last-checkpoints")]


def updates_per_epoch(data: Path, block: int = 128, batch: int = 16) -> int:
    """Batches of an epoch of the train split in blocks of `block` tokens (sample-break
    mode none: the split is one stream)."""
    import math
    import struct

    # fairseq's mmap index: 9-byte magic, version <Q, dtype code <B, ...; the .bin file
    # holds the tokens at that dtype's width (codes 1-8: u1 i1 i2 i4 i8 f8 f4 u2)
    header = (data / "train.idx").read_bytes()[:18]
    width = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 8, 7: 4, 8: 2}[struct.unpack("<B", header[17:18])[0]]
    tokens = (data / "train.bin").stat().st_size // width
    return math.ceil(math.ceil(tokens / block) / batch)


def train(data: Path, save: Path, flags: List[str], updates: int, seed: int,
          keep_interval: int = 1) -> Path:
    """fairseq-train for `updates` updates into save, with the learning rate decaying over
    them as replicate.py's runs decay over theirs (flags: the criterion's, and e.g.
    --max-epoch); resumed from checkpoint_last.pt after an interruption, its log appended;
    done when save/done exists. A checkpoint per epoch is kept, and the last
    `keep_interval` of those saved every 100 updates (-1: all)."""
    if (save / "done").exists():
        return save
    save.mkdir(parents=True, exist_ok=True)
    cmd = [str(BIN / "fairseq-train"), str(data), *RESUMABLE, *CAUSAL, *CAUSAL_ARCH, *flags,
           "--max-update", str(updates), "--total-num-update", str(updates),
           "--save-interval-updates", "100", "--keep-interval-updates", str(keep_interval),
           "--seed", str(seed), "--save-dir", str(save)]
    with open(save / "train.log", "a") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    (save / "done").write_text("")
    return save


def epoch_metrics(save: Path) -> Dict[int, dict]:
    """Per epoch: the train and valid records of the log (the last of each epoch)."""
    out: Dict[int, dict] = {}
    for record in log_records(save / "train.log"):
        if "valid_loss" in record:
            out.setdefault(int(record["epoch"]), {})["valid"] = record
        elif "train_loss" in record:
            out.setdefault(int(record["epoch"]), {})["train"] = record
    return out


def scoring_point(save: Path, checkpoint: str, name: str) -> Path:
    """save/name, where run_scoring scores save/checkpoint (its checkpoint_best.pt: a link)."""
    point = save / name
    point.mkdir(exist_ok=True)
    link = point / "checkpoint_best.pt"
    if not link.is_symlink():
        link.symlink_to(f"../{checkpoint}")
    return point


def estimate(data: Path, save: Path, epoch: int) -> dict:
    """eval-elm's labelled figures on the whole valid split for one epoch's checkpoint."""
    return score_whole_split(data, scoring_point(save, f"checkpoint{epoch}.pt", f"epoch{epoch}"))


def exact(data: Path, save: Path, checkpoint: str, point_name: str, blocks: int,
          criterion: str) -> Path:
    """Per-token records of save/checkpoint on the random blocks, in save/point_name (exact
    Z for the energy runs; a CE run's LM only: its energy head never trained, E = 0)."""
    point = scoring_point(save, checkpoint, point_name)
    records = point / "tokens.jsonl"
    if not records.exists():
        flags = ["--batch-size", "1", "--blocks", str(blocks), "--block-seed", "1",
                 "--per-token", str(records)]
        if criterion != "ce":
            flags.append("--exact-z")
        run_eval_elm(data, point, flags, "exact.txt")
    return records


def fmt(mean: float, err: float) -> str:
    return f"{mean:+.4f} ± {err:.4f}"


def corpus_tables(name: str, runs: Dict[str, Dict[int, Path]], epochs: int,
                  finals: Dict[str, Dict[int, Path]]) -> str:
    lines = [f"### {name}", "", "Per epoch, mean over seeds (± s.e. over seeds): train / valid "
             "energy_acc from the training log; valid ELM - LM by eval-elm's top-8 + 8 estimate "
             "(whole split)", "",
             "| criterion | epoch | train energy_acc | valid energy_acc | valid ELM - LM (estimate) |",
             "|---|---|---|---|---|"]
    for criterion in ("monarc", "nce"):
        for epoch in range(1, epochs + 1):
            cells = {"train": [], "valid": [], "gain": []}
            for save in runs.get(criterion, {}).values():
                metrics = epoch_metrics(save).get(epoch, {})
                if "train" in metrics:
                    cells["train"].append(float(metrics["train"]["train_energy_acc"]))
                if "valid" in metrics:
                    cells["valid"].append(float(metrics["valid"]["valid_energy_acc"]))
                cached = save / f"epoch{epoch}" / "elm-whole.json"
                if cached.exists():
                    w = json.loads(cached.read_text())
                    cells["gain"].append(w["elm_est"] - w["lm"])
            if not any(cells.values()):
                continue
            lines.append(f"| {criterion} | {epoch} | " + " | ".join(
                over(cells[k], signed=(k == "gain")) for k in ("train", "valid", "gain")) + " |")
    lines += ["", "Last epoch, exact Z on the same random valid blocks, paired over seeds and "
              "tokens (± s.e. bootstrapped over blocks and seeds)", "",
              "| criterion | seeds | tokens (blocks) | ELM - LM | ELM - CE | LM - CE |",
              "|---|---|---|---|---|---|"]
    ce = finals.get("ce", {})
    for criterion in ("monarc", "nce"):
        mine = finals.get(criterion, {})
        seeds = sorted(s for s in mine if s in ce)
        if not seeds:
            continue
        pairs = [(read_records(mine[s]), read_records(ce[s])) for s in seeds]
        own = paired_clustered([(a, a) for a, _ in pairs], elm_bits, lambda r: r["lm"])
        vs_ce = paired_clustered(pairs, elm_bits, lambda r: r["lm"])
        price = paired_clustered(pairs, lambda r: r["lm"], lambda r: r["lm"])
        lines.append(f"| {criterion} | {len(seeds)} | {own['tokens']} ({own['blocks']}) | "
                     f"{fmt(own['mean'], own['stderr'])} | {fmt(vs_ce['mean'], vs_ce['stderr'])} | "
                     f"{fmt(price['mean'], price['stderr'])} |")
    return "\n".join(lines)


def over(values: List[float], signed: bool = False) -> str:
    if not values:
        return ""
    mean = statistics.mean(values)
    text = f"{mean:+.4f}" if signed else f"{mean:.4f}"
    if len(values) > 1:
        text += f" ± {statistics.stdev(values) / len(values) ** 0.5:.4f}"
    return text + ("" if len(values) > 1 else " (1 seed)")


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", nargs="+", required=True, metavar="NAME=DATA_BIN")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--blocks", type=int, default=20,
                        help="random valid blocks scored with exact Z at the last epoch")
    parser.add_argument("--criteria", nargs="+", default=list(CRITERIA), choices=list(CRITERIA))
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    corpora = dict(item.split("=", 1) for item in args.corpus)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    jobs = [(name, criterion, seed) for name in corpora for seed in args.seeds
            for criterion in args.criteria]
    runs: Dict[str, Dict[str, Dict[int, Path]]] = {name: {} for name in corpora}
    finals: Dict[str, Dict[str, Dict[int, Path]]] = {name: {} for name in corpora}

    def write_tables():
        text = "\n\n".join(corpus_tables(n, runs[n], args.epochs, finals[n]) for n in corpora)
        (args.out / "heldout.md").write_text(text + "\n")

    def one(job):
        name, criterion, seed = job
        data = Path(corpora[name])
        save = train(data, args.out / name / f"{criterion}_seed{seed}",
                     [*CRITERIA[criterion], "--max-epoch", str(args.epochs)],
                     args.epochs * updates_per_epoch(data), seed)
        runs[name].setdefault(criterion, {})[seed] = save
        if criterion != "ce":
            for epoch in range(1, args.epochs + 1):
                estimate(data, save, epoch)
        finals[name].setdefault(criterion, {})[seed] = exact(
            data, save, f"checkpoint{args.epochs}.pt", f"epoch{args.epochs}", args.blocks, criterion)
        return job

    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for job in pool.map(one, jobs):
            write_tables()
            print("done:", *job, flush=True)
    write_tables()
    print((args.out / "heldout.md").read_text())


if __name__ == "__main__":
    main()
