"""`energy-lm-eval-elm`: evaluate a causal residual energy-based LM on a binarized split.

    energy-lm-eval-elm DATA_BIN --path checkpoints/checkpoint_best.pt --num-samples 16

Reports, per scored token (every target but the last of each block, where the energy is
defined; see energy_lm.models.scoring), in bits and as perplexities:
  lm        -log2 q(x)                        the LM alone
  elm_z1    -log2 q(x) + E(x)/ln 2            the ELM assuming Z = 1
  elm_k     elm_z1 + log2 Z_hat               Z_hat = mean_k exp(-E(y_k)), y_k ~ q (K samples)
  elm_exact elm_z1 + log2 Z                   Z summed over the whole vocabulary (--exact-z)
log Z_hat is biased low (Jensen: E[log Z_hat] <= log Z), so elm_k is optimistic for small
K; the standard error printed is that of the mean log2 Z_hat over positions (delta
method per position, positions independent).
"""

import argparse
import logging
import math
from pathlib import Path
from typing import Dict, List, Optional

import torch

from energy_lm.cli_errors import run_reporting_errors

LN2 = math.log(2)
logger = logging.getLogger("energy_lm.eval_elm")


def exact_log_z_batch(model, src_tokens: torch.Tensor, segment_ids=None, chunk: int = 256):
    """log Z at positions 1..T-1 by scoring every vocabulary entry: (B, T-1) fp32."""
    from energy_lm.losses import exact_log_z
    from energy_lm.models.scoring import causal_energy_pass

    bsz, tgt_len = src_tokens.shape
    vocab = model.decoder.embed_tokens.num_embeddings
    energies, lprobs = [], None
    for first in range(0, vocab, chunk):
        ids = torch.arange(first, min(first + chunk, vocab), device=src_tokens.device)
        cands = ids.view(1, -1, 1).expand(bsz, -1, tgt_len - 1)  # (B, c, T-1)
        out = causal_energy_pass(model, src_tokens, cands, start=1, segment_ids=segment_ids)
        energies.append(out.cand_energy)
        if lprobs is None:
            lprobs = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    all_energies = torch.cat(energies, dim=1).permute(0, 2, 1)  # (B, T-1, V)
    return exact_log_z(lprobs, all_energies)


def evaluate(model, batches, num_samples: int, exact_z: bool = False,
             pad: int = 1) -> Dict[str, float]:
    from energy_lm.losses import log_z_estimate
    from energy_lm.models.scoring import causal_energy_pass

    sums = {"lm": 0.0, "elm_z1": 0.0, "log_z_hat": 0.0, "log_z_var": 0.0, "log_z": 0.0}
    count = 0
    model.eval()
    with torch.no_grad():
        for sample in batches:
            src = sample["net_input"]["src_tokens"]
            segment_ids = sample["net_input"].get("segment_ids")
            target = sample["target"]
            if src.size(1) < 2:
                continue
            out = causal_energy_pass(model, src, num_samples=num_samples, start=1,
                                     segment_ids=segment_ids)
            lprobs = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
            tgt = target[:, :-1]
            scored = tgt.ne(pad)
            nll = -lprobs.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
            log_z_hat, stderr = log_z_estimate(out.cand_energy, dim=1)  # (B, T-1) each
            mask = scored.float()
            sums["lm"] += float((nll * mask).sum())
            sums["elm_z1"] += float(((nll + out.energy) * mask).sum())
            sums["log_z_hat"] += float((log_z_hat * mask).sum())
            sums["log_z_var"] += float((stderr ** 2 * mask).sum())
            if exact_z:
                sums["log_z"] += float((exact_log_z_batch(model, src, segment_ids) * mask).sum())
            count += int(scored.sum())
    if count == 0:
        raise ValueError("no token to score: the split is empty or its blocks are shorter "
                         "than two tokens")
    bits = {
        "lm": sums["lm"] / count / LN2,
        "elm_z1": sums["elm_z1"] / count / LN2,
        "elm_k": (sums["elm_z1"] + sums["log_z_hat"]) / count / LN2,
        "elm_k_stderr": math.sqrt(sums["log_z_var"]) / count / LN2,
        "tokens": count,
    }
    if exact_z:
        bits["elm_exact"] = (sums["elm_z1"] + sums["log_z"]) / count / LN2
    return bits


