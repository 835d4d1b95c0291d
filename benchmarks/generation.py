"""Sampling speed: fairseq's own cached sampling of q against SIR, today's (full
recompute) and cached, as ratios measured in one run.

    python benchmarks/generation.py                    # tiny and base, 256 and 1,024 tokens
    python benchmarks/generation.py --sizes tiny --check   # exit 1 if a target is missed

For each model size (`transformer_lm_alibi_tiny`, and `_base`: 12 x 768; random weights,
vocabulary 50,304, eval mode), batch (1, 8) and number of new tokens (256, 1,024) after
a 16-token prompt, the time of:

    fairseq      fairseq's SequenceGenerator, --sampling --beam 1 (cached; the baseline)
    sir-gen K=8  the same generator with --sir-candidates 8 (what fairseq-generate runs)
    cached K=1   energy_lm.inference.sir_sampler.sir_sample, the key/value cache, one candidate
    cached K=8   the same, 8 candidates per token
    recompute K=8  sir_sample(cached=False): the whole prefix through the model every step
                 (today's SIR before the cache; by default only where it takes < a few
                 minutes: the tiny model but for batch 8 at 1,024 tokens, and the base
                 model at batch 1 and 256 tokens)

Every row generates exactly the asked number of tokens (</s> is never chosen: --min-len
and no eos for sir_sample). The sides run in turn, twice each (A B ... B A), and each
time is the smaller of its two runs. Targets (CPU): cached SIR's time grows from 256 to
1,024 tokens no faster than fairseq's (ratio of growths <= 1.1); cached SIR at K = 8 costs
<= 3x fairseq's time at batch 1; K = 1 at most 10% slower than fairseq. Threads: torch's default;
run on a quiet machine.
"""

import argparse
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List

import torch

VOCAB = 50304
PROMPT = 16


def build(size: str, data: str):
    import energy_lm  # noqa: F401  (registers the archs)
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = [data, "--task", "language_modeling", "--arch", f"transformer_lm_alibi_{size}",
            "--tokens-per-sample", "2048", "--dropout", "0", "--energy-head", "seed"]
    cfg = convert_namespace_to_omegaconf(
        options.parse_args_and_arch(options.get_training_parser(), argv))
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(1)
    model = task.build_model(cfg.model).eval()
    for p in model.energy_head.parameters():  # an energy of a realistic size, every term live
        torch.nn.init.normal_(p, std=0.02)
    return model, task


def samplers(model, task, batch: int, new: int) -> Dict[str, Callable[[], None]]:
    from fairseq.dataclass.configs import GenerationConfig
    from omegaconf import OmegaConf, open_dict

    from energy_lm.inference.sir_sampler import sir_sample

    d = task.source_dictionary
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(d.nspecial, len(d), (batch, PROMPT), generator=g)
    sample = {"id": torch.arange(batch),
              "net_input": {"src_tokens": prompts, "src_lengths": torch.full((batch,), PROMPT)}}

    def generator(k: int):
        cfg = OmegaConf.structured(GenerationConfig())
        with open_dict(cfg):
            cfg.sampling, cfg.beam, cfg.sir_candidates = True, 1, k
            cfg.max_len_a, cfg.max_len_b, cfg.min_len = 0, PROMPT + new, PROMPT + new
        gen = task.build_generator([model], cfg)
        return lambda: gen.generate([model], sample, prefix_tokens=prompts)

    def python(k: int, cached: bool):
        return lambda: sir_sample(model, prompts, new, num_candidates=k, pad=d.pad(),
                                  generator=torch.Generator().manual_seed(1), cached=cached)

    return {"fairseq": generator(1), "sir-gen K=8": generator(8),
            "cached K=1": python(1, True), "cached K=8": python(8, True),
            "recompute K=8": python(8, False)}


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        fn()
    return time.perf_counter() - start


