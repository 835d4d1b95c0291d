"""`energy-lm-eval-elm`: evaluate a residual energy-based LM on a binarized split.

    energy-lm-eval-elm DATA_BIN --path checkpoints/checkpoint_best.pt
    energy-lm-eval-elm DATA_BIN --path checkpoints/checkpoint_best.pt --exact-z --exact-z-batches 4

Causal models (transformer_lm_energy family): every target of the split, each with its
energy in the context the LM predicted it from. Masked models (roberta_energy family):
the masked positions of a fixed, seeded masking of the split (the task's --seed).
Figures per scored token, in bits, each labelled for what it is:
  lm              exact         -log2 q(x)
  elm (Z = 1)     convention    -log2 q(x) + E(x)/ln 2: the seed's figure, log Z taken as 0
                                (not normalised: neither an estimate nor a bound)
  elm estimate    estimate      with log Z from the exact sum over q's top-k tokens plus
                  +- std error  K importance samples of q's tail (biased low by about
                                stderr^2 / 2 per position)
  elm lower bnd   bound         with log Z >= log(top-k part): the ELM's NLL is at least this
  elm (exact Z)   exact         with Z summed over the whole vocabulary (--exact-z, on the
                                first --exact-z-batches batches, beside the estimate there;
                                with --blocks N only N blocks drawn at random with
                                --block-seed are scored, all with exact Z: the sample the
                                studies' errors count)
  elm - lm        exact +- s.e. on those tokens, the mean of the per-token (E + log Z)/ln 2
                                with the standard error of that mean
  elm (scale a)   estimate /    with --fit-scale-on SPLIT: the ELM q exp(-a E) / Z_a with
                  exact         the scale a >= 0 that minimises the estimated NLL on SPLIT
                                (fitted there, reported on --split: a = 0 is the LM, so on
                                the split it is fitted on it is never above the LM)
--per-token FILE writes each scored token's figures (JSON lines) to pair two checkpoints.
"""

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor

from energy_lm.cli.errors import run_reporting_errors
from energy_lm.inference.log_z import head_and_tail, vocabulary_energies
from energy_lm.inference.scored_batch import ScoredBatch, gather_tokens, score_batch
from energy_lm.inference.protocol import is_masked_model, require

LN2 = math.log(2)
logger = logging.getLogger("energy_lm.cli.eval_elm")


class Totals:
    """Sums over scored tokens (nats) of each figure, on the whole run and on the
    exact-Z subset."""

    KEYS = ("nll", "energy", "log_z_est", "log_z_var", "log_z_lower", "log_z", "gain_sq",
            "energy_scaled", "log_z_est_scaled", "log_z_scaled", "gain_scaled_sq")

    def __init__(self):
        self.all = dict.fromkeys(self.KEYS, 0.0)
        self.exact = dict.fromkeys(self.KEYS, 0.0)
        self.count = self.exact_count = 0

    def add(self, into: dict, mask: Tensor, **values: Tensor) -> None:
        m = mask.to(next(iter(values.values())).dtype)
        for key, value in values.items():
            into[key] += float((value * m).sum())


def per_token_rows(sample, out: ScoredBatch, figures: Dict[str, Optional[Tensor]]
                   ) -> List[dict]:
    """One record per scored token, keyed by (sample id, position in the scored layout) so
    that two checkpoints scored on the same split pair token by token; figures in bits
    (None where a figure was not computed: log_z outside the exact-Z batches)."""
    ids = sample.get("id")
    rows = []
    for b, p in out.scored.nonzero().tolist():
        row = {"id": int(ids[b]) if ids is not None else b, "position": p,
               "token": int(out.tokens[b, p])}
        row.update({k: None if v is None else float(v[b, p]) / LN2
                    for k, v in figures.items()})
        rows.append(row)
    return rows


