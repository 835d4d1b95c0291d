"""`energy-lm-plot`: the fairseq JSON-log and TensorBoard readers against hand-written
and real logs, the figure it draws, and its one-line errors."""

import base64
import subprocess
import sys

import numpy as np
import pytest

from conftest import LM_SMALL, error_line, run_cli
from energy_lm.cli.plot_logs import PlotLogsError, main, parse_json_log, parse_tensorboard_dir

# what fairseq-train prints with --log-format json (stdout), and the bare lines its
# --log-file holds, mixed with lines that are not records
LOG = """\
2026-11-24 13:29:24 | INFO | fairseq_cli.train | {'_name': None, 'common': {'seed': 3}}
2026-11-24 13:29:27 | INFO | train_inner | {"epoch": 1, "update": 0.003, "loss": "11.064", "lm_loss": "11.065", "ebm_loss": "-0.0007", "ppl": 2141.89, "num_updates": "2", "lr": "0.001", "train_wall": "2", "wall": "3"}
begin validation on "valid" subset
{"epoch": 1, "update": 0.006, "loss": "10.5", "lm_loss": "10.25", "ebm_loss": "0.25", "num_updates": "4", "lr": [0.001, 0.002], "wall": "7"}
2026-11-24 13:29:40 | INFO | valid | {"epoch": 1, "valid_loss": "10.75", "valid_lm_loss": "10.5", "valid_ppl": 1448.15, "valid_num_updates": "3", "valid_best_loss": "10.75"}
{"epoch": 1, "update": 0.006, "loss": "broken
{"epoch": 1, "train_loss": "10.8", "train_lm_loss": "10.7", "train_num_updates": "4", "train_train_wall": "5", "train_wall": "8"}
{"epoch": 1, "update": 0.006, "loss": "10.0", "lm_loss": "9.5", "ebm_loss": "0.5", "num_updates": "4", "wall": "7"}
"""

CE_LOG = """\
{"epoch": 1, "update": 0.003, "loss": "12.0", "num_updates": "2", "wall": "2"}
{"epoch": 1, "update": 0.006, "loss": "11.0", "num_updates": "4", "wall": "4"}
{"epoch": 1, "valid_loss": "11.5", "valid_num_updates": "4"}
"""

# Event files written by fairseq's own TensorboardProgressBarWrapper (through
# tensorboardX 2.6.5) for train_inner {loss, lm_loss, wall} at updates 2 and 4 and a
# valid {loss, lm_loss} at update 4; each starts with the file-version event and the
# sys.argv text summary fairseq adds.
TB_TRAIN_INNER = (
    "GAAAAAAAAACjf0siCZsP5XtkwdpBGg1icmFpbi5FdmVudDoy/b4KHEcAAAAAAAAAusP7mwkdGOV7ZMHaQSo8CjoK"
    "FXN5cy5hcmd2L3RleHRfc3VtbWFyeUIXCAcSBBICCAFCDWZhaXJzZXEtdHJhaW5KCAoGCgR0ZXh0Wqfo+xoAAAAA"
    "AAAAEpvYLQmwHuV7ZMHaQRACKg0KCwoEbG9zcxUAADFBWO4uTRoAAAAAAAAAEpvYLQkPIuV7ZMHaQRACKg0KCwoE"
    "d2FsbBUAAEBAt7WMoB0AAAAAAAAAYC/fIwlPIuV7ZMHaQRACKhAKDgoHbG1fbG9zcxUAAChBcZVAABoAAAAAAAAA"
    "EpvYLQl0i+V7ZMHaQRAEKg0KCwoEbG9zcxUAACRBJMAGJRoAAAAAAAAAEpvYLQkHjOV7ZMHaQRAEKg0KCwoEd2Fs"
    "bBUAAOBAypVV7x0AAAAAAAAAYC/fIwlEjOV7ZMHaQRAEKhAKDgoHbG1fbG9zcxUAABxBp8Iiyg==")
TB_VALID = (
    "GAAAAAAAAACjf0siCc7N5XtkwdpBGg1icmFpbi5FdmVudDoyUazl0kcAAAAAAAAAusP7mwla1+V7ZMHaQSo8CjoK"
    "FXN5cy5hcmd2L3RleHRfc3VtbWFyeUIXCAcSBBICCAFCDWZhaXJzZXEtdHJhaW5KCAoGCgR0ZXh0XChryhoAAAAA"
    "AAAAEpvYLQks3eV7ZMHaQRAEKg0KCwoEbG9zcxUAACJBClwGNh0AAAAAAAAAYC/fIwns4eV7ZMHaQRAEKhAKDgoH"
    "bG1fbG9zcxUAABhBH9NdDA==")


