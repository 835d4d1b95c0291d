"""energy_lm's lm-evaluation-harness model on a small trained MonArc checkpoint: the
rolling log-likelihood of valid blocks equals energy-lm-eval-elm's LM and exact-Z ELM
figures on the same tokens (float64), a (context, continuation) log-likelihood equals a
direct computation, and wrong model_args fail with one line naming the argument."""

import math

import pytest
import torch

from conftest import MONARC_LM_BLOCK, run_cli

pytestmark = pytest.mark.slow
lm_eval = pytest.importorskip("lm_eval")

BLOCK = MONARC_LM_BLOCK


@pytest.fixture(scope="module")
def checkpoint(monarc_lm_checkpoint):
    return monarc_lm_checkpoint


def harness_model(checkpoint, data_bin, **kw):
    from energy_lm.harness.model import EnergyLMEval

    return EnergyLMEval(path=str(checkpoint), data=str(data_bin), dtype="float64", **kw)


def test_rolling_loglikelihood_is_eval_elms_lm_and_exact_elm(checkpoint, data_bin):
    from energy_lm.cli.eval_elm import evaluate, load

    model, task = load(checkpoint, data_bin, "valid", BLOCK, cpu=True, seed=1)
    model = model.double()
    dataset = task.dataset("valid")
    blocks = 5
    batches = [dataset.collater([dataset[i]]) for i in range(blocks)]
    records = []
    evaluate(model, batches, num_samples=2, topk=2, exact_z_batches=-1, per_token=records)
    stream = torch.cat([dataset[i]["target"] for i in range(blocks)]).tolist()
    assert len(records) == len(stream)
    lm_bits = sum(r["lm"] for r in records)
    elm_bits = sum(r["lm"] + r["energy"] + r["log_z"] for r in records)
    for scoring, bits in (("lm", lm_bits), ("elm", elm_bits)):
        h = harness_model(checkpoint, data_bin, scoring=scoring, log_z="exact")
        assert h.max_length == BLOCK
        nats = h.rolling_tokens(stream)
        assert -nats / math.log(2) == pytest.approx(bits, rel=1e-9, abs=1e-6), scoring
    assert abs(elm_bits - lm_bits) > 1e-4  # the energy is not 0: the two checks differ


def test_a_continuation_scores_as_computed_directly(checkpoint, data_bin):
    from lm_eval.api.instance import Instance

    h = harness_model(checkpoint, data_bin, scoring="elm", log_z="exact")
    ctx, cont = h._encode_pair("Return the list of", " items")
    request = Instance(request_type="loglikelihood", doc={}, arguments=("Return the list of",
                                                                        " items"), idx=0)
    (ll, greedy), = h.loglikelihood([request], disable_tqdm=True)
    seq = torch.tensor([h.dictionary.eos()] + ctx + cont)
    model = h.model
    vocab = torch.arange(len(h.dictionary))
    want = 0.0
    torch.set_grad_enabled(False)
    for n in range(len(ctx) + 1, len(seq)):  # each continuation token in its own context
        prefix = seq[:n]
        lq = torch.log_softmax(model(prefix[None])[0][0, -1].double(), -1)  # q(. | prefix)
        _, _, cand_e = model.score_candidates(
            torch.cat([prefix, seq[n:n + 1]])[None],
            vocab.view(1, -1, 1).expand(1, -1, n + 1).contiguous())
        energies = cand_e[0, :, n]  # E(y | prefix) of every y
        log_z = torch.logsumexp(lq - energies, 0)
        want += float(lq[seq[n]] - energies[seq[n]] - log_z)
    torch.set_grad_enabled(True)
    assert ll == pytest.approx(want, abs=1e-9)
    assert isinstance(greedy, bool)
    lm = harness_model(checkpoint, data_bin, scoring="lm")
    (ll_lm, _), = lm.loglikelihood([request], disable_tqdm=True)
    assert ll_lm != pytest.approx(ll, abs=1e-6)
    # an empty context: the harness's prefix token is the </s> every window starts with,
    # so the text scores as a document's first tokens (not after two </s>)
    empty = Instance(request_type="loglikelihood", doc={}, idx=0, arguments=("", "Return the"))
    (ll_empty, _), = lm.loglikelihood([empty], disable_tqdm=True)
    tokens = lm.tok_encode("Return the")
    seq = torch.tensor([lm.dictionary.eos()] + tokens)
    with torch.no_grad():
        lq = torch.log_softmax(lm.model(seq[None])[0][0].double(), -1)  # (T, V)
    assert ll_empty == pytest.approx(float(lq[:-1].gather(1, seq[1:, None]).sum()), abs=1e-9)


