"""How biased is the ELM's log Z estimate? Measured against exact Z on a checkpoint.

At the first positions of a split, every vocabulary entry's energy is computed once
(exact Z). The estimators are then replayed many times from those energies, drawing
their samples from q exactly as energy-lm-eval-elm does, so each estimator's mean error
(its bias), its spread and its printed standard error are measured, not assumed:

  plain K      log mean_k exp(-E(y_k)), y_k ~ q                   (K energies)
  top-k + tail exact sum over q's top K/2, K/2 samples of the tail  (K energies)

Errors are in bits per token of the ELM's NLL (NLL = -log q(x) + E(x) + log Z, so an
error in log Z is an error in the NLL). Negative bias: the estimate reads optimistic.

    python benchmarks/log_z_bias.py DATA_BIN --path CHECKPOINT [--positions 256]
"""

import argparse
import math
import sys
from pathlib import Path
from typing import Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LN2 = math.log(2)


def simulate(log_q: torch.Tensor, energy: torch.Tensor, budgets: List[int], repeats: int,
             generator: torch.Generator) -> Dict[int, Dict[str, float]]:
    """log_q, energy: (P, V) exact per position. For each budget K: mean error, RMS error
    and mean printed stderr of both estimators, in bits, over positions and repeats."""
    from energy_lm.losses import exact_log_z, log_z_estimate, topk_tail_log_z
    from energy_lm.sampling.proposal import sample_tokens

    log_q, energy = log_q.double(), energy.double()
    exact = exact_log_z(log_q, energy)  # (P,)
    rows = {}
    for k in budgets:
        plain_err, plain_se, split_err, split_se = [], [], [], []
        # the head takes half the budget, leaving at least two tokens in the tail
        head = log_q.topk(min(k // 2, log_q.size(-1) - 2), dim=-1).indices  # (P, h)
        tail_logits = log_q.scatter(-1, head, float("-inf"))
        for _ in range(repeats):
            ys = sample_tokens(log_q, k, generator=generator)  # (P, K)
            est, se = log_z_estimate(energy.gather(-1, ys))
            plain_err.append(est - exact)
            plain_se.append(se)
            tail = sample_tokens(tail_logits, k - head.size(-1), generator=generator)
            est2, se2, _ = topk_tail_log_z(log_q.gather(-1, head), energy.gather(-1, head),
                                           energy.gather(-1, tail))
            split_err.append(est2 - exact)
            split_se.append(se2)
        rows[k] = {}
        for name, err, se in (("plain", plain_err, plain_se), ("topk_tail", split_err, split_se)):
            err, se = torch.stack(err), torch.stack(se)  # (R, P)
            rows[k][name + "_bias"] = float(err.mean()) / LN2
            rows[k][name + "_rmse"] = float(err.pow(2).mean().sqrt()) / LN2
            rows[k][name + "_stderr"] = float(se.mean()) / LN2
    return rows


def collect(data_bin: Path, path: Path, positions: int, block: int, chunk: int):
    """(log q (P, V), energies (P, V), LM bits, ELM exact bits) at the first positions."""
    from fairseq import checkpoint_utils

    from energy_lm.cli.eval_elm import task_config
    from energy_lm.inference.log_z import vocabulary_energies

    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(path)], arg_overrides={"data": str(data_bin)})
    model = models[0].eval()
    task_config(task).tokens_per_sample = block
    task.load_dataset("valid")
    itr = task.get_batch_iterator(dataset=task.dataset("valid"), max_sentences=1,
                                  max_positions=block, seed=1).next_epoch_itr(shuffle=False)
    log_qs, energies, nll, e_x = [], [], [], []
    with torch.no_grad():
        for sample in itr:
            out, every = vocabulary_energies(model, sample, chunk)
            keep = out.scored[0]
            log_qs.append(out.lprobs[0][keep])
            energies.append(every[0][keep])
            nll.append(-out.lprobs[0][keep].gather(-1, out.tokens[0][keep, None])[:, 0])
            e_x.append(out.energy[0][keep])
            if sum(len(x) for x in nll) >= positions:
                break
    log_q = torch.cat(log_qs)[:positions]
    energy = torch.cat(energies)[:positions]
    from energy_lm.losses import exact_log_z

    lm = torch.cat(nll)[:positions].double()
    elm = lm + torch.cat(e_x)[:positions].double() + exact_log_z(log_q.double(), energy.double())
    return log_q, energy, float(lm.mean()) / LN2, float(elm.mean()) / LN2


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_bin", type=Path)
    parser.add_argument("--path", type=Path, required=True)
    parser.add_argument("--positions", type=int, default=256)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--budgets", type=int, nargs="+", default=[2, 8, 32, 128])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    log_q, energy, lm, elm = collect(args.data_bin, args.path, args.positions, args.block,
                                     args.chunk)
    rows = simulate(log_q, energy, args.budgets, args.repeats,
                    torch.Generator().manual_seed(args.seed))
    lines = [f"{args.path}: {log_q.size(0)} positions, V = {log_q.size(1)}; LM {lm:.4f} bits, "
             f"ELM with exact Z {elm:.4f} bits; {args.repeats} repeats per K", "",
             "| K energies | plain: bias | plain: RMSE | plain: printed stderr | "
             "top-K/2 + tail: bias | RMSE | printed stderr |", "|---|---|---|---|---|---|---|"]
    for k, r in rows.items():
        lines.append(f"| {k} | {r['plain_bias']:+.4f} | {r['plain_rmse']:.4f} | "
                     f"{r['plain_stderr']:.4f} | {r['topk_tail_bias']:+.4f} | "
                     f"{r['topk_tail_rmse']:.4f} | {r['topk_tail_stderr']:.4f} |")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
