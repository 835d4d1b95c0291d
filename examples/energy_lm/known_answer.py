"""Known-answer demonstration of the energy path, independent of scale.

A synthetic language whose true per-token entropy on the valid split is computed
exactly: a first-order Markov chain over a few dozen words (each word has a handful of
likely successors; a document ends with probability `--stop` after each word; a new one
starts from its own first-word distribution). The LM's proposal is handicapped on purpose
(`--proposal-uniform-mix m`: q = (1 - m) softmax + m uniform, so q can never be sharp),
and MonArc and NCE train an energy on top of it through the real `fairseq-train`;
`energy-lm-eval-elm --exact-z` scores the valid split with Z summed over the vocabulary.

What it must show: the ELM recovers most of the gap between the handicapped LM and the
true entropy (the floor), and with an ordinary proposal (m = 0) ELM ~ LM.

    python examples/energy_lm/known_answer.py --out /tmp/known_answer

Each run is one process with one thread; `--jobs 2` runs two side by side.
"""

import argparse
import contextlib
import io
import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

STOP = "</s>"  # fairseq's end-of-line symbol: the chain's document end


def make_chain(num_words: int, successors: int, stop: float, seed: int):
    """(words, first (W,), transitions (W, W + 1)): the last column is the stop."""
    rng = np.random.default_rng(seed)
    words = [f"w{i:02d}" for i in range(num_words)]
    first = rng.dirichlet(np.full(num_words, 0.5))
    trans = np.zeros((num_words, num_words + 1))
    for w in range(num_words):
        nxt = rng.choice(num_words, size=successors, replace=False)
        trans[w, nxt] = rng.dirichlet(np.ones(successors)) * (1.0 - stop)
        trans[w, num_words] = stop
    return words, first, trans


def sample_stream(first, trans, num_tokens: int, seed: int) -> List[List[int]]:
    """Documents (lists of word ids) until num_tokens symbols (words + ends) are drawn."""
    rng = np.random.default_rng(seed)
    stop_id = trans.shape[1] - 1
    docs, total = [], 0
    while total < num_tokens:
        doc = [int(rng.choice(len(first), p=first))]
        while True:
            nxt = int(rng.choice(stop_id + 1, p=trans[doc[-1]]))
            if nxt == stop_id:
                break
            doc.append(nxt)
        docs.append(doc)
        total += len(doc) + 1
    return docs


def true_bits(docs: List[List[int]], first, trans) -> Tuple[float, int]:
    """The chain's own NLL of the split as the LM task scores it: the documents form one
    stream, each symbol predicted from the one before (the stream starts after </s>)."""
    stop_id = trans.shape[1] - 1
    nll, count = 0.0, 0
    for doc in docs:
        nll -= math.log(first[doc[0]])
        for a, b in zip(doc, doc[1:] + [stop_id]):
            nll -= math.log(trans[a, b])
        count += len(doc) + 1
    return nll / count / math.log(2), count


def write_corpus(out: Path, args) -> Dict[str, float]:
    words, first, trans = make_chain(args.words, args.successors, args.stop, args.seed)
    text = out / "text"
    text.mkdir(parents=True, exist_ok=True)
    floors = {}
    for split, tokens, seed in (("train", args.train_tokens, args.seed + 1),
                                ("valid", args.valid_tokens, args.seed + 2)):
        docs = sample_stream(first, trans, tokens, seed)
        (text / f"{split}.txt").write_text(
            "".join(" ".join(words[w] for w in doc) + "\n" for doc in docs))
        floors[split] = true_bits(docs, first, trans)
    subprocess.run([sys.executable, "-m", "fairseq_cli.preprocess", "--only-source",
                    "--trainpref", str(text / "train.txt"), "--validpref", str(text / "valid.txt"),
                    "--destdir", str(out / "data-bin"), "--workers", "1"],
                   check=True, stdout=subprocess.DEVNULL)
    return {"floor_bits": floors["valid"][0], "valid_tokens": floors["valid"][1]}


RUNS = {  # name: (criterion, proposal mix)
    "ce_handicapped": ("cross_entropy", 0.5),
    "monarc_handicapped": ("monarc", 0.5),
    "nce_handicapped": ("nce", 0.5),
    "monarc_plain": ("monarc", 0.0),
}