def write_tb(root, train_inner=TB_TRAIN_INNER, valid=TB_VALID):
    for tag, data in (("train_inner", train_inner), ("valid", valid)):
        (root / tag).mkdir(parents=True)
        raw = base64.b64decode(data) if isinstance(data, str) else data
        (root / tag / "events.out.tfevents.1795527151.vm").write_bytes(raw)
    return root


def lines_of(result, panel):
    ax = result["figure"].axes[list(result["panels"]).index(panel)]
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines}


# ---------------------------------------------------------------- readers

def test_json_log_records_by_tag_and_update():
    points = parse_json_log(LOG.splitlines())
    assert sorted(points) == ["train", "train_inner", "valid"]
    assert sorted(points["train_inner"]) == [2, 4]
    assert points["train_inner"][2] == {"loss": 11.064, "lm_loss": 11.065, "ebm_loss": -0.0007,
                                        "ppl": 2141.89, "lr": 0.001, "train_wall": 2.0, "wall": 3.0}
    # update 4 was logged twice (a resumed run): the later record wins; a list-valued lr
    # is not a number; "epoch" and "update" are not metrics
    assert points["train_inner"][4] == {"loss": 10.0, "lm_loss": 9.5, "ebm_loss": 0.5, "wall": 7.0}
    assert points["valid"] == {3: {"loss": 10.75, "lm_loss": 10.5, "ppl": 1448.15, "best_loss": 10.75}}
    # only the tag prefix is stripped: train_train_wall is the epoch's train_wall
    assert points["train"] == {4: {"loss": 10.8, "lm_loss": 10.7, "train_wall": 5.0, "wall": 8.0}}


def test_tensorboard_events_written_by_fairseq(tmp_path):
    points = parse_tensorboard_dir(write_tb(tmp_path))
    assert points == {"train_inner": {2: {"loss": 11.0625, "lm_loss": 10.5, "wall": 3.0},
                                      4: {"loss": 10.25, "lm_loss": 9.75, "wall": 7.0}},
                      "valid": {4: {"loss": 10.125, "lm_loss": 9.5}}}


def test_tensorboard_torn_or_corrupt_record_ends_the_file(tmp_path):
    """tensorboard's reader: a record still being written, or one whose checksum fails,
    ends what is read of its file; everything before it is kept."""
    raw = base64.b64decode(TB_TRAIN_INNER)
    points = parse_tensorboard_dir(write_tb(tmp_path / "torn", train_inner=raw[:-3]))
    assert points["train_inner"][4] == {"loss": 10.25, "wall": 7.0}  # lm_loss was being written
    corrupt = bytearray(raw)
    corrupt[-12] ^= 0x01  # a bit of the last float
    points = parse_tensorboard_dir(write_tb(tmp_path / "corrupt", train_inner=bytes(corrupt)))
    assert points["train_inner"][4] == {"loss": 10.25, "wall": 7.0}
    assert points["valid"] == {4: {"loss": 10.125, "lm_loss": 9.5}}


# ---------------------------------------------------------------- figure

def test_alternatives_labels_and_wall_axis(tmp_path):
    (tmp_path / "monarc.log").write_text(LOG)
    (tmp_path / "ce.log").write_text(CE_LOG)
    result = main([f"ce={tmp_path / 'ce.log'}", str(tmp_path / "monarc.log"),
                   "--metrics", "lm_loss|loss, ebm_loss", "--x", "wall", "-o", str(tmp_path / "p.png")])
    assert result["panels"] == {
        "lm_loss|loss": ["ce (loss) train", "ce (loss) valid",
                         "monarc (lm_loss) train", "monarc (lm_loss) valid"],
        "ebm_loss": ["monarc train"],  # no run logged a valid ebm_loss
    }
    lines = lines_of(result, "lm_loss|loss")
    assert lines["monarc (lm_loss) train"] == ([3.0, 7.0], [11.065, 9.5])
    assert lines["monarc (lm_loss) valid"] == ([5.0], [10.5])  # update 3 lies between walls 3 and 7
    assert lines["ce (loss) valid"] == ([4.0], [11.5])


