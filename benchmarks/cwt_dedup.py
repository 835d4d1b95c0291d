"""Does de-duplicating CWT's in-batch negatives help? (docs/methods.md section 3 asks to
measure it and default to what measures best.)

    python benchmarks/cwt_dedup.py --data corpus/data-bin --out bench-cwt

For each seed: train a headless tiny causal LM with `--criterion cwt` with and without
`--cwt-dedup`, give it an LM head (`energy-lm-add-head`), fine-tune the head with
cross-entropy for a few updates, and read the valid LM loss (bits) that fairseq-train
reports. Everything goes through the real command-line tools.
"""

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent
COMMON = ["--task", "language_modeling", "--arch", "transformer_lm_clap_tiny",
          "--tokens-per-sample", "128", "--sample-break-mode", "none", "--batch-size", "16",
          "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--weight-decay", "0.01",
          "--dropout", "0.1", "--clip-norm", "1.0", "--cpu", "--no-epoch-checkpoints",
          "--log-format", "simple", "--log-interval", "100", "--num-workers", "0"]


def run(args, log: Path) -> str:
    with open(log, "w") as out:
        subprocess.run([str(BIN / "fairseq-train"), *map(str, args)], check=True, stdout=out,
                       stderr=subprocess.STDOUT)
    return log.read_text()


def last_valid_loss(text: str) -> float:
    return float(re.findall(r"valid on 'valid' subset \| loss ([0-9.]+)", text)[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "cwt_dedup")
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--finetune-updates", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {False: [], True: []}
    for seed in args.seeds:
        for dedup in (False, True):
            tag = f"{'dedup' if dedup else 'all'}_seed{seed}"
            headless = args.out / tag / "headless"
            run([args.data, *COMMON, "--criterion", "cwt", *(["--cwt-dedup"] if dedup else []),
                 "--lr", "1e-3", "--lr-scheduler", "polynomial_decay", "--warmup-updates", "50",
                 "--max-update", args.updates, "--total-num-update", args.updates,
                 "--seed", seed, "--save-dir", headless], args.out / f"{tag}_cwt.log")
            headed = args.out / tag / "headed.pt"
            subprocess.run([str(BIN / "energy-lm-add-head"), str(headless / "checkpoint_last.pt"),
                            str(headed)], check=True, capture_output=True)
            text = run([args.data, *COMMON, "--untied-head", "--criterion", "cross_entropy",
                        "--restore-file", headed, "--reset-optimizer", "--reset-dataloader",
                        "--reset-meters", "--reset-lr-scheduler", "--lr", "1e-3",
                        "--lr-scheduler", "cosine", "--max-update", args.finetune_updates,
                        "--seed", seed, "--save-dir", args.out / tag / "finetuned"],
                       args.out / f"{tag}_finetune.log")
            results[dedup].append(last_valid_loss(text))
    print(f"\nCWT {args.updates} updates + CE head fine-tune {args.finetune_updates} updates, "
          f"seeds {args.seeds}: valid LM loss (bits)")
    for dedup, label in ((False, "all targets (original)"), (True, "--cwt-dedup")):
        values = results[dedup]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {label} | {statistics.mean(values):.3f} ± {std:.3f} | {values} |")


if __name__ == "__main__":
    main()
