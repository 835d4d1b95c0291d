"""The criterions in-process: their loss equals the closed form computed from the model's
scoring API, CWT never forms a V-sized projection, and a bf16-autocast run stays finite."""

import math

import pytest
import torch
import torch.nn.functional as F
from fairseq import criterions
from torch.utils._python_dispatch import TorchDispatchMode

import energy_lm.inference.pass_parts as scoring
from conftest import build_model


def first_batch(task, split="train", batch_size=3):
    task.load_dataset(split)
    itr = task.get_batch_iterator(dataset=task.dataset(split), max_sentences=batch_size, seed=1)
    return next(iter(itr.next_epoch_itr(shuffle=False)))


def make_criterion(task, name, **overrides):
    from omegaconf import OmegaConf

    from fairseq.criterions import CRITERION_DATACLASS_REGISTRY

    cfg = OmegaConf.structured(CRITERION_DATACLASS_REGISTRY[name])
    cfg._name = name
    if "seed" in cfg:  # II("common.seed") outside a full fairseq config
        cfg.seed = 1
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return criterions.build_criterion(cfg, task)


def with_energy(model, seed=0):
    torch.manual_seed(seed)
    for p in model.energy_head.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model


@pytest.fixture
def fixed_samples(monkeypatch):
    """Replace sampling by a recorded draw, so the test can recompute the loss."""
    drawn = {}

    def sample(logits, num_samples=1, generator=None, uniforms=None):
        torch.manual_seed(123)
        out = torch.randint(4, logits.size(-1), (*logits.shape[:-1], num_samples))
        drawn["y"] = out
        return out

    monkeypatch.setattr(scoring, "sample_tokens", sample)
    return drawn


@pytest.mark.parametrize("name", ["monarc", "nce"])
def test_causal_energy_criterion_equals_closed_form(data_bin, name, fixed_samples):
    model, task = build_model(data_bin, "transformer_lm_alibi_tiny", task="language_modeling")
    model = with_energy(model)
    sample = first_batch(task)
    crit = make_criterion(task, name, energy_weight=1.5, num_candidates=2)
    loss, sample_size, log = crit(model, sample)

    src, target = sample["net_input"]["src_tokens"], sample["target"]
    y = fixed_samples["y"].permute(0, 2, 1)  # (B, K, T), candidates for positions 1..T
    pad = task.source_dictionary.pad()
    # (B, T+1) with target t at position t + 1: every target in its own context, the last
    # real one of a right-padded row too (its input position holds <pad> in src)
    assert target.eq(pad).any()  # the batch has a short, padded row
    seq = torch.cat([src[:, :1], target], dim=1)
    full = torch.cat([seq[:, :1].unsqueeze(1).expand(-1, 2, -1), y], dim=2)  # dummy at 0
    lprobs, energy, cand_energy = model.score_candidates(seq, full)
    ce = F.nll_loss(lprobs[:, 1:].flatten(0, 1), target.flatten(), ignore_index=pad,
                    reduction="sum")
    e_x, e_y = energy[:, 1:].double(), cand_energy[:, :, 1:].double()  # positions 1..T
    if name == "monarc":
        per_pos = e_x + torch.exp(-e_y).mean(1) - 1
    else:
        per_pos = F.softplus(e_x) + F.softplus(-e_y).mean(1)
    scored = target.ne(pad)
    expected = ce.double() + 1.5 * (per_pos * scored).sum()
    assert sample_size == sample["ntokens"]
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(log["lm_loss"].double(), ce.double(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(log["z"].double(), (torch.exp(-e_y).mean(1) * scored).sum(),
                               rtol=1e-5, atol=1e-5)
    assert int(log["n_scored"]) == int(scored.sum())


@pytest.mark.parametrize("name", ["monarc", "nce"])
def test_masked_energy_criterion_equals_closed_form(data_bin, name, fixed_samples):
    model, task = build_model(data_bin, "roberta_zero_clap_tiny")
    model = with_energy(model)
    sample = first_batch(task)
    crit = make_criterion(task, name)
    loss, sample_size, log = crit(model, sample)
    src, target = sample["net_input"]["src_tokens"], sample["target"]
    y = fixed_samples["y"].permute(0, 2, 1)  # (B, K, S)
    out = model.energy_pass(src, target, y)
    pad = task.source_dictionary.pad()
    ce = F.cross_entropy(out.logits.flatten(0, 1).float(), out.tokens.flatten(), ignore_index=pad,
                         reduction="sum")
    e_x, e_y = out.energy.double(), out.cand_energy[:, 0].double()
    per_pos = e_x + torch.exp(-e_y) - 1 if name == "monarc" else F.softplus(e_x) + F.softplus(-e_y)
    expected = ce.double() + crit.cfg.energy_weight * (per_pos * out.scored).sum()  # default w
    assert int(sample_size) == int(target.ne(pad).sum()) == int(out.scored.sum())
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-4)


class ShapeRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor):
                self.shapes.append((str(func), tuple(t.shape)))
        return out