@pytest.mark.parametrize("kw,message", [
    (dict(scoring="energy"), "scoring must be lm or elm"),
    (dict(log_z="guess"), "log_z must be exact or estimate"),
    (dict(path="/nowhere/ckpt.pt"), "path: checkpoint not found"),
    (dict(batch_size="auto"), "batch_size=auto: give batch_size=N"),
    (dict(batch_size="auto:4"), "batch_size=auto:4: give batch_size=N"),
    (dict(batch_size=2, max_batch_size=8), "batch_size=2, max_batch_size=8: give batch_size=N"),
    (dict(batch_size=0), "batch_size must be >= 1"),
])
def test_bad_model_args_fail_in_one_line(checkpoint, data_bin, kw, message):
    from energy_lm.harness.model import EnergyLMEval, HarnessArgumentError

    args = {"path": str(checkpoint), "data": str(data_bin), **kw}
    with pytest.raises(HarnessArgumentError, match=message):
        EnergyLMEval(**args)


def test_energy_lm_harness_runs_the_shipped_tasks_offline(checkpoint, data_bin, tmp_path,
                                                          monkeypatch):
    import json

    tasks = tmp_path / "tasks"
    built = run_cli("energy-lm-harness-tasks", tasks, "--corpus", data_bin.parent)
    assert "lastword:" in built.stdout and (tasks / "energy_lm_cloze.yaml").is_file()
    model_args = f"path={checkpoint},data={data_bin}"
    names = ["energy_lm_lastword", "energy_lm_cloze", "energy_lm_perplexity"]
    out = tmp_path / "results"
    run_cli("energy-lm-harness", "--model_args",
            f"{model_args},scoring=elm,log_z=estimate,topk=4,num_samples=4", "--tasks", *names,
            "--include_path", tasks, "--limit", "4", "--output_path", out,
            "--verbosity", "WARNING", env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    assert set(results) == set(names)
    for name, metric in zip(names, ("acc", "acc", "word_perplexity")):
        assert metric in {k.split(",")[0] for k in results[name]}, results[name]
    # the Python route of docs/harness.md
    from lm_eval.tasks import TaskManager

    lm = harness_model(checkpoint, data_bin, scoring="elm", log_z="estimate", topk=4,
                       num_samples=4)
    py = lm_eval.simple_evaluate(model=lm, tasks=["energy_lm_lastword"], limit=2,
                                 task_manager=TaskManager(include_path=str(tasks)))
    assert "energy_lm_lastword" in py["results"]
    from energy_lm.harness.cli import cli_main  # the one-line error, in-process

    argv = ["energy-lm-harness", "--model_args", f"{model_args},scoring=energy", "--tasks",
            "energy_lm_cloze", "--include_path", str(tasks)]
    with monkeypatch.context() as m, pytest.raises(SystemExit) as stop:
        m.setattr("sys.argv", argv)
        cli_main()
    assert str(stop.value) == "energy-lm-harness: error: scoring must be lm or elm, got 'energy'"



def test_greedy_generation_is_qs_argmax_and_sampling_runs_sir(checkpoint, data_bin):
    from lm_eval.api.instance import Instance

    h = harness_model(checkpoint, data_bin, sir_candidates=4)
    greedy = Instance(request_type="generate_until", doc={}, idx=0,
                      arguments=("Return the", {"until": ["\n\n"], "max_gen_toks": 5}))
    (text,) = h.generate_until([greedy], disable_tqdm=True)
    tokens = [h.dictionary.eos()] + h.tok_encode("Return the")
    new = h.tok_encode("Return the" + text)[len(tokens) - 1:]
    assert 0 < len(new) <= 5
    torch.set_grad_enabled(False)
    for token in new:  # each generated token is q's argmax after what precedes it
        logits = h.model(torch.tensor(tokens)[None])[0][0, -1]
        assert int(logits.argmax()) == token
        tokens.append(token)
    torch.set_grad_enabled(True)
    sampled = Instance(request_type="generate_until", doc={}, idx=0,
                       arguments=("Return the", {"until": ["."], "max_gen_toks": 5,
                                                 "do_sample": True}))
    (text,) = h.generate_until([sampled], disable_tqdm=True)
    assert isinstance(text, str) and "." not in text


@pytest.mark.parametrize("scoring,log_z", [("lm", "exact"), ("elm", "exact")])
def test_scores_do_not_depend_on_the_batch(checkpoint, data_bin, scoring, log_z):
    from lm_eval.api.instance import Instance

    texts = [("Return the list of", " items"), ("A", " new value is returned here"),
             ("Raise an error if the file", " is not found"), ("", " The default")]
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=t, idx=i)
                for i, t in enumerate(texts)]
    one = harness_model(checkpoint, data_bin, scoring=scoring, log_z=log_z, batch_size=1)
    three = harness_model(checkpoint, data_bin, scoring=scoring, log_z=log_z, batch_size=3)
    a = one.loglikelihood(requests, disable_tqdm=True)
    b = three.loglikelihood(requests, disable_tqdm=True)
    assert [g for _, g in a] == [g for _, g in b]
    for (x, _), (y, _) in zip(a, b):
        assert x == pytest.approx(y, abs=1e-9)
    assert len({round(x, 6) for x, _ in a}) == len(texts)


