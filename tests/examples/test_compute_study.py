"""examples/energy_lm/compute_study.py without training: the step cost of each criterion
measured on a real batch (FLOPs counted, seconds timed), the CE runs it buys, and the
table pairing each energy run with them."""

import json

from conftest import load_script

study = load_script("examples/energy_lm/compute_study.py")


def test_an_energy_step_costs_more_flops_than_a_ce_step(data_bin):
    ce = study.step_cost(data_bin, "ce", steps=1)
    monarc = study.step_cost(data_bin, "monarc", steps=1)
    assert ce["flops"] > 0 and ce["seconds"] > 0
    # the candidate stream runs the trunk again and the energy head on top: more work
    assert 1.2 < monarc["flops"] / ce["flops"] < 4


def test_plan_gives_ce_the_energy_runs_compute():
    cost = {"ce": {"flops": 1.0, "seconds": 0.5}, "monarc": {"flops": 1.8, "seconds": 1.2}}
    assert study.plan(cost, ["monarc"], 100) == {"ce-same": 100, "monarc": 100,
                                                  "ce-flops-monarc": 180, "ce-wall-monarc": 240}


def test_table_pairs_the_energy_elm_with_each_ce_lm(tmp_path):
    runs = {"ce-same": 10, "monarc": 10, "ce-flops-monarc": 18, "ce-wall-monarc": 24}
    for name, lm in (("monarc", 7.0), ("ce-same", 7.0), ("ce-flops-monarc", 6.9),
                     ("ce-wall-monarc", 6.8)):
        last = tmp_path / f"{name}_seed1" / "last"
        last.mkdir(parents=True)
        energy = -0.05 if name == "monarc" else 0.0
        rows = [{"id": b, "position": p, "token": 3, "lm": lm + 0.01 * b, "energy": energy,
                 "log_z": 0.0} for b in range(4) for p in range(5)]
        (last / "tokens.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cost = {"ce": {"flops": 1e9, "seconds": 0.5}, "monarc": {"flops": 1.8e9, "seconds": 1.2}}
    text = study.table(tmp_path, runs, ["monarc"], [1], cost)
    rows = {line.split("|")[2].strip(): line for line in text.splitlines() if "| monarc (" in line}
    assert rows["ce-same"].split("|")[-2].strip().startswith("-0.0500")
    assert rows["ce-flops-monarc"].split("|")[-2].strip().startswith("+0.0500")
    assert rows["ce-wall-monarc"].split("|")[-2].strip().startswith("+0.1500")
    assert "| 24 |" in rows["ce-wall-monarc"]
