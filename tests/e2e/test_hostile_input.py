"""Hostile and mistaken input: each stops with one clear line (the last line of stderr
for a command-line tool) and leaves nothing half-written."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import LM_SMALL, SHARED_DATA, build_model, error_line, needs_gpt2_bpe, run_cli

pytestmark = pytest.mark.slow

TRAIN = ["--task", "language_modeling", "--arch", "transformer_lm_zero_clap_tiny", *LM_SMALL,
         "--max-update", "1"]


def last_line(result) -> str:
    return error_line(result.stderr)


def copy_bin(data_bin: Path, dest: Path) -> Path:
    shutil.copytree(data_bin, dest)
    return dest


def test_truncated_bin_and_idx(data_bin, tmp_path):
    for suffix, keep in ((".bin", 1000), (".idx", 100)):
        broken = copy_bin(data_bin, tmp_path / suffix[1:])
        path = broken / f"train{suffix}"
        path.write_bytes(path.read_bytes()[:keep])
        result = run_cli("fairseq-train", broken, *TRAIN, "--save-dir", tmp_path / "ck", check=False)
        assert result.returncode != 0
        assert f"train{suffix}: truncated" in last_line(result) and "re-run the binarization" in \
            last_line(result)


def test_empty_split(data_bin, tmp_path):
    broken = copy_bin(data_bin, tmp_path / "empty")
    text = tmp_path / "empty.txt"
    text.write_text("")
    run_cli("fairseq-preprocess", "--only-source", "--validpref", text, "--destdir", tmp_path / "v",
            "--srcdict", broken / "dict.txt", "--workers", "1")
    for ext in ("bin", "idx"):
        shutil.copy(tmp_path / "v" / f"valid.{ext}", broken / f"valid.{ext}")
    result = run_cli("fairseq-train", broken, *TRAIN, "--save-dir", tmp_path / "ck", check=False)
    assert result.returncode != 0 and "valid: the split is empty (0 sequences)" in last_line(result)


def test_data_binarized_with_another_dictionary(data_bin, tmp_path):
    run_cli("fairseq-train", data_bin, *TRAIN, "--save-dir", tmp_path / "ck")
    # the same text binarized with a dictionary 100 symbols longer
    other = copy_bin(data_bin, tmp_path / "other")
    with open(other / "dict.txt", "a") as f:
        f.writelines(f"extra{i} 1\n" for i in range(100))
    result = run_cli("energy-lm-eval-elm", other, "--path", tmp_path / "ck" / "checkpoint_last.pt",
                     "--cpu", "--max-batches", "1", check=False)
    assert result.returncode != 0
    assert "vocabulary has" in last_line(result) and "binarized with another dictionary" in \
        last_line(result)
    # ids beyond the dictionary: caught when the split is loaded
    small = copy_bin(data_bin, tmp_path / "small")
    lines = (small / "dict.txt").read_text().splitlines()
    (small / "dict.txt").write_text("\n".join(lines[:50]) + "\n")
    result = run_cli("fairseq-train", small, *TRAIN, "--save-dir", tmp_path / "ck2", check=False)
    assert result.returncode != 0 and "is not in the dictionary" in last_line(result)


@needs_gpt2_bpe
def test_invalid_utf8_in_raw_text_leaves_nothing_half_written(tmp_path):
    from energy_lm.data.prepare import PrepareError, main

    raw = tmp_path / "raw"
    raw.mkdir()
    good = " = Title = \n \n Some text . \n"
    for split in ("train", "valid", "test"):
        (raw / f"wiki.{split}.raw").write_text(good * 3)
    (raw / "wiki.test.raw").write_bytes(good.encode() + b" caf\xe9 \n")
    gpt2 = SHARED_DATA / "gpt2"
    with pytest.raises(PrepareError) as info:
        main(["wikitext103", "--out", str(tmp_path / "out"), "--raw-dir", str(raw),
              "--gpt2-dir", str(gpt2)])
    message = str(info.value)
    assert "wiki.test.raw: line 4 is not UTF-8 text (byte 4" in message and "\n" not in message
    assert not list((tmp_path / "out").rglob("*.bpe*")) and not (tmp_path / "out" / "data-bin").exists()

    shard = tmp_path / "shard.jsonl"
    shard.write_bytes(json.dumps({"text": "fine"}).encode() + b"\n" + b'{"text": "\xff"}\n')
    with pytest.raises(PrepareError, match=r"shard.jsonl: line 2 is not UTF-8"):
        main(["pile", "--out", str(tmp_path / "pile"), "--train", str(shard), "--gpt2-dir", str(gpt2)])
    shard.write_text('{"text": "fine"}\n{"txt": 1}\n')
    with pytest.raises(PrepareError, match=r'line 2 is not a JSON object with a "text" field'):
        main(["pile", "--out", str(tmp_path / "pile"), "--train", str(shard), "--gpt2-dir", str(gpt2)])


@pytest.mark.parametrize("arch,task", [("transformer_lm_clap_tiny", "language_modeling"),
                                       ("roberta_clap_tiny", "masked_lm")])
def test_learned_positions_refuse_longer_inputs(data_bin, arch, task):
    model, _ = build_model(data_bin, arch, task=task)  # --tokens-per-sample 64
    with pytest.raises(ValueError, match="input of 65 tokens is longer than the 64 positions"):
        model(torch.randint(4, 100, (1, 65)))


def test_cwt_batch_without_negatives(data_bin):
    from fairseq import criterions
    from fairseq.criterions import CRITERION_DATACLASS_REGISTRY
    from omegaconf import OmegaConf

    model, task = build_model(data_bin, "transformer_lm_clap_tiny", task="language_modeling")
    cfg = OmegaConf.structured(CRITERION_DATACLASS_REGISTRY["cwt"])
    cfg._name = "cwt"
    crit = criterions.build_criterion(cfg, task)
    pad = task.source_dictionary.pad()
    sample = {"net_input": {"src_tokens": torch.tensor([[5, 6]])},
              "target": torch.tensor([[6, pad]]), "ntokens": 1, "nsentences": 1}
    with pytest.raises(ValueError, match=r"cwt: this batch has 1 trained position\(s\) and 1 "
                                         r"candidate target\(s\): in-batch negatives need at least 2"):
        crit(model, sample)


@pytest.mark.parametrize("poison,named", [("energy", "energy E(x) of the data = inf"),
                                          ("lm", "CE (the LM's cross-entropy) = nan")])
def test_non_finite_loss_names_the_term(data_bin, poison, named):
    from fairseq import criterions
    from fairseq.criterions import CRITERION_DATACLASS_REGISTRY
    from omegaconf import OmegaConf

    model, task = build_model(data_bin, "transformer_lm_clap_tiny", "--energy-head", "linear",
                              task="language_modeling")
    with torch.no_grad():
        if poison == "energy":
            model.energy_head.proj.bias.fill_(float("inf"))
        else:
            model.decoder.output_projection.beta.fill_(float("nan"))
    cfg = OmegaConf.structured(CRITERION_DATACLASS_REGISTRY["monarc"])
    cfg._name, cfg.seed = "monarc", 1
    crit = criterions.build_criterion(cfg, task)
    src = torch.randint(4, 100, (2, 8))
    sample = {"net_input": {"src_tokens": src}, "target": torch.roll(src, -1, 1),
              "ntokens": 16, "nsentences": 2}
    with pytest.raises(FloatingPointError) as info:
        crit(model, sample)
    assert named in str(info.value) and str(info.value).startswith("monarc: non-finite")
    if poison == "energy":
        assert "CE" not in str(info.value)