def measure(size: str, batches: List[int], lengths: List[int], recompute_limit: int) -> dict:
    warnings.filterwarnings("ignore")
    logging.getLogger("fairseq").setLevel(logging.WARNING)
    logging.getLogger("energy_lm").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as data:
        Path(data, "dict.txt").write_text("".join(f"w{i} 1\n" for i in range(VOCAB - 4)))
        model, task = build(size, data)
    results = {}
    for batch in batches:
        for new in lengths:
            fns = samplers(model, task, batch, new)
            # the recompute's cost grows with batch x tokens^2: run it where it is minutes
            if batch * new * (12 if size == "base" else 1) > recompute_limit:
                fns.pop("recompute K=8")
            times: Dict[str, List[float]] = {name: [] for name in fns}
            order = list(fns)
            timed(fns["fairseq"])  # warm-up
            for names in (order, order[::-1]):
                for name in names:
                    torch.manual_seed(2)
                    times[name].append(timed(fns[name]))
            row = {name: min(t) for name, t in times.items()}
            results[f"{size} B={batch} N={new}"] = row
            print(f"{size} B={batch} N={new}: " + ", ".join(
                f"{name} {sec:.2f}s" for name, sec in row.items()), file=sys.stderr, flush=True)
    return results


def table(results: dict, lengths: List[int]) -> str:
    names = ["fairseq", "sir-gen K=8", "cached K=1", "cached K=8", "recompute K=8"]
    lines = ["| model, batch, new tokens | " + " | ".join(f"{n} (s)" for n in names) +
             " | cached K=1 / fairseq | cached K=8 / fairseq | sir-gen K=8 / fairseq | "
             "recompute / cached K=8 |", "|---" * (len(names) + 5) + "|"]
    for key, row in results.items():
        cells = [f"{row[n]:.2f}" if n in row else "-" for n in names]
        f = row["fairseq"]
        ratios = [f"{row['cached K=1'] / f:.2f}", f"{row['cached K=8'] / f:.2f}",
                  f"{row['sir-gen K=8'] / f:.2f}",
                  f"{row['recompute K=8'] / row['cached K=8']:.1f}" if "recompute K=8" in row
                  else "-"]
        lines.append(f"| {key} | " + " | ".join(cells + ratios) + " |")
    if len(lengths) == 2:
        short, long = lengths
        lines += ["", f"Growth from {short} to {long} new tokens (time ratio):", "",
                  "| model, batch | fairseq | cached K=1 | cached K=8 | sir-gen K=8 | "
                  "recompute K=8 |", "|---|---|---|---|---|---|"]
        for key in [k for k in results if k.endswith(f"N={short}")]:
            a, b = results[key], results[key.replace(f"N={short}", f"N={long}")]
            cells = [f"{b[n] / a[n]:.1f}" if n in a and n in b else "-" for n in
                     ("fairseq", "cached K=1", "cached K=8", "sir-gen K=8", "recompute K=8")]
            lines.append(f"| {key.rsplit(' ', 1)[0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def misses(results: dict, lengths: List[int]) -> List[str]:
    out = []
    for key, row in results.items():
        f = row["fairseq"]
        if row["cached K=1"] / f > 1.10:
            out.append(f"{key}: cached K=1 / fairseq = {row['cached K=1'] / f:.2f} (target <= 1.1)")
        if " B=1 " in key and row["cached K=8"] / f > 3.0:
            out.append(f"{key}: cached K=8 / fairseq = {row['cached K=8'] / f:.2f} (target <= 3)")
    if len(lengths) == 2:
        short, long = lengths
        for key in [k for k in results if k.endswith(f"N={short}")]:
            a, b = results[key], results[key.replace(f"N={short}", f"N={long}")]
            base = b["fairseq"] / a["fairseq"]
            for name in ("cached K=1", "cached K=8"):
                if b[name] / a[name] > 1.1 * base:
                    out.append(f"{key}: {name} grows {b[name] / a[name]:.1f}x against "
                               f"fairseq's {base:.1f}x")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"], choices=["tiny", "base"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--recompute-limit", type=int, default=4096,
                        help="run today's SIR only where batch x new tokens x (12 for base) "
                             "<= this")
    parser.add_argument("--json", type=Path, help="also write the times here")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    results = {}
    for size in args.sizes:
        results.update(measure(size, args.batches, args.lengths, args.recompute_limit))
    print(table(results, args.lengths))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    missed = misses(results, args.lengths)
    for line in missed:
        print("MISSED:", line)
    return 1 if (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