def evaluate(model, batches: Iterable, num_samples: int = 16, topk: int = 16,
             exact_z_batches: int = 0, generator: Optional[torch.Generator] = None,
             chunk: int = 256, progress: Optional[Callable[[int, int], None]] = None,
             per_token: Optional[List[dict]] = None, scale: Optional[float] = None,
             fit_rows: Optional[List[tuple]] = None) -> Dict[str, float]:
    """Figures in bits per scored token (see the module docstring); `exact_z_batches`:
    how many leading batches also get the exact Z (-1: all). `per_token`, where given,
    receives one record per scored token (`per_token_rows`). `scale`: also the figures
    of the ELM with the energy scaled by it. `fit_rows`, where given, receives what
    `fit_energy_scale` reads, one tuple of tensors per batch (its scored tokens only)."""
    from energy_lm.losses import exact_log_z, topk_tail_log_z

    vocab = model.trunk.embed_tokens.num_embeddings
    if not 1 <= topk < vocab - 1:
        raise ValueError(f"--topk must be in [1, {vocab - 2}] (a tail of at least two tokens "
                         f"must remain to sample), got {topk}")
    if num_samples < 2:
        raise ValueError(f"--num-samples must be >= 2 (the standard error needs two), got "
                         f"{num_samples}")
    totals = Totals()
    model.eval()
    with torch.no_grad():
        for i, sample in enumerate(batches):
            out = score_batch(model, sample, head_and_tail(topk, num_samples, generator))
            head_tokens, tail_energy = out.cand_tokens[:, :topk], out.cand_energy[:, topk:]
            head_log_q = out.lprobs.gather(-1, head_tokens.permute(0, 2, 1))  # (B, P, k)
            log_z, stderr, lower = topk_tail_log_z(
                head_log_q, out.cand_energy[:, :topk].permute(0, 2, 1),
                tail_energy.permute(0, 2, 1))
            head_energy = out.cand_energy[:, :topk].permute(0, 2, 1)  # (B, P, k)
            figures = dict(nll=-gather_tokens(out.lprobs, out.tokens), energy=out.energy,
                           log_z_est=log_z, log_z_var=stderr ** 2, log_z_lower=lower)
            if scale is not None:
                figures["energy_scaled"] = scale * out.energy
                figures["log_z_est_scaled"] = topk_tail_log_z(
                    head_log_q, scale * head_energy, scale * tail_energy.permute(0, 2, 1))[0]
            if fit_rows is not None:
                keep = out.scored
                fit_rows.append((figures["nll"][keep], out.energy[keep], head_log_q[keep],
                                 head_energy[keep], tail_energy.permute(0, 2, 1)[keep]))
            totals.add(totals.all, out.scored, **figures)
            totals.count += int(out.scored.sum())
            log_z = None
            if exact_z_batches < 0 or i < exact_z_batches:
                vocab_out, energies = vocabulary_energies(model, sample, chunk)
                log_z = exact_log_z(vocab_out.lprobs, energies)
                gain = out.energy + log_z  # ELM - LM at this token (nats), paired by construction
                exact = dict(log_z=log_z, gain_sq=gain * gain)
                if scale is not None:
                    log_z_scaled = exact_log_z(vocab_out.lprobs, scale * energies)
                    gain_scaled = scale * out.energy + log_z_scaled
                    exact.update(log_z_scaled=log_z_scaled,
                                 gain_scaled_sq=gain_scaled * gain_scaled)
                totals.add(totals.exact, out.scored, **exact, **figures)
                totals.exact_count += int(out.scored.sum())
            if per_token is not None:
                per_token.extend(per_token_rows(sample, out, dict(
                    lm=figures["nll"], energy=out.energy, log_z=log_z,
                    log_z_est=figures["log_z_est"])))
            if progress is not None:
                progress(i + 1, totals.count)
    if totals.count == 0:
        raise ValueError("no token to score: the split is empty (or, for a masked model, "
                         "no position was masked)")
    return summarize(totals, scale)


