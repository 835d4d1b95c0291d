"""Known answer on real text: a proposal handicapped on purpose, and how much of the
handicap each energy head gives back (issue 20; the synthetic twin is known_answer.py).

With `--proposal-uniform-mix m` the LM's proposal is q = (1 - m) softmax + m / V, so q can
never be sharp and the LM pays for it; an energy that sees what q misses can give that
back. On real text the true entropy is unknown, so the reference is what an LM without
the handicap reaches: a plain CE run of the same model, seed and updates. For each head,
MonArc (its defaults otherwise: weight 2, one candidate) trains from scratch with the mix
through the real fairseq-train (energy_final.py's settings: transformer_lm_alibi_tiny,
blocks of 128, batch 16, lr 1e-3); `energy-lm-eval-elm --exact-z --per-token` scores the
first --exact-batches valid blocks with Z summed over the whole vocabulary, and the CE
run is scored on the same tokens. Per head, in bits per token:

    handicap    LM (mixed q) - LM (CE)     what the mix costs
    gain        LM (mixed q) - ELM         what the energy gives back (paired ± s.e.)
    recovered   gain / handicap

    energy-lm-prepare debian --out debian --workers 1
    OMP_NUM_THREADS=1 python examples/energy_lm/known_answer_real.py --data debian/data-bin \\
        --out known_answer_real --jobs 2

Finished runs and evaluations are not redone (the CE run is energy_final.py's: its
`ce_seed<S>` folder can be copied into OUT); the table goes to OUT/known_answer_real.md.
"""

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from energy_final import run  # noqa: E402  (same folder)
from run_scoring import (  # noqa: E402
    Key, elm_bits, evaluate, paired, read_records, score_lm, study_parser)


def on_keys(records: Dict[Key, dict], keys) -> Dict[Key, dict]:
    """The records of the tokens in keys (the CE run is scored on more blocks)."""
    missing = set(keys) - set(records)
    if missing:
        raise ValueError(f"the reference run lacks {len(missing)} of the scored tokens")
    return {k: records[k] for k in keys}


def row(head: str, mixed: Dict[Key, dict], ce: Dict[Key, dict]) -> dict:
    ce = on_keys(ce, mixed)
    handicap = paired(mixed, ce, lambda r: r["lm"], lambda r: r["lm"])
    gain = paired(mixed, mixed, lambda r: r["lm"], elm_bits)
    return {"head": head, "tokens": gain["tokens"], "handicap": handicap, "gain": gain,
            "recovered": gain["mean"] / handicap["mean"]}


def table(rows: List[dict], mix: float, updates: int) -> str:
    lines = [f"MonArc with q = {1 - mix:g} softmax + {mix:g} uniform, {updates} updates; "
             "the reference is CE without the mix (same seed, updates, tokens); bits per token",
             "", "| head | tokens | handicap: LM (mixed) - LM (CE) | gain: LM (mixed) - ELM, "
             "exact Z | handicap recovered |", "|---|---|---|---|---|"]
    for r in rows:
        h, g = r["handicap"], r["gain"]
        lines.append(f"| {r['head']} | {r['tokens']} | {h['mean']:.4f} ± {h['stderr']:.4f} | "
                     f"{g['mean']:.4f} ± {g['stderr']:.4f} | {100 * r['recovered']:.0f}% |")
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = study_parser(__doc__)
    parser.add_argument("--heads", nargs="+", default=["linear", "rich", "seed"])
    parser.add_argument("--mix", type=float, default=0.5, help="--proposal-uniform-mix")
    parser.add_argument("--updates", type=int, default=400, help="each run, from scratch")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--exact-batches", type=int, default=2,
                        help="valid blocks scored with exact Z (2 blocks: 245 tokens, ~5 min)")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    def one(head: str) -> Path:
        if head == "ce":
            save = run(args.data, args.out / f"ce_seed{args.seed}",
                       ["--criterion", "cross_entropy"], args.updates, args.seed)
            score_lm(args.data, save, args.exact_batches)
            return save
        save = run(args.data, args.out / f"{head}-mix{args.mix:g}_seed{args.seed}",
                   ["--criterion", "monarc", "--energy-head", head, "--proposal-uniform-mix",
                    str(args.mix)], args.updates, args.seed)
        evaluate(args.data, save, args.exact_batches, whole_split=False)
        return save

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        saves = dict(zip(["ce", *args.heads], pool.map(one, ["ce", *args.heads])))
    ce = read_records(saves["ce"] / "tokens.jsonl")
    rows = [row(h, read_records(saves[h] / "tokens.jsonl"), ce) for h in args.heads]
    text = table(rows, args.mix, args.updates)
    (args.out / "known_answer_real.json").write_text(json.dumps(rows, indent=1))
    (args.out / "known_answer_real.md").write_text(text + "\n")
    print(text)
    return text


if __name__ == "__main__":
    main()