def train(out: Path, name: str, args) -> Path:
    criterion, mix = RUNS[name]
    save = out / "runs" / name
    if (save / "checkpoint_last.pt").exists() and (save / "done").exists():
        return save
    beside = Path(sys.executable).parent / "fairseq-train"  # this environment's, if any
    cmd = [str(beside) if beside.exists() else "fairseq-train", str(out / "data-bin"), "--task", "language_modeling",
           "--arch", "transformer_lm_alibi_tiny", "--decoder-layers", "2",
           "--decoder-embed-dim", "64", "--decoder-ffn-embed-dim", "256",
           "--decoder-attention-heads", "4", "--proposal-uniform-mix", str(mix),
           "--criterion", criterion, "--tokens-per-sample", "64", "--sample-break-mode", "none",
           "--batch-size", "16", "--optimizer", "adam", "--adam-betas", "(0.9,0.98)",
           "--lr", str(args.lr), "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "50",
           "--max-update", str(args.updates), "--dropout", "0.0", "--clip-norm", "1.0",
           "--save-dir", str(save), "--no-epoch-checkpoints", "--disable-validation",
           "--log-format", "simple", "--log-interval", "100", "--seed", str(args.seed),
           "--cpu", "--num-workers", "0"]
    # the settings docs/measurements.md's table was measured with (the linear head, MonArc
    # weight 1, NCE weight 2), pinned against later changes of the defaults
    cmd += ["--energy-head", "linear", "--energy-weight", "2.0" if criterion == "nce" else "1.0"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    save.mkdir(parents=True, exist_ok=True)
    with open(save / "train.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    (save / "done").touch()
    return save


def evaluate(out: Path, save: Path) -> Dict[str, float]:
    cached = save / "eval.json"
    if cached.exists():
        return json.loads(cached.read_text())
    import torch

    from energy_lm.cli.eval_elm import main as eval_main

    torch.set_num_threads(1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = eval_main([str(out / "data-bin"), "--path", str(save / "checkpoint_last.pt"),
                            "--exact-z", "--cpu", "--batch-size", "16", "--topk", "4",
                            "--num-samples", "8", "--tokens-per-sample", "64"])
    (save / "eval.txt").write_text(printed.getvalue())
    cached.write_text(json.dumps(result))
    return result


def table(results: Dict[str, dict], floor: float) -> str:
    lines = [f"true entropy of the valid split (the floor): {floor:.4f} bits/token", "",
             "| run | proposal q | LM bits | ELM bits (exact Z) | ELM estimate | "
             "gap recovered |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        criterion, mix = RUNS[name]
        gap = r["lm"] - floor
        recovered = (r["lm"] - r["elm_exact"]) / gap if criterion != "cross_entropy" and gap > 0 else None
        lines.append(
            f"| {name} | {'uniform mix ' + str(mix) if mix else 'plain'} | {r['lm']:.4f} | "
            + (f"{r['elm_exact']:.4f} | {r['elm_est']:.4f} ± {r['elm_est_stderr']:.4f} | "
               f"{recovered:.0%} |" if recovered is not None else "- | - | - |"))
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--words", type=int, default=32)
    parser.add_argument("--successors", type=int, default=3)
    parser.add_argument("--stop", type=float, default=0.05)
    parser.add_argument("--train-tokens", type=int, default=200_000)
    parser.add_argument("--valid-tokens", type=int, default=10_000)
    parser.add_argument("--updates", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--runs", default=",".join(RUNS))
    args = parser.parse_args(argv)
    names = args.runs.split(",")
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        parser.error(f"unknown run(s) {unknown}; choose from {', '.join(RUNS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    corpus_file = args.out / "corpus.json"
    if not corpus_file.exists():
        corpus_file.write_text(json.dumps(write_corpus(args.out, args)))
    corpus = json.loads(corpus_file.read_text())
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        saves = dict(zip(names, pool.map(lambda n: train(args.out, n, args), names)))
    results = {name: evaluate(args.out, save) for name, save in saves.items()}
    text = table(results, corpus["floor_bits"])
    (args.out / "table.md").write_text(text + "\n")
    print(text)
    return text


if __name__ == "__main__":
    main()