def summarize(totals: Totals, scale: Optional[float] = None) -> Dict[str, float]:
    def bits(sums: dict, count: int, *keys: str) -> float:
        return sum(sums[k] for k in keys) / count / LN2

    a, n = totals.all, totals.count
    result = {
        "tokens": n,
        "lm": bits(a, n, "nll"),
        "elm_z1": bits(a, n, "nll", "energy"),
        "elm_est": bits(a, n, "nll", "energy", "log_z_est"),
        "elm_est_stderr": math.sqrt(a["log_z_var"]) / n / LN2,
        "elm_lower": bits(a, n, "nll", "energy", "log_z_lower"),
    }
    e, m = totals.exact, totals.exact_count
    if m:
        gain = (e["energy"] + e["log_z"]) / m  # mean of the per-token ELM - LM (nats)
        spread = max(e["gain_sq"] / m - gain * gain, 0.0) * m / max(m - 1, 1)
        result.update({
            "exact_tokens": m,
            "lm_on_exact": bits(e, m, "nll"),
            "elm_exact": bits(e, m, "nll", "energy", "log_z"),
            "elm_est_on_exact": bits(e, m, "nll", "energy", "log_z_est"),
            "elm_est_stderr_on_exact": math.sqrt(e["log_z_var"]) / m / LN2,
            "elm_lower_on_exact": bits(e, m, "nll", "energy", "log_z_lower"),
            "elm_minus_lm_exact": gain / LN2,
            "elm_minus_lm_exact_stderr": math.sqrt(spread / m) / LN2,
        })
    if scale is not None:
        result.update({"scale": scale,
                       "elm_scaled_est": bits(a, n, "nll", "energy_scaled", "log_z_est_scaled")})
        if m:
            gain = (e["energy_scaled"] + e["log_z_scaled"]) / m
            spread = max(e["gain_scaled_sq"] / m - gain * gain, 0.0) * m / max(m - 1, 1)
            result.update({
                "elm_scaled_exact": bits(e, m, "nll", "energy_scaled", "log_z_scaled"),
                "elm_scaled_minus_lm_exact": gain / LN2,
                "elm_scaled_minus_lm_exact_stderr": math.sqrt(spread / m) / LN2,
            })
    return result


def ppl_text(bits: float) -> str:
    """A perplexity, or why there is none: below 0 bits no distribution can be."""
    return f"{2 ** bits:9.2f}" if bits >= 0 else "      n/a"


def report(result: Dict[str, float], split: str, family: str, topk: int, num_samples: int) -> str:
    what = ("every target, each in its own context" if family == "causal"
            else "the masked positions of a fixed seeded masking")
    lines = [f"split {split}: {result['tokens']} scored tokens ({what})",
             f"  {'figure':<28}{'bits':>9}{'ppl':>10}  what it is"]

    def row(name: str, bits: float, kind: str) -> None:
        note = "" if bits >= 0 else "  [below 0 bits: impossible for a distribution]"
        lines.append(f"  {name:<28}{bits:9.4f}{ppl_text(bits)}  {kind}{note}")

    row("lm", result["lm"], "exact")
    row("elm (Z = 1)", result["elm_z1"], "the seed's convention, log Z = 0: not normalised, "
        "neither an estimate nor a bound")
    row(f"elm (top-{topk} + tail, K={num_samples})", result["elm_est"],
        f"estimate +- {result['elm_est_stderr']:.4f} (std error; biased low by ~stderr^2/2)")
    row("elm lower bound", result["elm_lower"], f"bound: NLL >= this (Z >= its top-{topk} part)")
    if "exact_tokens" in result:
        lines.append(f"  on the {result['exact_tokens']} scored tokens of the exact-Z batches:")
        row("  lm", result["lm_on_exact"], "exact")
        row("  elm (exact Z)", result["elm_exact"], "exact")
        row("  elm estimate there", result["elm_est_on_exact"],
            f"estimate +- {result['elm_est_stderr_on_exact']:.4f}; bias vs exact "
            f"{result['elm_est_on_exact'] - result['elm_exact']:+.4f}")
        lines.append(f"  {'  elm - lm, paired per token':<28}{result['elm_minus_lm_exact']:+9.4f}"
                     f"{'':>10}  exact +- {result['elm_minus_lm_exact_stderr']:.4f} (std error "
                     f"of the mean over the {result['exact_tokens']} tokens)")
    if "scale" in result:
        fitted = f"a = {result['scale']:.3f} fitted on {result.get('scale_split', 'another split')}"
        row(f"elm (scale a, top-{topk} + tail)", result["elm_scaled_est"],
            f"estimate; {fitted} (a = 0: the LM)")
        if "elm_scaled_exact" in result:
            row("  elm (scale a, exact Z)", result["elm_scaled_exact"], f"exact; {fitted}")
            lines.append(f"  {'  elm (scale a) - lm':<28}{result['elm_scaled_minus_lm_exact']:+9.4f}"
                         f"{'':>10}  exact +- {result['elm_scaled_minus_lm_exact_stderr']:.4f} "
                         f"(std error of the mean over the {result['exact_tokens']} tokens)")
    lines += [f"  warning: {w}" for w in energy_warnings(result)]
    return "\n".join(lines)


