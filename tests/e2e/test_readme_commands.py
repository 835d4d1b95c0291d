"""Every command of the README, as written, in the order a reader meets it, in a fresh
folder (the README's own relative paths: corpus/, runs/...). The test only appends
overrides that scale a run down (fewer updates, smaller batches, a smaller trunk for
the base/large presets), never edits a command; so the README cannot drift from what
works. Python blocks run as scripts in the same folder, after the commands before them.
"""

import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import BIN, REPO

pytestmark = pytest.mark.slow

# commands that cannot run here, and why (everything else runs)
NOT_RUN = {
    "make test": "the suite itself (CI runs it)",
    "energy-lm-prepare wikitext103": "downloads WikiText-103 and GPT-2's BPE",
    "energy-lm-prepare pile": "needs the Pile's .jsonl.zst files",
}
SMALL_ENCODER = ["--encoder-layers", "2", "--encoder-embed-dim", "64",
                 "--encoder-ffn-embed-dim", "128", "--encoder-attention-heads", "2"]
SMALL_DECODER = [a.replace("encoder", "decoder") for a in SMALL_ENCODER]


def readme_blocks():
    """[(language, text)] of the README's fenced code blocks, in order."""
    text = (REPO / "README.md").read_text()
    return re.findall(r"```(bash|python)\n(.*?)```", text, flags=re.S)


def shell_commands(block: str):
    """One string per command: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    for line in joined.splitlines():
        line = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
        if line:
            yield line


def scaled_down(argv, tmp_path):
    """The overrides the test appends, by tool."""
    tool = argv[0]
    if tool == "make":  # the installation is this environment's own: -o keeps it as it is
        return [f"DEMO_DIR={tmp_path / 'demo'}", "DEMO_UPDATES=3", "-C", str(REPO),
                "-o", ".venv/.energy-lm-installed"]
    if tool == "fairseq-train":
        extra = ["--max-update", "2", "--batch-size", "2", "--num-workers", "0",
                 "--max-valid-steps", "4"]  # validation runs, on its first batches
        # an imported model's flags come from its train-args.txt: "$(cat ...)"
        arch = argv[argv.index("--arch") + 1] if "--arch" in argv else ""
        if arch.endswith(("_base", "_large")):
            extra += SMALL_ENCODER if arch.startswith("roberta") else SMALL_DECODER
        return extra
    if tool == "fairseq-hydra-train":
        return ["optimization.max_update=2", "dataset.batch_size=2", "dataset.num_workers=0"]
    if tool == "energy-lm-eval-elm":  # exact Z scores every vocabulary entry: one short row
        return ["--max-batches", "1", "--batch-size", "1", "--tokens-per-sample", "32",
                "--exact-z-batches", "1"]
    return []


def run(command: str, cwd, what):
    """A command line through bash, as a reader pastes it (this environment's tools
    first on PATH)."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    result = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True,
                            timeout=1200, env=env)
    assert result.returncode == 0, (f"README {what} failed ({result.returncode}):\n"
                                    f"{command}\n{result.stdout[-2000:]}\n"
                                    f"{result.stderr[-4000:]}")
    return result


def test_every_readme_command_runs_as_written(tmp_path):
    ran, skipped = [], []
    for language, block in readme_blocks():
        if language == "python":
            script = tmp_path / f"readme_block_{len(ran)}.py"
            script.write_text(block)
            result = run(shlex.join([sys.executable, str(script)]), tmp_path, "python block")
            ran.append(("python", block.splitlines()[0]))
            continue
        for command in shell_commands(block):
            reason = next((why for start, why in NOT_RUN.items() if command.startswith(start)),
                          None)
            if reason:
                skipped.append((command, reason))
                continue
            argv = shlex.split(command)
            result = run(f"{command} {shlex.join(scaled_down(argv, tmp_path))}", tmp_path,
                         "command")
            ran.append((argv[0], command))
            if argv[0] == "make":  # the demo ends with the fill-mask top-3
                assert "model: RobertaEnergyModel" in result.stdout
                assert len(re.findall(r"^\s+\d\.\d{3}  ", result.stdout, flags=re.M)) >= 3
    tools = [tool for tool, _ in ran]
    # the README's path: data, every criterion, evaluation, the hub, hydra, adaptation
    assert tools.count("fairseq-train") >= 6 and "fairseq-hydra-train" in tools
    assert {"make", "energy-lm-prepare", "energy-lm-add-head", "fairseq-eval-lm",
            "energy-lm-eval-elm", "python", "energy-lm-from-hf", "energy-lm-to-hf"} <= set(tools)
    assert len(skipped) == len(NOT_RUN), skipped  # nothing else is skipped
    assert (tmp_path / "gpt2-monarc" / "energy_head.safetensors").is_file()
    for save_dir in ("mlm-monarc", "lm-nce", "headless", "headed", "stock-lm-monarc",
                     "gpt2-monarc"):
        assert (tmp_path / "runs" / save_dir / "checkpoint_last.pt").is_file(), save_dir