@pytest.mark.parametrize("arch,task_name", [("transformer_lm_clap_tiny", "language_modeling"),
                                            ("roberta_clap_tiny", "masked_lm")])
def test_cwt_step_has_no_vocabulary_sized_projection(data_bin, arch, task_name):
    model, task = build_model(data_bin, arch, task=task_name)
    model.train()
    vocab, dim = len(task.source_dictionary), 32
    sample = first_batch(task)
    crit = make_criterion(task, "cwt")
    with ShapeRecorder() as rec:
        loss, _, _ = crit(model, sample)
        loss.backward()
    # the only V-sized tensors are the embedding matrix's own gradient buffers (V, d)
    offending = [(f, s) for f, s in rec.shapes if vocab in s and s != (vocab, dim)]
    assert not offending, offending[:5]
    # while the CE step of the same model does project onto the vocabulary
    with ShapeRecorder() as rec:
        if task_name == "masked_lm":
            model(**sample["net_input"], masked_tokens=sample["target"].ne(1))
        else:
            model(**sample["net_input"])
    assert any(vocab in s and s != (vocab, dim) for _, s in rec.shapes)


def test_cwt_criterion_equals_closed_form(data_bin):
    model, task = build_model(data_bin, "transformer_lm_alibi_tiny", task="language_modeling")
    sample = first_batch(task)
    for dedup in (False, True):
        crit = make_criterion(task, "cwt", cwt_dedup=dedup)
        loss, n, log = crit(model, sample)
        features, _ = model(**sample["net_input"], features_only=True)
        tgt = sample["target"]
        keep = tgt.ne(task.source_dictionary.pad())
        h, t = features[keep].double(), tgt[keep]
        emb = model.decoder.embed_tokens.weight.double()
        cands = t.unique() if dedup else t
        logits = h @ emb[cands].T
        labels = (t[:, None] == cands[None, :]).float().argmax(1) if dedup else torch.arange(len(t))
        expected = F.cross_entropy(logits, labels, reduction="sum")
        torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-4)
        assert n == len(t)