def energy_warnings(result: Dict[str, float]) -> List[str]:
    """What the figures say against using the ELM: above its LM beyond twice the
    standard error (of the log Z estimate; of the exact paired mean over tokens)."""
    out = []
    gain = result["elm_est"] - result["lm"]
    if gain > 2 * result["elm_est_stderr"]:
        out.append(f"the ELM estimate is {gain:+.4f} bits above the LM on this split (+- "
                   f"{result['elm_est_stderr']:.4f}): the energy does not help on this text")
    if "exact_tokens" in result and \
            result["elm_minus_lm_exact"] > 2 * result["elm_minus_lm_exact_stderr"]:
        out.append(f"with exact Z the ELM is {result['elm_minus_lm_exact']:+.4f} +- "
                   f"{result['elm_minus_lm_exact_stderr']:.4f} bits above the LM on the "
                   f"{result['exact_tokens']} exact-Z tokens")
    return out


def task_config(task):
    """fairseq's legacy tasks keep their options in `args`, dataclass tasks in `cfg`."""
    return getattr(task, "args", None) or task.cfg


def load(path: Path, data_bin: Path, split: str, tokens_per_sample: Optional[int], cpu: bool,
         seed: int):
    from fairseq import checkpoint_utils

    overrides = {"data": str(data_bin), "seed": seed}
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(path)], arg_overrides=overrides)
    model = models[0]
    require(model, "energy", user=f"energy-lm-eval-elm ({path})")
    if tokens_per_sample:  # the evaluation block size (the model's positions are unchanged)
        if tokens_per_sample > model.max_positions():
            raise ValueError(f"--tokens-per-sample {tokens_per_sample} exceeds the model's "
                             f"{model.max_positions()} positions")
        task_config(task).tokens_per_sample = tokens_per_sample
    if torch.cuda.is_available() and not cpu:
        model = model.cuda()
    task.load_dataset(split)
    return model, task


