"""Does the energy pay for its compute? (issue 37: equal compute, from scratch)

A MonArc (or NCE) update costs more than a cross-entropy update. This study trains, per
seed, the energy run for --updates updates and two CE runs given the same compute:

  ce-flops   as many CE updates as the energy run's floating-point operations buy
  ce-wall    as many CE updates as the energy run's wall-clock buys
  ce-same    the same number of updates (what the earlier tables compared)

The cost of an update is measured here, first (OUT/cost.json): the FLOPs of one training
step (forward and backward; torch's FlopCounterMode on a real batch of the corpus) and
its seconds (median of alternated single-thread steps, in one process so that both see
the same machine). Every run is transformer_lm_alibi_tiny with replicate.py's settings,
its learning rate decaying over its own length. The energy runs are scored with exact Z
on --blocks random valid blocks, the CE runs' LM on the same blocks; the table pairs the
energy run's ELM with each CE run's LM over seeds and blocks (run_scoring.paired_clustered).

    OMP_NUM_THREADS=1 python examples/energy_lm/compute_study.py --data kjv/data-bin \\
        --out compute --updates 1000 --seeds 1 2 3 --jobs 2

Finished runs and evaluations are not redone; OUT/compute.md is rewritten as pieces finish.
"""

import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heldout_study import CRITERIA, exact, fmt, train  # noqa: E402  (same folder)
from replicate import CAUSAL, CAUSAL_ARCH, COMMON  # noqa: E402
from run_scoring import elm_bits, paired_clustered, read_records, study_parser  # noqa: E402


def step_cost(data: Path, criterion: str, steps: int = 5) -> Dict[str, float]:
    """FLOPs and seconds of one training step of `criterion` on a batch of the corpus,
    in this process (one thread)."""
    import torch
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from torch.utils.flop_counter import FlopCounterMode

    import energy_lm  # noqa: F401

    argv = [str(data), *COMMON, *CAUSAL, *CAUSAL_ARCH, *CRITERIA[criterion],
            "--total-num-update", "1000"]  # the schedule is not used here
    argv = [a for a in argv if a not in ("--no-epoch-checkpoints", "--no-last-checkpoints")]
    cfg = convert_namespace_to_omegaconf(
        options.parse_args_and_arch(options.get_training_parser(), argv))
    cfg.common.seed = 1
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(1)
    model = task.build_model(cfg.model).train()
    crit = task.build_criterion(cfg.criterion)
    task.load_dataset("train")
    itr = task.get_batch_iterator(dataset=task.dataset("train"), max_sentences=16, seed=1)
    sample = next(iter(itr.next_epoch_itr(shuffle=False)))

    def step():
        model.zero_grad(set_to_none=True)
        loss, _, _ = crit(model, sample)
        loss.backward()

    step()  # warm-up
    with FlopCounterMode(display=False) as counter:
        step()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return {"flops": float(counter.get_total_flops()), "seconds": statistics.median(seconds)}


def measure(data: Path, out: Path, energy: List[str]) -> Dict[str, Dict[str, float]]:
    """OUT/cost.json: each criterion's step cost, measured alternately in one process."""
    cached = out / "cost.json"
    if cached.exists():
        return json.loads(cached.read_text())
    rounds = {c: [] for c in ["ce", *energy]}
    for _ in range(3):  # alternate, so a busy moment hits every criterion alike
        for criterion in rounds:
            rounds[criterion].append(step_cost(data, criterion))
    cost = {c: {"flops": runs[0]["flops"],
                "seconds": statistics.median(r["seconds"] for r in runs)}
            for c, runs in rounds.items()}
    cached.write_text(json.dumps(cost, indent=1))
    return cost


def plan(cost: Dict[str, Dict[str, float]], energy: List[str], updates: int) -> Dict[str, int]:
    """Run name -> updates: each energy run, and the CE runs given its compute."""
    runs = {"ce-same": updates}
    for criterion in energy:
        runs[criterion] = updates
        for kind, key in (("flops", "flops"), ("wall", "seconds")):
            runs[f"ce-{kind}-{criterion}"] = round(updates * cost[criterion][key] / cost["ce"][key])
    return runs


def table(out: Path, runs: Dict[str, int], energy: List[str], seeds: List[int],
          cost: Dict[str, Dict[str, float]]) -> str:
    lines = ["Cost of one update (measured in one process, one thread): " + ", ".join(
        f"{c} {v['flops'] / 1e9:.2f} GFLOP, {v['seconds']:.3f} s" for c, v in cost.items()), "",
        "| energy run | against | CE updates | seeds | tokens (blocks) | ELM - CE LM |",
        "|---|---|---|---|---|---|"]
    for criterion in energy:
        for against in ("ce-same", f"ce-flops-{criterion}", f"ce-wall-{criterion}"):
            pairs = []
            for seed in seeds:
                a = out / f"{criterion}_seed{seed}" / "last" / "tokens.jsonl"
                b = out / f"{against}_seed{seed}" / "last" / "tokens.jsonl"
                if a.exists() and b.exists():
                    pairs.append((read_records(a), read_records(b)))
            if not pairs:
                continue
            r = paired_clustered(pairs, elm_bits, lambda rec: rec["lm"])
            lines.append(f"| {criterion} ({runs[criterion]} updates) | {against} | {runs[against]} | "
                         f"{len(pairs)} | {r['tokens']} ({r['blocks']}) | {fmt(r['mean'], r['stderr'])} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = study_parser(__doc__)  # --data, --out
    parser.add_argument("--updates", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--energy", nargs="+", default=["monarc", "nce"])
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    cost = measure(args.data, args.out, args.energy)
    runs = plan(cost, args.energy, args.updates)
    (args.out / "plan.json").write_text(json.dumps(runs, indent=1))

    def one(job):
        name, seed = job
        criterion = name if name in CRITERIA else "ce"
        save = train(args.data, args.out / f"{name}_seed{seed}", CRITERIA[criterion],
                     runs[name], seed)
        exact(args.data, save, "checkpoint_last.pt", "last", args.blocks, criterion)
        return job

    jobs = [(name, seed) for seed in args.seeds for name in runs]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for _ in pool.map(one, jobs):
            (args.out / "compute.md").write_text(table(args.out, runs, args.energy, args.seeds,
                                                       cost) + "\n")
    print((args.out / "compute.md").read_text())


if __name__ == "__main__":
    main()