def load(path: Path, data_bin: Path, split: str, tokens_per_sample: Optional[int], cpu: bool):
    from fairseq import checkpoint_utils

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(path)], arg_overrides={"data": str(data_bin)})
    model = models[0]
    if not getattr(model, "supports_candidate_stream", False) or hasattr(model, "encoder"):
        raise ValueError(f"{path} is not a causal energy_lm model (transformer_lm_energy "
                         f"family); got {type(model).__name__}")
    if tokens_per_sample:  # the evaluation block size (the model's positions are unchanged)
        learned = model.decoder.embed_positions is not None  # ALiBi models extrapolate
        if learned and tokens_per_sample > model.max_positions():
            raise ValueError(f"--tokens-per-sample {tokens_per_sample} exceeds the model's "
                             f"{model.max_positions()} positions")
        task.args.tokens_per_sample = tokens_per_sample
    if torch.cuda.is_available() and not cpu:
        model = model.cuda()
    task.load_dataset(split)
    return model, task


def main(argv: Optional[List[str]] = None) -> Dict[str, float]:
    parser = argparse.ArgumentParser(prog="energy-lm-eval-elm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_bin", type=Path)
    parser.add_argument("--path", type=Path, required=True, help="checkpoint file")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--num-samples", type=int, default=16, help="K samples per position")
    parser.add_argument("--exact-z", action="store_true",
                        help="also sum Z over the whole vocabulary (small vocabularies)")
    parser.add_argument("--tokens-per-sample", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batches", type=int, default=0, help="0: the whole split")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args(argv)
    if args.num_samples < 2:
        parser.error("--num-samples must be >= 2 (the standard error needs two samples)")
    for required, what in ((args.path, "checkpoint"), (args.data_bin / "dict.txt", "dictionary")):
        if not required.exists():
            parser.error(f"{what} not found: {required}")
    logging.getLogger("fairseq").setLevel(logging.WARNING)
    torch.manual_seed(args.seed)
    model, task = load(args.path, args.data_bin, args.split, args.tokens_per_sample, args.cpu)
    iterator = task.get_batch_iterator(dataset=task.dataset(args.split), max_sentences=args.batch_size,
                                       max_positions=task.args.tokens_per_sample, seed=args.seed
                                       ).next_epoch_itr(shuffle=False)
    device = next(model.parameters()).device

    from fairseq import utils

    def batches():
        for i, sample in enumerate(iterator):
            if args.max_batches and i >= args.max_batches:
                return
            yield utils.move_to_cuda(sample) if device.type == "cuda" else sample

    result = evaluate(model, batches(), args.num_samples, args.exact_z,
                      pad=task.source_dictionary.pad())
    print(f"split {args.split}: {result['tokens']} scored tokens, K = {args.num_samples}")
    print(f"  lm         {result['lm']:.4f} bits  ppl {2 ** result['lm']:.2f}")
    print(f"  elm (Z=1)  {result['elm_z1']:.4f} bits  ppl {2 ** result['elm_z1']:.2f}")
    print(f"  elm (K)    {result['elm_k']:.4f} bits  ppl {2 ** result['elm_k']:.2f}"
          f"  (log2 Z_hat stderr {result['elm_k_stderr']:.4f})")
    if args.exact_z:
        print(f"  elm (exact Z) {result['elm_exact']:.4f} bits  ppl {2 ** result['elm_exact']:.2f}")
    return result


def cli_main() -> None:
    run_reporting_errors("energy-lm-eval-elm", main, ValueError)  # wrong checkpoint or data


if __name__ == "__main__":
    cli_main()
