"""`energy-lm-harness-tasks OUT`: the local data of the shipped harness tasks, built from a
corpus this machine has, and the task YAMLs pointing at it.

    energy-lm-harness-tasks harness-tasks                      # the embedded corpus's test split
    energy-lm-harness-tasks harness-tasks --corpus debian      # an energy-lm-prepare output
    energy-lm-harness --tasks energy_lm_lastword --include_path harness-tasks ...

From the documents of one split (`--split`, default test; the embedded corpus, or
CORPUS/raw/SPLIT.txt as `energy-lm-prepare` writes it):
  lastword.jsonl    {context, target}: a passage without its last word, and that word
  perplexity.jsonl  {text}: whole documents
  cloze.jsonl       {choices, gold}: a sentence and three copies with one word swapped for
                    another word of the split (seeded), shuffled; gold = the original's index
OUT also gets energy_lm_lastword.yaml, energy_lm_perplexity.yaml, energy_lm_cloze.yaml
(the package's templates with OUT's absolute path), for the harness's --include_path.
"""

import argparse
import json
import random
import re
from importlib import resources
from pathlib import Path
from typing import Dict, List, Optional

TEMPLATES = ("energy_lm_lastword.yaml", "energy_lm_perplexity.yaml", "energy_lm_cloze.yaml")
WORD = re.compile(r"[A-Za-z]{3,}")


def documents(corpus: Optional[Path], split: str) -> List[str]:
    if corpus is None:
        from energy_lm.data.embedded_corpus import build_splits

        return build_splits()[split]
    path = corpus / "raw" / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"--corpus: no {path} (an energy-lm-prepare output folder)")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def last_word(doc: str, max_words: int) -> Optional[Dict[str, str]]:
    """The passage (at most max_words words, ending on a word) and its last word."""
    words = doc.split()[:max_words]
    while words and not WORD.fullmatch(words[-1].strip(".,;:!?\"')")):
        words.pop()
    if len(words) < 6:
        return None
    target = words[-1].strip(".,;:!?\"')")
    if not WORD.fullmatch(target):
        return None
    return {"context": " ".join(words[:-1]), "target": target}


def cloze(doc: str, vocabulary: List[str], rng: random.Random, max_words: int) -> Optional[dict]:
    words = doc.split()[:max_words]
    slots = [i for i, w in enumerate(words) if WORD.fullmatch(w)]
    if len(words) < 6 or not slots:
        return None
    i = rng.choice(slots)
    others = rng.sample([w for w in vocabulary if w != words[i]], 3)
    choices = [" ".join(words)] + [" ".join(words[:i] + [w] + words[i + 1:]) for w in others]
    order = list(range(4))
    rng.shuffle(order)
    return {"choices": [choices[j] for j in order], "gold": order.index(0)}


def build(out: Path, docs: List[str], max_docs: int = 500, max_words: int = 60,
          seed: int = 1) -> Dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    docs = docs[:max_docs]
    vocabulary = sorted({w for d in docs for w in d.split() if WORD.fullmatch(w)})
    rows = {
        "lastword": [r for r in (last_word(d, max_words) for d in docs) if r],
        "perplexity": [{"text": d} for d in docs],
        "cloze": [r for r in (cloze(d, vocabulary, rng, max_words) for d in docs) if r],
    }
    for name, items in rows.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items),
                                           encoding="utf-8")
    for template in TEMPLATES:
        text = resources.files("energy_lm.harness").joinpath("tasks", template).read_text()
        (out / template).write_text(text.replace("DATA_DIR", str(out.resolve())))
    return {name: len(items) for name, items in rows.items()}


def main(argv=None) -> Dict[str, int]:
    parser = argparse.ArgumentParser(prog="energy-lm-harness-tasks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder for the data and the task YAMLs")
    parser.add_argument("--corpus", type=Path, help="an energy-lm-prepare output (default: "
                                                    "the embedded corpus)")
    parser.add_argument("--split", default="test", choices=["train", "valid", "test"],
                        help="the split whose documents make the tasks (default test)")
    parser.add_argument("--max-docs", type=int, default=500,
                        help="use at most this many documents (default 500)")
    parser.add_argument("--seed", type=int, default=1,
                        help="the cloze task's word swaps and choice order (default 1)")
    args = parser.parse_args(argv)
    counts = build(args.out, documents(args.corpus, args.split), args.max_docs, seed=args.seed)
    print(", ".join(f"{name}: {n} documents" for name, n in counts.items()) +
          f" -> {args.out}/ (use --include_path {args.out})")
    return counts


def cli_main() -> None:
    from energy_lm.cli.errors import run_reporting_errors

    run_reporting_errors("energy-lm-harness-tasks", main, (FileNotFoundError, ValueError))