@pytest.fixture(scope="module")
def masked_checkpoint(data_bin, tmp_path_factory):
    from conftest import TRAIN_SMALL

    save = tmp_path_factory.mktemp("harness_mlm")
    small = list(TRAIN_SMALL)
    small[small.index("--tokens-per-sample") + 1] = str(BLOCK)
    run_cli("fairseq-train", data_bin, "--task", "masked_lm", "--arch", "roberta_zero_clap_tiny",
            *small, "--encoder-layers", "1", "--criterion", "monarc", "--max-update", "2",
            "--save-dir", save)
    return save / "checkpoint_last.pt"


def test_masked_checkpoints_score_by_pseudo_log_likelihood(masked_checkpoint, data_bin):
    from lm_eval.api.instance import Instance

    from energy_lm.inference.masked_pass import masked_energy_pass

    request = Instance(request_type="loglikelihood", doc={}, idx=0,
                       arguments=("Return the list of", " items"))
    for scoring in ("lm", "elm"):
        h = harness_model(masked_checkpoint, data_bin, scoring=scoring, log_z="exact")
        assert h.masked
        (ll, _), = h.loglikelihood([request], disable_tqdm=True)
        ctx, cont = h._encode_pair("Return the list of", " items")
        d = h.dictionary
        seq = torch.tensor([d.bos()] + ctx + cont + [d.eos()])
        vocab = torch.arange(len(d))
        want = 0.0
        torch.set_grad_enabled(False)
        for i in range(1 + len(ctx), 1 + len(ctx) + len(cont)):  # each token masked in turn
            src, targets = seq.clone(), torch.full_like(seq, d.pad())
            src[i], targets[i] = h.mask_idx, seq[i]
            out = masked_energy_pass(h.model, src[None], targets[None],
                                     candidates=vocab.view(1, -1, 1))
            lq = torch.log_softmax(out.logits[0, 0].double(), -1)
            if scoring == "lm":
                want += float(lq[seq[i]])
            else:
                e = out.cand_energy[0, :, 0].double()
                want += float(lq[seq[i]] - e[seq[i]] - torch.logsumexp(lq - e, 0))
        torch.set_grad_enabled(True)
        assert ll == pytest.approx(want, abs=1e-9), scoring
    assert isinstance(h.rolling_tokens(h.tok_encode("Return the list of items.")), float)