@pytest.mark.slow
def test_monarc_bf16_autocast_300_updates_stay_finite(data_bin):
    """A short bf16 run on the CPU (autocast; fp32 master weights, as fairseq's --amp)."""
    model, task = build_model(data_bin, "transformer_lm_zero_clap_tiny", "--decoder-layers", "1",
                              task="language_modeling")
    model.train()
    crit = make_criterion(task, "monarc")
    task.load_dataset("train")
    itr = task.get_batch_iterator(dataset=task.dataset("train"), max_sentences=2, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    updates, epoch = 0, 0
    while updates < 300:
        epoch += 1
        for sample in itr.next_epoch_itr(shuffle=True):
            sample["net_input"]["src_tokens"] = sample["net_input"]["src_tokens"][:, :16]
            sample["target"] = sample["target"][:, :16]
            sample["ntokens"] = int(sample["target"].ne(1).sum())
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss, size, log = crit(model, sample)
            assert torch.isfinite(loss), f"update {updates}: {log}"
            opt.zero_grad()
            (loss / size).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            updates += 1
            if updates == 300:
                break
    assert math.isfinite(float(log["ebm_loss"])) and math.isfinite(float(log["z"]))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert float(model.energy_head.context_proj.weight.abs().sum()) > 0  # F left 0: trained


def _split_batch(sample, rows):
    """The sub-batch of `rows` of a collated sample (tensors indexed on dim 0)."""
    def pick(value):
        if isinstance(value, dict):
            return {key: pick(v) for key, v in value.items()}
        return value[rows] if torch.is_tensor(value) and value.dim() > 0 else value
    return pick(sample)


@pytest.mark.parametrize("arch,task_name", [("transformer_lm_alibi_tiny", "language_modeling"),
                                            ("roberta_zero_clap_tiny", "masked_lm")])
def test_samples_depend_on_the_example_not_on_the_batch_layout(data_bin, arch, task_name, monkeypatch):
    """MonArc's candidates are keyed by (seed, update, sample id, position, k): the same
    examples in one batch of 4 or in two batches of 2 (in another order) get the same
    samples and the same summed loss; another update number gives other samples."""
    model, task = build_model(data_bin, arch, task=task_name)
    model = with_energy(model)
    sample = first_batch(task, batch_size=4)
    assert sample["id"].numel() == 4
    crit = make_criterion(task, "monarc", num_candidates=2)
    drawn = []
    real = scoring.sample_tokens
    monkeypatch.setattr(scoring, "sample_tokens",
                        lambda *a, **kw: drawn.append(real(*a, **kw)) or drawn[-1])

    def run(rows):
        torch.manual_seed(len(drawn))  # a different global RNG state every call
        loss, _, _ = crit(model, _split_batch(sample, rows))
        return loss.double(), drawn[-1]

    crit.set_num_updates(7)
    whole, y_whole = run(torch.arange(4))
    second, y_second = run(torch.tensor([3, 2]))
    first, y_first = run(torch.tensor([0, 1]))
    torch.testing.assert_close(first + second, whole, rtol=1e-6, atol=1e-4)
    if y_whole.size(1) == y_first.size(1):  # causal: positions align across layouts
        assert torch.equal(y_first, y_whole[:2]) and torch.equal(y_second, y_whole[[3, 2]])
    crit.set_num_updates(8)
    _, y_next = run(torch.arange(4))
    assert not torch.equal(y_next, y_whole)


def test_energy_metrics_leave_ties_out_and_report_the_gap(data_bin, monkeypatch):
    """Half the samples equal the data token: they count in tie_share and nowhere else;
    energy_acc and energy_gap are over the other half."""
    from energy_lm.inference.causal_pass import causal_energy_pass

    model, task = build_model(data_bin, "transformer_lm_alibi_tiny", task="language_modeling")
    model = with_energy(model)
    sample = first_batch(task)
    target = sample["target"]
    other = torch.where(target + 1 < 300, target + 1, target - 1)
    drawn = torch.stack([target, other], dim=-1)  # (B, P = T, K = 2): k = 0 ties with x

    def sample_fn(logits, num_samples=1, generator=None, uniforms=None):
        return drawn

    monkeypatch.setattr(scoring, "sample_tokens", sample_fn)
    crit = make_criterion(task, "monarc", num_candidates=2)
    _, _, log = crit(model, sample)
    out = causal_energy_pass(model, sample["net_input"]["src_tokens"], drawn.permute(0, 2, 1),
                             targets=target)
    scored = out.scored
    gap = (out.cand_energy[:, 1] - out.energy)[scored].double()
    assert float(log["n_untied"]) == pytest.approx(0.5 * int(scored.sum()))
    assert float(log["energy_acc"]) == pytest.approx(0.5 * float((gap > 0).sum()))
    assert float(log["energy_gap"]) == pytest.approx(0.5 * float(gap.sum()), rel=1e-4, abs=1e-4)
    assert float(gap.abs().sum()) > 0  # the energies differ: the check can fail


@pytest.mark.parametrize("name", ["monarc", "nce"])
def test_validation_logs_the_elm_estimate_eval_elm_gives(data_bin, name):
    """In validation the criterion logs elm_est, the ELM's NLL with log Z estimated as
    energy-lm-eval-elm estimates it: close to the exact-Z ELM on the same batch, where the
    Z = 1 figure (elm_loss) is not; in training it computes no such pass."""
    from energy_lm.inference.log_z import exact_log_z_of
    from energy_lm.inference.scored_batch import gather_tokens, score_batch

    model, task = build_model(data_bin, "transformer_lm_alibi_tiny", "--decoder-layers", "1",
                              task="language_modeling")
    with_energy(model)
    sample = first_batch(task, "valid", batch_size=2)
    crit = make_criterion(task, name, valid_topk=32, valid_tail_samples=64)
    with torch.no_grad():
        _, _, log = crit(model.eval(), sample)
        exact = score_batch(model, sample, lambda logits: logits.argmax(-1, keepdim=True)
                            .permute(0, 2, 1))
        log_z = exact_log_z_of(model, sample)
    mask = exact.scored
    nll = -gather_tokens(exact.lprobs, exact.tokens)
    tokens = int(mask.sum())
    want = float(((nll + exact.energy + log_z) * mask).sum()) / tokens
    z1 = float(((nll + exact.energy) * mask).sum()) / tokens
    got = float(log["elm_est"]) / int(log["n_est"])
    assert abs(got - want) < 0.1 * abs(z1 - want) and abs(z1 - want) > 0.01
    assert float(log["elm_est_var"]) > 0
    model.train()
    _, _, log = crit(model, sample)
    assert "elm_est" not in log


def test_the_valid_elm_gain_warns_only_beyond_twice_its_error(caplog):
    """elm_gain = elm_est - lm_loss and its standard error sqrt(2 ln 2 N bias) / (N ln 2)
    from the meters; one warning from a validation's stats when the gain is above 0 by
    more than twice that."""
    import logging

    from fairseq.logging.meters import AverageMeter

    from energy_lm.criterions.residual_energy import (elm_est_stderr, elm_gain,
                                                      warn_if_the_energy_hurts)

    meters = {"elm_est": AverageMeter(), "lm_loss": AverageMeter(), "elm_est_bias": AverageMeter()}
    meters["elm_est"].update(torch.tensor(6.001), 1000)
    meters["lm_loss"].update(torch.tensor(6.0), 1000)
    meters["elm_est_bias"].update(torch.tensor(1e-5), 1000)
    stderr = math.sqrt(2 * math.log(2) * 1000 * 1e-5) / 1000 / math.log(2)  # 1.70e-4 bits
    assert elm_gain(meters) == pytest.approx(0.001, abs=1e-6)
    assert elm_est_stderr(meters) == pytest.approx(stderr, rel=1e-6)
    with caplog.at_level(logging.WARNING, logger="energy_lm.criterions"):
        warn_if_the_energy_hurts({"elm_gain": 1.5 * stderr, "elm_est_se": stderr})
        warn_if_the_energy_hurts({"elm_gain": -0.01, "elm_est_se": stderr})
        warn_if_the_energy_hurts({"loss": 6.0})  # a criterion without the estimate
        assert not caplog.records
        warn_if_the_energy_hurts({"elm_gain": 0.001, "elm_est_se": stderr})
    assert len(caplog.records) == 1
    assert "the ELM is 0.0010 bits per token above its LM" in caplog.records[0].getMessage()
