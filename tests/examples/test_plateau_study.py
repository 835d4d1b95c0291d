"""examples/energy_lm/plateau_study.py without training: the plateau rule read from a
fairseq log, and the table pairing MonArc's ELM with its own LM and each CE continuation."""

import json

from conftest import load_script

study = load_script("examples/energy_lm/plateau_study.py")


def test_the_base_plateaus_when_a_stage_gains_less_than_the_threshold(tmp_path):
    log = tmp_path / "train.log"
    records = [{"valid_loss": v, "valid_num_updates": str(u)}
               for u, v in ((250, "8.0"), (500, "7.0"), (1000, "6.5"), (1500, "6.49"))]
    log.write_text("".join("x | INFO | valid | " + json.dumps(r) + "\n" for r in records))
    losses = study.valid_losses(log)
    assert losses == {250: 8.0, 500: 7.0, 1000: 6.5, 1500: 6.49}
    assert study.plateaued(losses, 500, 0.02)          # 6.50 -> 6.49 over the last stage
    assert not study.plateaued({500: 7.0, 1000: 6.5}, 500, 0.02)
    assert not study.plateaued({500: 7.0}, 500, 0.02)  # one stage says nothing


def test_table_pairs_monarc_with_each_continuation(tmp_path):
    for name, lm, energy in (("monarc", 6.5, -0.03), ("ce", 6.49, 0.0), ("ce-wall", 6.47, 0.0)):
        last = tmp_path / f"{name}_seed1" / "last"
        last.mkdir(parents=True)
        rows = [{"id": b, "position": p, "token": 2, "lm": lm, "energy": energy, "log_z": 0.0}
                for b in range(3) for p in range(3)]
        (last / "tokens.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = study.table(tmp_path, {"monarc": 600, "ce": 600, "ce-wall": 1100}, [1],
                       {500: 7.0, 1000: 6.5})
    assert "500: 7.000, 1000: 6.500" in text
    assert "| own LM (ELM - LM) |  | 1 | 9 (3) | -0.0300 ± 0.0000 |" in text
    assert "| ce (ELM - LM) | 600 | 1 | 9 (3) | -0.0200 ± 0.0000 |" in text
    assert "| ce-wall (ELM - LM) | 1100 | 1 | 9 (3) | +0.0000 ± 0.0000 |" in text
