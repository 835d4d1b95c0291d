"""Stock fairseq models continue in our architectures (energy_lm.models.stock_conversion):
a tiny stock `transformer_lm` / `roberta` trained here continues under MonArc with
`--arch transformer_lm_energy` / `roberta_energy` and the stock run's size flags; the
first update's LM loss equals what the stock model itself gets on that batch, and the
energy term starts at zero. With --alibi / --clap-head the checkpoint is converted, with
one warning naming what must be retrained."""

import json

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow

SIZES = {"lm": ["--decoder-layers", "2", "--decoder-embed-dim", "32",
                "--decoder-ffn-embed-dim", "64", "--decoder-attention-heads", "2"],
         "mlm": ["--encoder-layers", "2", "--encoder-embed-dim", "32",
                 "--encoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2"]}
TASK = {"lm": ["--task", "language_modeling"], "mlm": ["--task", "masked_lm"]}
STOCK = {"lm": ("transformer_lm", "cross_entropy"), "mlm": ("roberta", "masked_lm")}
# dropout off: two model classes need not draw dropout masks from the RNG alike
COMMON = ["--tokens-per-sample", "64", "--batch-size", "4", "--optimizer", "adam",
          "--lr", "1e-3", "--dropout", "0", "--attention-dropout", "0", "--seed", "3",
          "--log-format", "json", "--log-interval", "1", "--num-workers", "0"]
CONTINUE = ["--reset-optimizer", "--reset-dataloader", "--reset-meters",
            "--reset-lr-scheduler", "--max-update", "1"]


def first_update(stdout: str) -> dict:
    for line in stdout.splitlines():
        if '"num_updates": "1"' in line and "{" in line:
            return json.loads(line[line.index("{"):])
    raise AssertionError(f"no update-1 record in:\n{stdout[-2000:]}")


@pytest.fixture(scope="module")
def stock_checkpoints(data_bin, tmp_path_factory):
    root = tmp_path_factory.mktemp("stock")
    for family, (arch, criterion) in STOCK.items():
        run_cli("fairseq-train", data_bin, *TASK[family], "--arch", arch, "--criterion",
                criterion, *SIZES[family], *COMMON, "--max-update", "5",
                "--save-dir", root / family)
    return root


@pytest.mark.parametrize("family,energy_arch", [("lm", "transformer_lm_energy"),
                                                ("mlm", "roberta_energy")])
def test_a_stock_checkpoint_continues_under_monarc_with_its_lm_loss(
        data_bin, tmp_path, stock_checkpoints, family, energy_arch):
    restore = ["--restore-file", stock_checkpoints / family / "checkpoint_last.pt"]
    arch, criterion = STOCK[family]
    stock = run_cli("fairseq-train", data_bin, *TASK[family], "--arch", arch, "--criterion",
                    criterion, *SIZES[family], *COMMON, *restore, *CONTINUE,
                    "--save-dir", tmp_path / "stock")
    ours = run_cli("fairseq-train", data_bin, *TASK[family], "--arch", energy_arch,
                   "--criterion", "monarc", *SIZES[family], *COMMON, *restore, *CONTINUE,
                   "--save-dir", tmp_path / "ours")
    want, got = first_update(stock.stdout), first_update(ours.stdout)
    assert got["lm_loss"] == want["loss"]  # both base 2, as logged (3 decimals)
    assert float(got["ebm_loss"]) == 0 and got["elm_loss"] == got["lm_loss"]  # E = 0
    assert "stock fairseq checkpoint converted" not in ours.stdout + ours.stderr


@pytest.mark.parametrize("family,flags,converted", [
    ("lm", ["--arch", "transformer_lm_energy", "--alibi", "causal", "--clap-head"],
     "replaced the softmax head by a CLAP head"),
    ("mlm", ["--arch", "roberta_energy", "--alibi", "symmetric", "--clap-head"],
     "dropped the position table"),
])
def test_positions_to_alibi_and_softmax_to_clap_convert_with_one_warning(
        data_bin, tmp_path, stock_checkpoints, family, flags, converted):
    result = run_cli("fairseq-train", data_bin, *TASK[family], *flags, "--criterion", "monarc",
                     *SIZES[family], *COMMON, "--restore-file",
                     stock_checkpoints / family / "checkpoint_last.pt", *CONTINUE,
                     "--save-dir", tmp_path)
    warnings = [line for line in (result.stdout + result.stderr).splitlines()
                if "stock fairseq checkpoint converted" in line]
    assert len(warnings) == 1 and converted in warnings[0] and "retrained" in warnings[0]
    assert (tmp_path / "checkpoint_last.pt").is_file()
