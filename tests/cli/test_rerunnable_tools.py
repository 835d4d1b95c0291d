"""Tools that can be re-run: energy-lm-prepare builds aside and renames, is a no-op the
second time and refuses other arguments into a finished corpus; energy-lm-add-head never
replaces a trained head or an existing file without --force."""

import pytest
import torch

from conftest import TRAIN_SMALL, error_line, run_cli
from energy_lm.data.prepare import PrepareError, main as prepare


def small(out, *extra):
    return ["embedded", "--out", str(out), "--max-documents", "60", "--vocab-size", "300", *extra]


@pytest.mark.slow
def test_prepare_twice_is_a_no_op_and_other_arguments_are_refused(tmp_path, caplog):
    out = tmp_path / "corpus"
    assert prepare(small(out)) == out / "data-bin"
    assert not (tmp_path / "corpus.partial").exists()
    stamp = (out / "data-bin" / "train.bin").stat().st_mtime_ns
    assert prepare(small(out)) is None  # same arguments: nothing to do
    assert (out / "data-bin" / "train.bin").stat().st_mtime_ns == stamp
    with pytest.raises(PrepareError, match=r"holds a corpus made with other arguments "
                                           r"\(max_documents differ\); --force rebuilds it"):
        prepare(["embedded", "--out", str(out), "--max-documents", "50", "--vocab-size", "300"])
    assert (out / "data-bin" / "train.bin").stat().st_mtime_ns == stamp  # untouched
    assert prepare(["embedded", "--out", str(out), "--max-documents", "50", "--vocab-size",
                    "300", "--force"]) == out / "data-bin"
    assert (out / "data-bin" / "train.bin").stat().st_mtime_ns != stamp


def test_prepare_refuses_a_folder_that_is_no_corpus_and_a_failure_leaves_out_as_it_was(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my own file")
    with pytest.raises(PrepareError, match=r"holds no corpus made by energy-lm-prepare; --force"):
        prepare(small(out))
    assert (out / "notes.txt").read_text() == "my own file"
    fresh = tmp_path / "fresh"
    with pytest.raises(PrepareError, match=r"no documents in the"):
        prepare(["embedded", "--out", str(fresh), "--max-documents", "1", "--vocab-size", "300"])
    assert not fresh.exists()  # nothing renamed into place


@pytest.mark.slow
def test_the_prepare_command_line_says_nothing_to_do(tmp_path):
    out = tmp_path / "corpus"
    run_cli("energy-lm-prepare", *small(out))
    again = run_cli("energy-lm-prepare", *small(out))
    assert "already holds this corpus (same arguments): nothing to do" in again.stdout
    other = run_cli("energy-lm-prepare", *small(out, "--workers", "2"))  # workers: same corpus
    assert "nothing to do" in other.stdout
    bad = run_cli("energy-lm-prepare", "embedded", "--out", out, "--max-documents", "70",
                  check=False)
    assert bad.returncode == 1 and "--force rebuilds it" in error_line(bad.stderr)


@pytest.mark.slow
def test_add_head_never_replaces_a_trained_head_or_a_file_without_force(data_bin, tmp_path):
    mlm, cwt = tmp_path / "mlm", tmp_path / "cwt"
    common = ["--task", "masked_lm", "--arch", "roberta_alibi_tiny", *TRAIN_SMALL,
              "--max-update", "1"]
    run_cli("fairseq-train", data_bin, *common, "--criterion", "masked_lm", "--save-dir", mlm)
    run_cli("fairseq-train", data_bin, *common, "--criterion", "cwt", "--save-dir", cwt)

    refused = run_cli("energy-lm-add-head", mlm / "checkpoint_last.pt", tmp_path / "h.pt",
                      check=False)
    assert refused.returncode == 2
    assert "trained with --criterion masked_lm, so its head is trained; --force" in \
        error_line(refused.stderr)
    assert not (tmp_path / "h.pt").exists()

    source = cwt / "checkpoint_last.pt"
    before = source.read_bytes()
    same = run_cli("energy-lm-add-head", source, source, check=False)
    assert same.returncode == 2 and "is the input checkpoint; --force" in error_line(same.stderr)
    assert source.read_bytes() == before

    run_cli("energy-lm-add-head", source, tmp_path / "headed.pt")
    again = run_cli("energy-lm-add-head", source, tmp_path / "headed.pt", check=False)
    assert again.returncode == 2 and "exists; --force overwrites it" in error_line(again.stderr)
    twice = run_cli("energy-lm-add-head", tmp_path / "headed.pt", tmp_path / "twice.pt",
                    check=False)
    assert twice.returncode == 2 and "already has an untied head" in error_line(twice.stderr)
    run_cli("energy-lm-add-head", mlm / "checkpoint_last.pt", tmp_path / "forced.pt", "--force")
    state = torch.load(tmp_path / "forced.pt", weights_only=True)
    assert "encoder.lm_head.weight" in state["model"]
