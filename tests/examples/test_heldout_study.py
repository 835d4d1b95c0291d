"""examples/energy_lm/heldout_study.py without training: the epochs of a corpus, its
per-epoch table from the training log and the estimates, and the paired last-epoch table."""

import json

from conftest import load_script

study = load_script("examples/energy_lm/heldout_study.py")


def fake_run(root, criterion, seed, acc, gain, lm_shift):
    save = root / f"{criterion}_seed{seed}"
    save.mkdir(parents=True)
    lines = []
    for epoch in (1, 2):
        lines.append("x | INFO | train | " + json.dumps({"epoch": epoch, "train_loss": "7",
                                                          "train_energy_acc": str(acc + epoch / 10)}))
        lines.append("x | INFO | valid | " + json.dumps({"epoch": epoch, "valid_loss": "7",
                                                          "valid_energy_acc": str(acc)}))
        (save / f"epoch{epoch}").mkdir()
        (save / f"epoch{epoch}" / "elm-whole.json").write_text(json.dumps(
            {"elm_est": 7.0 + gain, "lm": 7.0}))
    (save / "train.log").write_text("\n".join(lines) + "\n")
    rows = [{"id": block, "position": p, "token": 5, "lm": 7.0 + lm_shift + 0.1 * block,
             "energy": gain, "log_z": 0.0} for block in range(3) for p in range(4)]
    (save / "epoch2" / "tokens.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return save


def test_tables_read_the_logs_estimates_and_records(tmp_path):
    runs, finals = {}, {}
    for criterion, acc, gain, shift in (("ce", 0.0, 0.0, 0.0), ("monarc", 0.55, -0.02, 0.01)):
        for seed in (1, 2):
            save = fake_run(tmp_path, criterion, seed, acc, gain, shift)
            runs.setdefault(criterion, {})[seed] = save
            finals.setdefault(criterion, {})[seed] = save / "epoch2" / "tokens.jsonl"
    text = study.corpus_tables("toy", runs, 2, finals)
    assert "| monarc | 1 | 0.6500 ± 0.0000 | 0.5500 ± 0.0000 | -0.0200 ± 0.0000 |" in text
    assert "| monarc | 2 | 0.7500" in text
    # ELM - LM = E + log Z = -0.02 per token; ELM - CE = -0.02 + 0.01; LM - CE = +0.01
    row = next(line for line in text.splitlines() if line.startswith("| monarc | 2 | 12 (3)"))
    cells = [c.strip() for c in row.split("|")[4:7]]
    assert [c.split(" ±")[0] for c in cells] == ["-0.0200", "-0.0100", "+0.0100"]


def test_updates_per_epoch_reads_the_index(data_bin):
    """The token count read from the index header and .bin size is fairseq's own."""
    import math

    import torch  # noqa: F401  (fairseq's indexed dataset expects torch loaded first)
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    dataset = MMapIndexedDataset(str(data_bin / "train"))  # its sizes view its mmap: keep it
    tokens = int(dataset.sizes.sum())
    assert study.updates_per_epoch(data_bin) == math.ceil(math.ceil(tokens / 128) / 16)
