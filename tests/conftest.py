"""Shared fixtures: a small binarized slice of the embedded corpus, and helpers that
run the real fairseq command-line tools (the console scripts of this environment)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import energy_lm  # noqa: F401  (in-process tests do not rely on the autoload hook)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# GPT-2's BPE files beside the checkout (../shared/data/gpt2): tests that need them skip
# without them, as on a machine that has only the repository
needs_gpt2_bpe = pytest.mark.skipif(
    not (SHARED_DATA / "gpt2" / "encoder.json").is_file(),
    reason="needs ../shared/data/gpt2 (GPT-2 BPE files), absent on this machine")
BIN = Path(sys.executable).parent


def load_script(relative: str):
    """Import a script of the repository (examples/, benchmarks/) as a module."""
    import importlib.util

    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(tool: str, *args, env=None, check=True, timeout=600) -> subprocess.CompletedProcess:
    """Run `tool` (fairseq-train, fairseq-hydra-train, ...) as a user would."""
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("OMP_NUM_THREADS", "2")
    result = subprocess.run([str(BIN / tool), *map(str, args)], capture_output=True, text=True,
                            env=full_env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{tool} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-5000:]}")
    return result


# What the C++ runtime printed after Python's own error when the interpreter exited with
# fairseq's prefetch thread inside torch (fixed in energy_lm.patches.compat; kept so that a
# regression fails the test that checks the exit, not every error-message test)
TEARDOWN_NOISE = ("terminate called without an active exception", "Aborted")


def error_line(stderr: str) -> str:
    """The last line of a tool's stderr that is its own, i.e. the one-line error."""
    lines = [line for line in stderr.strip().splitlines()
             if not line.strip().startswith(TEARDOWN_NOISE)]
    return lines[-1] if lines else ""


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """The first 800 documents of the embedded corpus, BPE-encoded and binarized."""
    from energy_lm.data.prepare import prepare_embedded

    out = tmp_path_factory.mktemp("embedded")
    prepare_embedded(out, vocab_size=1500, max_documents=800)
    return out


@pytest.fixture(scope="session")
def data_bin(corpus_dir) -> Path:
    return corpus_dir / "data-bin"


TRAIN_SMALL = ["--batch-size", "4", "--tokens-per-sample", "64", "--sample-break-mode", "none",
               "--optimizer", "adam", "--lr", "1e-3", "--weight-decay", "0.01",
               "--encoder-layers", "2", "--encoder-embed-dim", "32",
               "--encoder-ffn-embed-dim", "64", "--encoder-attention-heads", "4",
               "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "1",
               "--num-workers", "0", "--cpu", "--seed", "3"]
LM_SMALL = [a.replace("encoder", "decoder") for a in TRAIN_SMALL]


SMALL_ENC = ["--encoder-layers", "2", "--encoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
             "--encoder-attention-heads", "4"]
SMALL_DEC = [a.replace("encoder", "decoder") for a in SMALL_ENC]


MONARC_LM_BLOCK = 16


@pytest.fixture(scope="session")
def monarc_lm_checkpoint(data_bin, tmp_path_factory) -> Path:
    """A causal MonArc checkpoint (transformer_lm_zero_clap_tiny, one layer, blocks of 16,
    3 updates through fairseq-train), shared by the slow tests of the tools that load one
    (harness, generation)."""
    save = tmp_path_factory.mktemp("monarc_lm")
    small = list(LM_SMALL)
    small[small.index("--tokens-per-sample") + 1] = str(MONARC_LM_BLOCK)
    run_cli("fairseq-train", data_bin, "--task", "language_modeling", "--arch",
            "transformer_lm_zero_clap_tiny", *small, "--decoder-layers", "1", "--criterion",
            "monarc", "--max-update", "3", "--save-dir", save)
    return save / "checkpoint_last.pt"


def build_model(data_bin, arch, *extra, task="masked_lm"):
    """An in-process model built through fairseq's own parser and task (eval mode, no
    dropout, seed 0); returns (model, task)."""
    import torch
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    small = SMALL_ENC if arch.startswith("roberta") else SMALL_DEC
    argv = [str(data_bin), "--task", task, "--arch", arch, "--tokens-per-sample", "64",
            "--dropout", "0", "--attention-dropout", "0", *small, *extra]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    cfg = convert_namespace_to_omegaconf(args)
    task_obj = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    return task_obj.build_model(cfg.model).eval(), task_obj


# --- paired-attention kernels: what the reference, flex and Triton tests share ---------

# (causal, ALiBi mode or None): "causal" ALiBi only with causal attention, the others
# only bidirectional, as the models use them
PAIRED_MODES = [(True, None), (True, "causal"), (False, None), (False, "symmetric"),
                (False, "shifted")]
PAIRED_MODE_IDS = ["causal", "causal-alibi", "bidir", "bidir-symmetric", "bidir-shifted"]


@pytest.fixture(scope="module")
def single_thread():
    """Kernel test tensors are tiny: extra intra-op threads only spin against a busy CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def layout_of(cand_pos, num_data: int, causal: bool, alibi_slopes=None, alibi_mode=None,
              segment_ids=None, key_padding_mask=None):
    """The kernels' PairedLayout from the parts the kernel tests vary (ALiBi's mode
    defaults to causal when only slopes are given)."""
    from energy_lm.kernels import Alibi, PairedLayout

    alibi = None if alibi_slopes is None else Alibi(alibi_slopes, alibi_mode or "causal")
    return PairedLayout.build(cand_pos, int(num_data), causal=causal, alibi=alibi,
                              segment_ids=segment_ids, key_padding_mask=key_padding_mask)


def paired_tensors(b: int, h: int, n: int, d: int, cand_pos, masks: str = "none",
                   dtype=None, seed: int = 0, segment_rate: float = 0.3, generator=None,
                   kv_heads: int = 0):
    """Six random (B, H, ., D) tensors (q, k, v over N data positions; q_c, k_c, v_c over
    M = cand_pos.size(1) candidates; keys and values with kv_heads heads when given) and
    the optional masks: masks in none, padding (a quarter of the keys), segments (a new
    document with probability segment_rate at each position), both. Returns (six,
    segment_ids or None, key_padding_mask or None)."""
    import torch

    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    m = cand_pos.size(1)
    kv = kv_heads or h
    six = [torch.randn(b, heads, length, d, generator=g).to(dtype or torch.float32)
           for heads, length in ((h, n), (kv, n), (kv, n), (h, m), (kv, m), (kv, m))]
    pad = torch.rand(b, n, generator=g) < 0.25 if masks in ("padding", "both") else None
    seg = ((torch.rand(b, n, generator=g) < segment_rate).cumsum(1)
           if masks in ("segments", "both") else None)
    return six, seg, pad