def random_blocks(dataset, count: int, seed: int, batch_size: int) -> List[dict]:
    """Batches of `count` examples (blocks) of the split drawn without replacement with a
    fixed seed, in index order; each keeps its example id (the records' cluster key)."""
    total = len(dataset)
    if count > total:
        raise ValueError(f"--blocks {count}: the split has only {total} blocks")
    chosen = sorted(torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:count]
                    .tolist())
    print(f"scoring {count} of the split's {total} blocks, drawn at random (--block-seed "
          f"{seed})", file=sys.stderr, flush=True)
    return [dataset.collater([dataset[i] for i in chosen[j:j + batch_size]])
            for j in range(0, count, batch_size)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="energy-lm-eval-elm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_bin", type=Path, help="binarized data (fairseq-preprocess output)")
    parser.add_argument("--path", type=Path, required=True, help="checkpoint file")
    parser.add_argument("--split", default="valid", help="split to score (default: valid)")
    parser.add_argument("--num-samples", type=int, default=16,
                        help="K samples of q's tail per position (default 16)")
    parser.add_argument("--topk", type=int, default=16,
                        help="q's k most likely tokens summed exactly (default 16)")
    parser.add_argument("--exact-z", action="store_true",
                        help="also sum Z over the whole vocabulary (on --exact-z-batches)")
    parser.add_argument("--exact-z-batches", type=int, default=0,
                        help="with --exact-z: the number of leading batches that get it "
                             "(0: all); the cost is printed before it starts")
    parser.add_argument("--blocks", type=int, default=0,
                        help="score only N blocks of the split drawn at random (--block-seed), "
                             "with --exact-z all of them with exact Z: a sample whose standard "
                             "error can be clustered by block (0, the default: the split)")
    parser.add_argument("--block-seed", type=int, default=1,
                        help="seed of --blocks's draw (default 1)")
    parser.add_argument("--vocab-chunk", type=int, default=256,
                        help="vocabulary entries scored per pass by --exact-z (memory)")
    parser.add_argument("--tokens-per-sample", type=int, default=None,
                        help="block length (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="rows per batch (default 8; the exact figures do not depend on it)")
    parser.add_argument("--max-batches", type=int, default=0,
                        help="score only the first N batches (0, the default: the whole split)")
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of the tail samples and of a masked model's masking")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even where CUDA is")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the figures (bits) to this file as JSON")
    parser.add_argument("--fit-scale-on", default=None, metavar="SPLIT",
                        help="fit the energy's scale a >= 0 on SPLIT (its estimated NLL, "
                             "the same --topk / --num-samples) and report the ELM with it on "
                             "--split too: a = 0 is the LM (fit on another split than --split)")
    parser.add_argument("--max-scale", type=float, default=4.0,
                        help="with --fit-scale-on: the largest scale tried (default 4)")
    parser.add_argument("--per-token", type=Path, default=None,
                        help="write one JSON line per scored token (id, position, token, lm, "
                             "energy, log_z_est and, on the exact-Z batches, log_z; bits) "
                             "to pair two checkpoints token by token")
    return parser


def check_args(parser: argparse.ArgumentParser, args) -> None:
    """One line (argparse's error) for values no run can use."""
    for flag in ("num_samples", "topk", "batch_size", "vocab_chunk"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.max_batches < 0 or args.exact_z_batches < 0 or args.blocks < 0:
        parser.error("--max-batches, --exact-z-batches and --blocks must be >= 0")
    if args.blocks and (args.max_batches or args.exact_z_batches):
        parser.error("--blocks chooses the blocks itself (all of them with --exact-z): drop "
                     "--max-batches and --exact-z-batches")
    if args.fit_scale_on is not None and args.fit_scale_on == args.split:
        parser.error(f"--fit-scale-on {args.fit_scale_on} is --split: fit the scale on another "
                     f"split than the one it is reported on")
    if not args.max_scale > 0:
        parser.error(f"--max-scale must be > 0, got {args.max_scale}")
    for required, what in ((args.path, "checkpoint"), (args.data_bin / "dict.txt", "dictionary")):
        if not required.exists():
            parser.error(f"{what} not found: {required}")
    for split in filter(None, (args.split, args.fit_scale_on)):
        if args.data_bin.is_dir() and not (args.data_bin / f"{split}.idx").exists():
            parser.error(f"no split {split!r} in {args.data_bin} ({split}.idx / {split}.bin)")


def batch_plan(args, model, task) -> Tuple[list, int, int]:
    """(the batches in order, how many are scored, how many of those with exact Z): the
    split's first --max-batches batches, or --blocks random blocks."""
    dataset = task.dataset(args.split)
    if args.blocks:  # N random blocks (all with exact Z under --exact-z)
        batches = random_blocks(dataset, args.blocks, args.block_seed, args.batch_size)
        total = len(batches)
    else:
        batches = task.get_batch_iterator(
            dataset=dataset, max_sentences=args.batch_size,
            max_positions=task_config(task).tokens_per_sample, seed=args.seed,
        ).next_epoch_itr(shuffle=False)
        total = len(batches) if not args.max_batches else min(args.max_batches, len(batches))
    exact = 0
    if args.exact_z:
        exact = total if not args.exact_z_batches else min(args.exact_z_batches, total)
        vocab = model.trunk.embed_tokens.num_embeddings
        print(f"exact Z: {vocab} vocabulary entries scored at every position of "
              f"{exact} batch(es) of {args.batch_size}, "
              f"{math.ceil(vocab / args.vocab_chunk)} passes each; the first batch's time "
              f"gives the estimate", file=sys.stderr, flush=True)
    return batches, total, exact


def progress_printer(total_batches: int, exact_batches: int) -> Callable[[int, int], None]:
    """progress(done, tokens): elapsed time and what is left, to stderr; the exact-Z
    batches and the others are timed apart (they differ by the vocabulary's size)."""
    started = time.monotonic()
    marks = {}

    def progress(done: int, tokens: int) -> None:
        now = time.monotonic()
        if done == exact_batches:
            marks["exact_done"] = (now, done)
        if done <= exact_batches:
            left = (now - started) / done * (exact_batches - done)
            phase = "exact Z"
        else:
            since, at = marks.get("exact_done", (started, 0))
            left = (now - since) / (done - at) * (total_batches - done)
            phase = "estimate"
        if done == 1 or done % 10 == 0 or done in (total_batches, exact_batches):
            print(f"  batch {done}/{total_batches} ({phase}), {tokens} tokens, "
                  f"{now - started:.0f} s, ~{left:.0f} s left in this phase",
                  file=sys.stderr, flush=True)

    return progress


def write_whole(path: Path, text: str) -> None:
    """path holds text whole or not at all (the checkpoints' atomic write)."""
    from energy_lm.patches.checkpoint_safety import atomic_write

    atomic_write(str(path), lambda f: f.write(text.encode("utf-8")))


def fit_scale(args, model, task) -> float:
    """The energy scale fitted on --fit-scale-on (its --max-batches first batches, or all),
    with the tail samples of their own generator: the figures of --split do not change
    with it. Prints the fit's figures (estimated NLL on that split, bits)."""
    from fairseq import utils

    from energy_lm.losses import fit_energy_scale, scaled_nll

    split = args.fit_scale_on
    task.load_dataset(split)
    batches = task.get_batch_iterator(
        dataset=task.dataset(split), max_sentences=args.batch_size,
        max_positions=task_config(task).tokens_per_sample, seed=args.seed,
    ).next_epoch_itr(shuffle=False)
    device = next(model.parameters()).device
    limit = args.max_batches or len(batches)
    rows: List[tuple] = []
    evaluate(model, (utils.move_to_cuda(s) if device.type == "cuda" else s
                     for i, s in zip(range(limit), batches)),
             args.num_samples, args.topk,
             generator=torch.Generator(device=device).manual_seed(args.seed + 1), fit_rows=rows)
    data = [torch.cat(parts) for parts in zip(*rows)]
    scale = fit_energy_scale(*data, max_scale=args.max_scale)
    lm, elm, fitted = (scaled_nll(a, *data) / LN2 for a in (0.0, 1.0, scale))
    print(f"energy scale fitted on {split} ({data[0].numel()} tokens, top-{args.topk} + "
          f"tail estimate): a = {scale:.3f}; there lm {lm:.4f}, elm (a = 1) {elm:.4f}, "
          f"elm (a) {fitted:.4f} bits", file=sys.stderr, flush=True)
    return scale


def main(argv: Optional[List[str]] = None) -> Dict[str, float]:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    logging.getLogger("fairseq").setLevel(logging.WARNING)
    torch.manual_seed(args.seed)
    model, task = load(args.path, args.data_bin, args.split, args.tokens_per_sample, args.cpu,
                       args.seed)
    scale = fit_scale(args, model, task) if args.fit_scale_on is not None else None
    batches, total_batches, exact_batches = batch_plan(args, model, task)
    device = next(model.parameters()).device

    from fairseq import utils

    def scored_batches():
        for i, sample in enumerate(batches):
            if i >= total_batches:
                return
            yield utils.move_to_cuda(sample) if device.type == "cuda" else sample

    generator = torch.Generator(device=device).manual_seed(args.seed)
    per_token: Optional[List[dict]] = [] if args.per_token is not None else None
    result = evaluate(model, scored_batches(), args.num_samples, args.topk,
                      exact_z_batches=exact_batches, generator=generator,
                      chunk=args.vocab_chunk,
                      progress=progress_printer(total_batches, exact_batches),
                      per_token=per_token, scale=scale)
    if scale is not None:
        result["scale_split"] = args.fit_scale_on
    if per_token is not None:
        write_whole(args.per_token, "".join(json.dumps(row) + "\n" for row in per_token))
    family = "masked" if is_masked_model(model) else "causal"
    print(report(result, args.split, family, args.topk, args.num_samples))
    if args.json is not None:
        write_whole(args.json, json.dumps(dict(result, family=family, topk=args.topk,
                                               num_samples=args.num_samples), indent=1))
    return result


def cli_main() -> None:
    from energy_lm.patches.shared_cpu import fit_threads

    fit_threads()  # the cores other processes leave free
    run_reporting_errors("energy-lm-eval-elm", main, ValueError)  # wrong checkpoint or data


if __name__ == "__main__":
    cli_main()
