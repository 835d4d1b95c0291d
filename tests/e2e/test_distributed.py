"""fairseq's own torch.distributed path on the CPU: two `fairseq-train` processes over
loopback (gloo, `--distributed-no-spawn --distributed-rank R`), the default
`--ddp-backend pytorch_ddp` (made to work on the CPU by energy_lm.patches.compat)."""

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import BIN

pytestmark = pytest.mark.slow

SMALL = {"causal": ["--task", "language_modeling", "--arch", "transformer_lm_zero_clap_tiny",
                    "--decoder-layers", "2", "--decoder-embed-dim", "32",
                    "--decoder-ffn-embed-dim", "64", "--decoder-attention-heads", "4"],
         "masked": ["--task", "masked_lm", "--arch", "roberta_zero_clap_tiny",
                    "--encoder-layers", "2", "--encoder-embed-dim", "32",
                    "--encoder-ffn-embed-dim", "64", "--encoder-attention-heads", "4"]}
COMMON = ["--cpu", "--tokens-per-sample", "64", "--sample-break-mode", "none",
          "--optimizer", "adam", "--lr", "1e-3", "--dropout", "0", "--attention-dropout", "0",
          "--required-batch-size-multiple", "1", "--no-save", "--log-format", "json",
          "--log-interval", "1", "--num-workers", "0", "--seed", "5", "--disable-validation"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(data_bin: Path, out: Path, world: int, extra: list, timeout: int = 240) -> list:
    """Run `world` fairseq-train processes; return rank 0's logged train_inner losses."""
    out.mkdir(parents=True, exist_ok=True)
    dist = []
    if world > 1:
        dist = ["--distributed-world-size", str(world), "--distributed-backend", "gloo",
                "--distributed-init-method", f"tcp://127.0.0.1:{free_port()}",
                "--distributed-no-spawn", "--device-id", "0"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = []
    for rank in range(world):
        rank_args = ["--distributed-rank", str(rank)] if world > 1 else []
        log = open(out / f"rank{rank}.log", "w")
        procs.append((subprocess.Popen([str(BIN / "fairseq-train"), str(data_bin), *COMMON, *extra,
                                        *dist, *rank_args], stdout=log, stderr=subprocess.STDOUT,
                                       env=env), log))
    for proc, log in procs:
        try:
            proc.wait(timeout=timeout)
        finally:
            proc.kill()
            log.close()
    for rank, (proc, _) in enumerate(procs):
        text = (out / f"rank{rank}.log").read_text()
        # only rank 0 logs at INFO level
        assert proc.returncode == 0 and (rank > 0 or "done training" in text), \
            f"rank {rank}:\n{text[-3000:]}"
    losses = []
    for line in (out / "rank0.log").read_text().splitlines():
        if "train_inner" in line and "{" in line:
            losses.append(float(json.loads(line[line.index("{"):])["loss"]))
    return losses


@pytest.mark.parametrize("family", ["causal", "masked"])
@pytest.mark.parametrize("criterion", ["plain", "monarc", "nce", "cwt"])
def test_every_criterion_trains_on_two_processes(data_bin, tmp_path, family, criterion):
    name = {"plain": "cross_entropy" if family == "causal" else "masked_lm"}.get(criterion, criterion)
    losses = train(data_bin, tmp_path, 2, [*SMALL[family], "--criterion", name, "--batch-size", "2",
                                           "--max-update", "3"])
    assert len(losses) == 3 and all(loss == loss and abs(loss) < 1e4 for loss in losses)


@pytest.mark.parametrize("family", ["causal", "masked"])
def test_two_processes_follow_the_one_process_loss_curve(data_bin, tmp_path, family):
    """MonArc, B = 2 per rank on 2 processes vs 1 process accumulating the same two
    batches (--update-freq 2; fairseq shuffles whole batches, so a batch of 4 would hold
    other examples): the same examples per update, the same (keyed) samples, so in fp32
    the same losses up to summation order."""
    args = [*SMALL[family], "--criterion", "monarc", "--max-update", "6"]
    two = train(data_bin, tmp_path / "two", 2, [*args, "--batch-size", "2"])
    one = train(data_bin, tmp_path / "one", 1, [*args, "--batch-size", "2", "--update-freq", "2"])
    assert len(one) == len(two) == 6
    for step, (a, b) in enumerate(zip(one, two)):
        assert abs(a - b) <= 2e-3 * abs(a), f"update {step + 1}: 1 process {a}, 2 processes {b}"
    # and a run whose samples differ (another seed) does not follow it that closely
    other = train(data_bin, tmp_path / "other", 1, [*args, "--batch-size", "2", "--update-freq", "2",
                                                    "--seed", "6"])
    assert any(abs(a - c) > 2e-3 * abs(a) for a, c in zip(one, other))
