"""The GLUE pipeline (energy_lm.glue): each task's file format, the docstring fixtures,
preprocessing with our byte-level BPE and with GPT-2's, the YAMLs, the fine-tuning
driver (from an MLM checkpoint, from random init, from a headless CWT checkpoint) and
the dev-score table."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import SHARED_DATA, TRAIN_SMALL, error_line, needs_gpt2_bpe, run_cli
from energy_lm.configs import config_dir
from energy_lm.glue import collect, finetune, preprocess
from energy_lm.glue.fixtures import build_fixtures, stdlib_docstrings
from energy_lm.glue.reader import read_split
from energy_lm.glue.tasks import TABLE_ORDER, TASKS, GlueError, get_task

GLUE_CONFIGS = config_dir("glue")
SMALL_SIZES = {"train": 96, "dev": 48, "test": 16}
TINY_OVERRIDES = ["++model.encoder_layers=2", "++model.encoder_embed_dim=32",
                  "++model.encoder_ffn_embed_dim=64", "++model.encoder_attention_heads=4"]
CPU_RUN = ["--cpu", "--batch-size", "8", "--lr", "1e-3"]

# ---------------------------------------------------------------- formats, by hand
# Invented rows in each task's exact layout. {task: ({file: text}, {split: [(texts, label)]})}
MNLI_HEAD = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
             "sentence1_parse\tsentence2_parse\tsentence1\tsentence2")
MNLI_PARSES = "( ( A b ) )\t( C )\t(ROOT (A b))\t(ROOT (C))"
SNIPPETS = {
    "CoLA": ({
        "train.tsv": "ab01\t1\t\tThe cat sat on the mat.\nab01\t0\t*\tMat the on sat cat.\n",
        "dev.tsv": "cd02\t1\t\tShe reads books.\n",
        "test.tsv": "index\tsentence\n0\tHe runs quickly.\n1\tQuickly he.\n",
    }, {
        "train": [(("The cat sat on the mat.",), "1"), (("Mat the on sat cat.",), "0")],
        "valid": [(("She reads books.",), "1")],
        "test": [(("He runs quickly.",), None), (("Quickly he.",), None)],
    }),
    "SST-2": ({
        "train.tsv": "sentence\tlabel\na warm , funny film \t1\ndull and overlong \t0\n",
        "dev.tsv": "sentence\tlabel\nit 's a charming ride .\t1\n",
        "test.tsv": "index\tsentence\n0\tnothing new here .\n",
    }, {
        "train": [(("a warm , funny film",), "1"), (("dull and overlong",), "0")],
        "valid": [(("it 's a charming ride .",), "1")],
        "test": [(("nothing new here .",), None)],
    }),
    "MRPC": ({  # headers with a byte-order mark, as GLUE's download writes them
        "train.tsv": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                     "1\t101\t102\tHe said \" no \" twice .\tTwice he said \" no \" .\n",
        "dev.tsv": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t201\t202\tRain fell .\tShares rose .\n",
        "test.tsv": "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t301\t302\tA b .\tC d .\n",
    }, {
        "train": [(('He said " no " twice .', 'Twice he said " no " .'), "1")],
        "valid": [(("Rain fell .", "Shares rose ."), "0")],
        "test": [(("A b .", "C d ."), None)],
    }),
    "STS-B": ({
        "train.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                     "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA dog runs.\tA dog is running.\t4.750\n",
        "dev.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                   "0\tmain-news\theadlines\t2015\t0002\tnone\tnone\tMarkets fall.\tA cat sleeps.\t0.000\n",
        "test.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\n"
                    "0\tmain-news\theadlines\t2016\t0003\tnone\tnone\tOne.\tTwo.\n",
    }, {
        "train": [(("A dog runs.", "A dog is running."), "4.750")],
        "valid": [(("Markets fall.", "A cat sleeps."), "0.000")],
        "test": [(("One.", "Two."), None)],
    }),
    "QQP": ({
        "train.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
                     "7\t13\t14\tHow do I learn \"Python\"?\tWhat is the best way to learn Python?\t1\n",
        "dev.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n8\t15\t16\tWhy?\tWhen?\t0\n",
        "test.tsv": "id\tquestion1\tquestion2\n0\tIs it red?\tIs it blue?\n",
    }, {
        "train": [(('How do I learn "Python"?', "What is the best way to learn Python?"), "1")],
        "valid": [(("Why?", "When?"), "0")],
        "test": [(("Is it red?", "Is it blue?"), None)],
    }),
    "MNLI": ({  # train: label1 + gold_label; dev: five annotator labels + gold_label
        "train.tsv": MNLI_HEAD + "\tlabel1\tgold_label\n"
                     f"0\t1\t1n\tfiction\t{MNLI_PARSES}\tA man sleeps.\tA person rests.\tentailment\tentailment\n",
        "dev_matched.tsv": MNLI_HEAD + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n"
                           f"0\t2\t2c\tslate\t{MNLI_PARSES}\tIt is day.\tIt is night.\tneutral\t"
                           "contradiction\tcontradiction\tcontradiction\tneutral\tcontradiction\n",
        "dev_mismatched.tsv": MNLI_HEAD + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n"
                              f"0\t3\t3n\tletters\t{MNLI_PARSES}\tShe sings.\tShe is happy.\tneutral\t"
                              "neutral\tentailment\tneutral\tneutral\tneutral\n",
        "test_matched.tsv": MNLI_HEAD + f"\n0\t4\t4\tslate\t{MNLI_PARSES}\tX is y.\tY is x.\n",
        "test_mismatched.tsv": MNLI_HEAD + f"\n0\t5\t5\tverbatim\t{MNLI_PARSES}\tP.\tQ.\n",
    }, {
        "train": [(("A man sleeps.", "A person rests."), "entailment")],
        "valid": [(("It is day.", "It is night."), "contradiction")],
        "valid1": [(("She sings.", "She is happy."), "neutral")],
        "test": [(("X is y.", "Y is x."), None)],
        "test1": [(("P.", "Q."), None)],
    }),
    "QNLI": ({
        "train.tsv": "index\tquestion\tsentence\tlabel\n0\tWhat is red?\tThe apple is red.\tentailment\n",
        "dev.tsv": "index\tquestion\tsentence\tlabel\n0\tWho came?\tIt rained.\tnot_entailment\n",
        "test.tsv": "index\tquestion\tsentence\n0\tWhere?\tHere.\n",
    }, {
        "train": [(("What is red?", "The apple is red."), "entailment")],
        "valid": [(("Who came?", "It rained."), "not_entailment")],
        "test": [(("Where?", "Here."), None)],
    }),
    "RTE": ({
        "train.tsv": "index\tsentence1\tsentence2\tlabel\n0\tTom bought a car in May.\tTom owns a car.\tentailment\n",
        "dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\tThe shop closed.\tThe shop is open.\tnot_entailment\n",
        "test.tsv": "index\tsentence1\tsentence2\n0\tA.\tB.\n",
    }, {
        "train": [(("Tom bought a car in May.", "Tom owns a car."), "entailment")],
        "valid": [(("The shop closed.", "The shop is open."), "not_entailment")],
        "test": [(("A.", "B."), None)],
    }),
}


def write_task(glue_dir: Path, name: str, files: dict) -> Path:
    folder = glue_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    for filename, text in files.items():
        (folder / filename).write_text(text, encoding="utf-8")
    return folder


def test_every_task_has_a_snippet():
    assert set(SNIPPETS) == set(TASKS) == set(TABLE_ORDER)


@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_task_format_is_parsed(tmp_path, name):
    files, expected = SNIPPETS[name]
    write_task(tmp_path, name, files)
    task = get_task(name)
    assert sorted(task.files) == sorted(expected)
    for split, rows in expected.items():
        got = [(ex.texts, ex.label) for ex in read_split(tmp_path, task, split)]
        assert got == rows, split


@pytest.mark.parametrize("name,flaw,message", [
    ("SST-2", ("dev.tsv", "sentence\tlabel\nfine\t1\nno label here\n"),
     r"dev\.tsv:3: malformed row, 1 tab-separated fields where the file has 2"),
    ("CoLA", ("train.tsv", "ab\t1\t\tok.\nab\t1\tnot enough\n"), r"train\.tsv:2: malformed row"),
    ("RTE", ("train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n"),
     r"train\.tsv:2: label 'maybe' is not one of entailment, not_entailment"),
    ("STS-B", ("dev.tsv", SNIPPETS["STS-B"][0]["dev.tsv"].replace("0.000", "7.5")),
     r"dev\.tsv:2: score 7\.5 is outside 0\.\.5"),
    ("QNLI", ("train.tsv", SNIPPETS["RTE"][0]["train.tsv"]),  # RTE's file in QNLI's folder
     r"train\.tsv: header column 1 is 'sentence1', expected 'question'"),
])
def test_bad_rows_are_one_line_errors(tmp_path, name, flaw, message):
    files = dict(SNIPPETS[name][0])
    files[flaw[0]] = flaw[1]
    write_task(tmp_path, name, files)
    task = get_task(name)
    split = "train" if flaw[0] == "train.tsv" else "valid"
    with pytest.raises(GlueError, match=message) as err:
        read_split(tmp_path, task, split)
    assert "\n" not in str(err.value)


def test_skip_malformed_drops_rows(tmp_path):
    files = dict(SNIPPETS["SST-2"][0], **{"train.tsv": "sentence\tlabel\ngood\t1\nbroken row\nbad\t0\n"})
    write_task(tmp_path, "SST-2", files)
    rows = read_split(tmp_path, get_task("SST-2"), "train", skip_malformed=True)
    assert [(r.texts[0], r.label) for r in rows] == [("good", "1"), ("bad", "0")]


@pytest.mark.slow
def test_missing_file_is_a_one_line_cli_error(tmp_path, data_bin):
    files = {k: v for k, v in SNIPPETS["RTE"][0].items() if k != "dev.tsv"}
    folder = write_task(tmp_path / "glue", "RTE", files)
    result = subprocess.run([sys.executable, "-m", "energy_lm.glue.preprocess", str(tmp_path / "glue"),
                             "--out", str(tmp_path / "out"), "--pretrain-bin", str(data_bin)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert error_line(result.stderr) == (
        f"energy_lm.glue.preprocess: error: {folder / 'dev.tsv'}: no such file "
        f"(RTE needs train.tsv, dev.tsv)")
    assert not (tmp_path / "out" / "RTE-bin").exists()
    with pytest.raises(GlueError, match=r"no-such-dir/CoLA: no such folder"):
        read_split(tmp_path / "no-such-dir", get_task("cola"), "train")


# ---------------------------------------------------------------- fixtures
@pytest.mark.slow
def test_fixtures_are_deterministic_and_in_glue_format(tmp_path):
    docs = stdlib_docstrings()
    assert len(docs) > 2000 and docs == stdlib_docstrings()
    build_fixtures(tmp_path / "a", seed=1)
    build_fixtures(tmp_path / "b", seed=1, docs=docs)
    build_fixtures(tmp_path / "c", seed=2, docs=docs)
    names = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.tsv"))
    assert [str(n) for n in names] == [f"{t}/{s}.tsv" for t in ("MRPC", "SST-2")
                                       for s in ("dev", "test", "train")]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "SST-2" / "train.tsv").read_bytes() != \
        (tmp_path / "c" / "SST-2" / "train.tsv").read_bytes()
    assert (tmp_path / "a" / "MRPC" / "train.tsv").read_bytes().startswith(b"\xef\xbb\xbfQuality\t")

    for task_name in ("SST-2", "MRPC"):
        task = get_task(task_name)
        splits = {s: read_split(tmp_path / "a", task, s) for s in ("train", "valid", "test")}
        assert [len(rows) for rows in splits.values()] == [1000, 200, 200]
        labels = [row.label for row in splits["train"]]
        assert labels.count("1") == labels.count("0") == 500
        train_texts = {t for row in splits["train"] for t in row.texts}
        assert not train_texts & {t for row in splits["valid"] for t in row.texts}

    # a class's docstring is labelled 1, a function's 0
    kind = {text: is_class for _, _, text, is_class in docs}
    for row in read_split(tmp_path / "a", get_task("SST-2"), "valid"):
        assert row.label == ("1" if kind[row.texts[0]] else "0")
    module = {text: mod for _, mod, text, _ in docs}
    for row in read_split(tmp_path / "a", get_task("MRPC"), "valid"):
        assert row.label == ("1" if module[row.texts[0]] == module[row.texts[1]] else "0")

    # the other formats: CoLA (no header in train/dev) and RTE
    build_fixtures(tmp_path / "d", seed=1, single_format="CoLA", pair_format="RTE",
                   sizes=SMALL_SIZES, docs=docs)
    assert not (tmp_path / "d" / "CoLA" / "train.tsv").read_text().startswith("sentence")
    for task_name in ("CoLA", "RTE"):
        rows = read_split(tmp_path / "d", get_task(task_name), "train")
        assert len(rows) == SMALL_SIZES["train"]


# ---------------------------------------------------------------- preprocessing
@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("glue-fixtures")
    build_fixtures(out, seed=1, sizes=SMALL_SIZES)
    return out


@pytest.fixture(scope="module")
def glue_bin(fixture_dir, data_bin, tmp_path_factory):
    out = tmp_path_factory.mktemp("glue-bin")
    paths = preprocess.main([str(fixture_dir), "--out", str(out), "--pretrain-bin", str(data_bin)])
    assert sorted(p.name for p in paths) == ["MRPC-bin", "SST-2-bin"]
    return out


def load_split(folder: Path, split: str):
    from fairseq.data import Dictionary, data_utils

    dictionary = Dictionary.load(str(folder / "dict.txt"))
    return dictionary, data_utils.load_indexed_dataset(str(folder / split), dictionary)


def test_byte_bpe_preprocessing_round_trips(glue_bin, fixture_dir, data_bin):
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer(str(data_bin / "vocab.json"), str(data_bin / "merges.txt"))
    mrpc = glue_bin / "MRPC-bin"
    assert (mrpc / "input0" / "dict.txt").read_bytes() == (data_bin / "dict.txt").read_bytes()
    rows = read_split(fixture_dir, get_task("MRPC"), "valid")
    for i, name in enumerate(("input0", "input1")):
        dictionary, dataset = load_split(mrpc / name, "valid")
        assert len(dataset) == len(rows)
        ids = [int(dictionary[t]) for t in dataset[3][:-1]]  # the last token is </s>
        assert tok.decode(ids) == rows[3].texts[i]
    labels, dataset = load_split(mrpc / "label", "valid")
    assert [labels[i] for i in range(labels.nspecial, len(labels))] == ["0", "1"]  # task order
    assert [labels[int(dataset[j][0])] for j in range(len(rows))] == [r.label for r in rows]
    assert json.loads((mrpc / "glue.json").read_text())["task"] == "MRPC"
    assert not (glue_bin / "SST-2-bin" / "input1").exists()


@needs_gpt2_bpe
def test_gpt2_bpe_preprocessing_and_stsb_regression(tmp_path):
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    gpt2 = SHARED_DATA / "gpt2"
    write_task(tmp_path / "glue", "STS-B", SNIPPETS["STS-B"][0])
    dict_file = tmp_path / "dict.txt"  # every GPT-2 id, as a RoBERTa dict.txt holds them
    dict_file.write_text("".join(f"{i} 1\n" for i in range(50257)))
    out = tmp_path / "out"
    preprocess.main([str(tmp_path / "glue"), "--out", str(out), "--tasks", "sts-b", "--bpe", "gpt2",
                     "--gpt2-dir", str(gpt2), "--dict", str(dict_file)])
    dictionary, dataset = load_split(out / "STS-B-bin" / "input1", "train")
    encoder = get_encoder(str(gpt2 / "encoder.json"), str(gpt2 / "vocab.bpe"))
    assert encoder.decode([int(dictionary[t]) for t in dataset[0][:-1]]) == "A dog is running."
    # regression targets: plain text, score / 5, as sentence_prediction reads them
    assert (out / "STS-B-bin" / "label" / "train.label").read_text() == "0.95\n"
    assert (out / "STS-B-bin" / "label" / "valid.label").read_text() == "0\n"
    assert not (out / "STS-B-bin" / "label" / "test.label").exists()


def test_mnli_mismatched_splits_become_valid1_and_test1(tmp_path, data_bin):
    write_task(tmp_path / "glue", "MNLI", SNIPPETS["MNLI"][0])
    out = tmp_path / "out"
    preprocess.main([str(tmp_path / "glue"), "--out", str(out), "--pretrain-bin", str(data_bin)])
    mnli = out / "MNLI-bin"
    for name, splits in (("input0", ("train", "valid", "valid1", "test", "test1")),
                         ("label", ("train", "valid", "valid1"))):
        assert sorted(p.stem for p in (mnli / name).glob("*.bin")) == sorted(splits)
    labels, valid1 = load_split(mnli / "label", "valid1")
    assert [labels[i] for i in range(labels.nspecial, len(labels))] == ["contradiction", "entailment",
                                                                        "neutral"]
    assert labels[int(valid1[0][0])] == "neutral"  # dev_mismatched's gold label


# ---------------------------------------------------------------- YAMLs
def compose_glue(config: str):
    """The config fairseq-hydra-train runs for one GLUE YAML, defaults filled in."""
    from fairseq.dataclass.initialize import add_defaults, hydra_init
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    hydra_init(config)
    with initialize_config_dir(config_dir=str(GLUE_CONFIGS), version_base="1.1"):
        cfg = compose(config_name=config, overrides=["task.data=/x", "checkpoint.restore_file=/x.pt"])
    add_defaults(cfg)
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))


@pytest.mark.parametrize("name", TABLE_ORDER)
def test_glue_yaml_matches_the_task(name):
    task = get_task(name)
    text = (GLUE_CONFIGS / f"{task.config}.yaml").read_text()
    assert text.startswith("# @package _group_\n")
    assert re.search(r"^  data: \?\?\?$", text, re.M) and re.search(r"^  restore_file: \?\?\?", text, re.M)
    cfg = compose_glue(task.config)
    assert cfg.task._name == "sentence_prediction" and cfg.criterion._name == "sentence_prediction"
    assert cfg.task.num_classes == task.num_classes
    assert cfg.criterion.regression_target == task.regression
    assert cfg.checkpoint.best_checkpoint_metric == task.best_metric
    assert cfg.checkpoint.maximize_best_checkpoint_metric
    assert cfg.checkpoint.reset_optimizer and cfg.checkpoint.reset_dataloader and cfg.checkpoint.reset_meters
    assert abs(cfg.lr_scheduler.warmup_updates / cfg.optimization.max_update - 0.06) < 0.005
    assert cfg.lr_scheduler.total_num_update == cfg.optimization.max_update
    assert cfg.optimization.lr[0] in (1e-5, 2e-5)
    assert cfg.dataset.batch_size in (16, 32)
    assert cfg.dataset.valid_subset == ",".join(task.valid_splits)
    assert cfg.criterion.report_mcc == ("mcc" in task.metrics)
    assert cfg.criterion.report_acc_and_f1 == ("f1" in task.metrics)
    assert cfg.criterion.report_pearson_and_spearman == ("pearson" in task.metrics)


# ---------------------------------------------------------------- fine-tuning, scores
@pytest.fixture(scope="module")
def mlm_checkpoint(data_bin, tmp_path_factory):
    out = tmp_path_factory.mktemp("mlm")
    run_cli("fairseq-train", data_bin, "--task", "masked_lm", "--criterion", "masked_lm",
            "--arch", "roberta_zero_clap_tiny", *TRAIN_SMALL, "--max-update", "2", "--save-dir", out)
    return out / "checkpoint_last.pt"


def table_row(table: str, name: str) -> dict:
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == name:
            return dict(zip(header, cells))
    raise AssertionError(f"no row {name!r} in\n{table}")


@pytest.mark.slow
def test_pipeline_end_to_end(glue_bin, mlm_checkpoint, tmp_path):
    runs = tmp_path / "runs"
    # a one-text task from the MLM checkpoint (simple log format) ...
    record = finetune.main([str(glue_bin / "SST-2-bin"), "--checkpoint", str(mlm_checkpoint),
                            "--out", str(runs / "sst"), *CPU_RUN, "--max-update", "6",
                            "--", "dataset.num_workers=0", "common.log_format=simple"])
    assert record["task"] == "SST-2" and record["returncode"] == 0
    log = (runs / "sst" / "train.log").read_text()
    assert f"Loaded checkpoint {mlm_checkpoint}" in log
    state = torch.load(runs / "sst" / "checkpoint_last.pt")
    assert state["cfg"]["model"]["_name"] == "roberta_zero_clap_tiny"
    assert state["cfg"]["model"]["encoder_embed_dim"] == 32  # the checkpoint's sizes
    assert state["model"]["classification_heads.sentence_classification_head.out_proj.weight"].shape[0] == 2
    assert state["optimizer_history"][-1]["num_updates"] == 6
    # ... a pair task from random init (json log format, the YAML's)
    finetune.main([str(glue_bin / "MRPC-bin"), "--random-init", "--arch", "roberta_zero_clap_tiny",
                   "--out", str(runs / "mrpc"), *CPU_RUN, "--max-update", "4",
                   "--", "dataset.num_workers=0", *TINY_OVERRIDES])
    mrpc_log = (runs / "mrpc" / "train.log").read_text()
    assert "Loaded checkpoint" not in mrpc_log
    with pytest.raises(GlueError, match="already holds a run"):
        finetune.main([str(glue_bin / "MRPC-bin"), "--random-init", "--arch", "roberta_zero_clap_tiny",
                       "--out", str(runs / "mrpc")])

    result = subprocess.run([sys.executable, "-m", "energy_lm.glue.collect", str(runs), "--names", "tiny"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    row = table_row(result.stdout, "tiny")
    sst = float(row["SST-2"])
    f1, acc = map(float, row["MRPC"].split("/"))
    assert all(0 <= x <= 100 for x in (sst, f1, acc))
    assert [row[t] for t in TABLE_ORDER if t not in ("SST-2", "MRPC")] == ["-"] * 6
    assert float(row["Avg"]) == pytest.approx((sst + (f1 + acc) / 2) / 2, abs=0.051)
    # the numbers are those of fairseq's validation records
    assert re.search(rf"valid on 'valid' subset .*\| accuracy {sst:g} ", log)
    last_valid = [json.loads(l[l.index("{"):]) for l in mrpc_log.splitlines() if '"valid_f1"' in l][-1]
    assert float(last_valid["valid_f1"]) == f1 and float(last_valid["valid_accuracy"]) == acc


@pytest.mark.slow
def test_headless_cwt_encoder_fine_tunes_directly(data_bin, glue_bin, tmp_path):
    # the seeds' headless encoder (cwt_encoder_base): roberta_energy, learned positions
    # (64 here), RoBERTa's stock MLM head, which CWT never calls
    run_cli("fairseq-train", data_bin, "--task", "masked_lm", "--criterion", "cwt",
            "--arch", "roberta_energy", *TRAIN_SMALL, "--max-update", "3", "--save-dir", tmp_path / "cwt")
    source = tmp_path / "cwt" / "checkpoint_last.pt"
    finetune.main([str(glue_bin / "MRPC-bin"), "--checkpoint", str(source), "--out",
                   str(tmp_path / "ft"), *CPU_RUN, "--max-update", "4", "--", "dataset.num_workers=0"])
    assert f"Loaded checkpoint {source}" in (tmp_path / "ft" / "train.log").read_text()
    pre, fine = torch.load(source), torch.load(tmp_path / "ft" / "checkpoint_last.pt")
    assert pre["cfg"]["criterion"]["_name"] == "cwt"
    assert fine["cfg"]["task"]["max_positions"] == 64  # the checkpoint's position table
    positions = "encoder.sentence_encoder.embed_positions.weight"
    assert fine["model"][positions].shape == pre["model"][positions].shape
    # the trunk started from the CWT weights and moved
    key = "encoder.sentence_encoder.layers.0.self_attn.q_proj.weight"
    assert 0 < (fine["model"][key] - pre["model"][key]).abs().max() < 0.05
    # the MLM head's own parameters (its weight is the tied embedding) were never
    # trained, by CWT or by the fine-tune: still at their initial values
    head = [k for k in pre["model"] if k.startswith("encoder.lm_head.") and k != "encoder.lm_head.weight"]
    assert len(head) == 5
    assert torch.equal(pre["model"]["encoder.lm_head.layer_norm.weight"], torch.ones(32))
    assert not pre["model"]["encoder.lm_head.bias"].any()
    assert all(torch.equal(fine["model"][k], pre["model"][k]) for k in head)
    task, scores = collect.read_run(tmp_path / "ft")
    assert task.name == "MRPC" and set(scores["valid"]) == {"f1", "accuracy"}


def test_finetune_refuses_a_missing_checkpoint(glue_bin, tmp_path):
    with pytest.raises(GlueError, match=r"nope\.pt: no such checkpoint"):
        finetune.main([str(glue_bin / "SST-2-bin"), "--checkpoint", str(tmp_path / "nope.pt"),
                       "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- the collector alone
def test_collector_picks_the_best_validation_and_mnli_mismatched(tmp_path):
    def record(split, **values):
        stats = {"epoch": 1, **{f"{split}_{k}": str(v) for k, v in values.items()}}
        return f"[2026-01-01 00:00:00,000][{split}][INFO] - {json.dumps(stats)}"

    runs = tmp_path / "row"
    for name, lines in {
        "MNLI": [record("valid", loss=1.2, accuracy=60.0), record("valid1", loss=1.1, accuracy=61.0),
                 record("valid", loss=1.0, accuracy=70.0), record("valid1", loss=1.0, accuracy=65.5),
                 record("valid", loss=0.9, accuracy=69.0), record("valid1", loss=0.9, accuracy=72.0)],
        "CoLA": ["epoch 001 | valid on 'valid' subset | loss 0.9 | accuracy 80 | mcc 31.5 | num_updates 9",
                 "epoch 002 | valid on 'valid' subset | loss 0.8 | accuracy 85 | mcc 30.1 | num_updates 18"],
        "STS-B": [record("valid", loss=0.2, pearson=88.25, spearman=87.75, pearson_and_spearman=88.0)],
    }.items():
        (runs / name).mkdir(parents=True)
        (runs / name / "train.log").write_text("\n".join(lines) + "\n")
    row = table_row(collect.main([str(runs)]), "row")
    assert row["MNLI"] == "70.0/65.5"   # mismatched at the best matched validation
    assert row["CoLA"] == "31.5"        # by MCC, not by accuracy
    assert row["STS-B"] == "88.2/87.8"
    assert float(row["Avg"]) == pytest.approx(((70 + 65.5) / 2 + 31.5 + 88.0) / 3, abs=0.051)