def test_train_epoch_records_when_no_train_inner_and_smoothing(tmp_path):
    log = tmp_path / "epochs.log"
    log.write_text('{"epoch": 1, "train_loss": "8", "train_num_updates": "10"}\n'
                   '{"epoch": 2, "train_loss": "4", "train_num_updates": "20"}\n')
    result = main([str(log), "--smooth", "0.5", "-o", str(tmp_path / "p.png")])
    assert lines_of(result, "loss") == {"epochs train": ([10.0, 20.0], [8.0, 6.0])}
    result = main([str(log), "--min-update", "15", "-o", str(tmp_path / "p.png")])
    assert lines_of(result, "loss") == {"epochs train": ([20.0], [4.0])}
    with pytest.raises(PlotLogsError, match="no records from update 25 on"):
        main([str(log), "--min-update", "25"])


# ---------------------------------------------------------------- errors

def test_errors(tmp_path):
    with pytest.raises(PlotLogsError, match="log not found: .*missing.log"):
        main([str(tmp_path / "missing.log")])
    simple = tmp_path / "simple.log"
    simple.write_text("epoch 001:      2 / 600 loss=11.06, ppl=2141.9, wps=229.4, num_updates=2\n")
    with pytest.raises(PlotLogsError, match="no fairseq JSON records in .*--log-format json"):
        main([str(simple)])
    (tmp_path / "run.log").write_text(LOG)
    with pytest.raises(PlotLogsError, match="unknown metric 'nll_loss'; the logs have: best_loss, "
                                            "ebm_loss, lm_loss, loss, lr, ppl, train_wall, wall"):
        main([str(tmp_path / "run.log"), "--metrics", "loss,nll_loss"])
    with pytest.raises(PlotLogsError, match="no TensorBoard scalars"):
        (tmp_path / "empty_tb").mkdir()
        main([str(tmp_path / "empty_tb")])
    (tmp_path / "ce.log").write_text('{"loss": "3", "num_updates": "2"}\n')
    with pytest.raises(PlotLogsError, match="no 'wall' times"):
        main([str(tmp_path / "ce.log"), "--x", "wall", "-o", str(tmp_path / "p.png")])


@pytest.mark.slow
def test_cli_error_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "energy_lm.cli.plot_logs", str(tmp_path / "nope.log")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert error_line(result.stderr) == f"energy-lm-plot: error: log not found: {tmp_path / 'nope.log'}"


# ---------------------------------------------------------------- real runs

@pytest.mark.slow
def test_two_real_runs_to_png(data_bin, tmp_path):
    """CE (its --log-file) and MonArc (its captured stdout), 20 updates each."""
    common = ["--task", "language_modeling", "--arch", "transformer_lm_clap_tiny", *LM_SMALL,
              "--log-format", "json", "--log-interval", "2", "--validate-interval-updates", "10",
              "--max-update", "20", "--no-save"]
    run_cli("fairseq-train", data_bin, *common, "--criterion", "cross_entropy",
            "--save-dir", tmp_path / "ce", "--log-file", tmp_path / "ce.log")
    monarc = run_cli("fairseq-train", data_bin, *common, "--criterion", "monarc",
                     "--save-dir", tmp_path / "monarc")
    (tmp_path / "monarc.out").write_text(monarc.stdout + monarc.stderr)

    points = parse_json_log((tmp_path / "ce.log").read_text().splitlines())
    assert sorted(points["train_inner"]) == list(range(2, 21, 2))
    assert sorted(points["valid"]) == [10, 20] and sorted(points["train"]) == [20]

    png = tmp_path / "curves.png"
    result = main([f"ce={tmp_path / 'ce.log'}", f"monarc={tmp_path / 'monarc.out'}", "-o", str(png)])
    assert result["panels"] == {
        "loss": ["ce train", "ce valid", "monarc train", "monarc valid"],
        "lm_loss": ["monarc train", "monarc valid"],
        "elm_loss": ["monarc train", "monarc valid"],
        "ebm_loss": ["monarc train", "monarc valid"],
    }
    assert len(lines_of(result, "loss")["ce train"][0]) == 10
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    image = imread(str(png))  # (H, W, 4) floats in [0, 1]
    assert image.shape[:2] == (680, 1000)
    assert image[..., :3].std() > 0.05 and len(np.unique(image[..., 0])) > 20
