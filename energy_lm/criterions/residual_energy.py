"""`--criterion monarc` and `--criterion nce`: residual energy-based LMs trained on top
of the LM's cross-entropy (docs/methods.md sections 4-5), for causal and masked models.

    monarc: CE_q(x) + w * [E(x) + exp(-E(y)) - 1]        y ~ q, sampled without gradient
    nce:    CE_q(x) + w * [softplus(E(x)) + softplus(-E(y))]

With K candidates per position the y-terms are averaged over the K samples. The
arithmetic is in `energy_lm.losses`; this module is the fairseq adapter: it runs the
model's energy pass (`energy_lm.inference.energy_pass.energy_pass`: one call and one output
type for both families), masks padding, and logs, in base 2 as fairseq does:
  lm_loss    the LM's own cross-entropy
  ebm_loss   the true value of the energy term (not a surrogate)
  elm_loss   the ELM's NLL assuming Z = 1 (the seed's convention, not a bound): CE + E(x)
             over the same targets (every target, each in its own context: see
             energy_lm.inference.causal_pass); it can sit below lm_loss while the normalised ELM
             is above it, and overstated the gain 1.9x on the Debian corpus
             (docs/measurements.md)
  elm_est    validation only: the ELM's NLL with log Z estimated as energy-lm-eval-elm
             estimates it (q's top --valid-topk tokens summed exactly + --valid-tail-samples
             samples of the tail), the figure to compare with lm_loss
  elm_est_bias  validation only: that estimate's expected downward bias (stderr^2 / 2 per
             token): the normalised ELM is about elm_est + elm_est_bias
  z          mean exp(-E(y)), the one-sample estimate of Z (should stay near 1)
  energy_acc share of samples y != x with E(x) < E(y) (ties y = x carry no signal)
  energy_gap mean E(y) - E(x) over the samples y != x (> 0: the energy prefers the data)
  tie_share  share of samples equal to the data token
  guarded    share of exp(-E(y)) values that needed the overflow guard
Each sample is a function of (--seed, update number, the example's id, its position, k)
(energy_lm.sampling.keyed_random): the same example draws the same candidates whatever
the batch layout (1 or N processes, its place in the batch), and a resumed run draws
what the uninterrupted one drew. A sample without ids falls back to torch's RNG.
"""

import logging
import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from omegaconf import II

from energy_lm.losses import monarc_terms, nce_terms
from energy_lm.inference.energy_pass import energy_pass
from energy_lm.inference.protocol import require
from energy_lm.sampling.keyed_random import SampleKeys

logger = logging.getLogger("energy_lm.criterions")
LN2 = math.log(2)


@dataclass
class ResidualEnergyConfig(FairseqDataclass):
    energy_weight: float = field(
        default=2.0, metadata={"help": "weight w of the energy term (default 2: the seed's "
                                       "NCE run's, and the grid's choice, docs/measurements.md)"})
    num_candidates: int = field(
        default=1, metadata={"help": "samples y ~ q per position (their terms are averaged)"})
    energy_guard: float = field(
        default=20.0, metadata={"help": "exp(-E) continues linearly beyond -E > this value "
                                        "(overflow guard)"})
    valid_topk: int = field(
        default=8, metadata={"help": "validation's ELM estimate (elm_est): q's k most likely "
                                     "tokens in log Z summed exactly (default 8)"})
    valid_tail_samples: int = field(
        default=8, metadata={"help": "validation's ELM estimate: samples of q's tail (default "
                                     "8; 0 turns elm_est off)"})
    attention_backend: str = field(
        default="auto", metadata={"help": "paired-attention backend of the candidate stream "
                                          "(auto, reference, ...)"})
    seed: int = II("common.seed")



def check_energy_flags(cfg: ResidualEnergyConfig) -> None:
    """One line at start-up for a flag no run can use."""
    if cfg.num_candidates < 1:
        raise ValueError(f"--num-candidates must be >= 1, got {cfg.num_candidates}")
    if not (math.isfinite(cfg.energy_weight) and cfg.energy_weight >= 0):
        raise ValueError(f"--energy-weight must be finite and >= 0, got {cfg.energy_weight}")
    from energy_lm.kernels import backends

    backends.check_name(cfg.attention_backend, "--attention-backend")
    if cfg.valid_tail_samples and (cfg.valid_tail_samples < 2 or cfg.valid_topk < 1):
        raise ValueError(f"--valid-tail-samples must be 0 (off) or >= 2 and --valid-topk >= 1, "
                         f"got {cfg.valid_tail_samples} and {cfg.valid_topk}")
    if not (math.isfinite(cfg.energy_guard) and cfg.energy_guard > 0):
        raise ValueError(f"--energy-guard must be finite and > 0 (the exponent above which "
                         f"exp(-E) continues linearly), got {cfg.energy_guard}")


def elm_est_stderr(meters) -> float:
    """The standard error (bits per token) of the validation's elm_est, from the log Z
    estimate's variance: elm_est_bias averages var / (2 N ln 2) over the N scored
    tokens, so the variance of the split's sum is 2 ln 2 N bias."""
    count = max(float(meters["elm_est"].count), 1.0)
    return math.sqrt(max(2 * LN2 * count * float(meters["elm_est_bias"].avg), 0.0)) / count / LN2


def elm_gain(meters) -> float:
    """The ELM's estimated NLL minus the LM's (bits per token; negative: the energy
    helps), logged in validation as `elm_gain`."""
    return float(meters["elm_est"].avg) - float(meters["lm_loss"].avg)  # meters hold tensors


def warn_if_the_energy_hurts(stats) -> None:
    """One warning when a validation's elm_gain is above 0 by more than twice its
    standard error (energy_lm.patches.valid_warning calls it with fairseq-train's figures of
    a validation, once per validation)."""
    gain, stderr = stats.get("elm_gain"), stats.get("elm_est_se")
    if gain is None or stderr is None or float(gain) <= 2 * float(stderr):
        return
    logger.warning(
        "valid: the ELM is %.4f bits per token above its LM on this split (log Z estimated, "
        "+- %.4f): the energy does not help on this held-out text; score with the LM, or "
        "keep the checkpoint where the ELM is best (--best-checkpoint-metric elm_est)",
        float(gain), float(stderr))

class ResidualEnergyCriterion(FairseqCriterion):
    name = "residual_energy"

    def __init__(self, cfg: ResidualEnergyConfig, task):
        super().__init__(task)
        check_energy_flags(cfg)
        self.cfg = cfg
        self._checked = False
        # fairseq's update number, one of the keys of the candidates' samples; the trainer
        # sets it (energy_lm.patches.update_number), as it sets the model's
        self.num_updates = 0

    def set_num_updates(self, num_updates: int) -> None:
        self.num_updates = int(num_updates)

    def energy_terms(self, energy, cand_energy):
        raise NotImplementedError

    def forward(self, model, sample, reduce=True):
        if not self._checked:
            require(model, "energy", user=f"--criterion {self.name}")
            self._checked = True
        net_input = sample["net_input"]
        # causal: every target, its energy in the context the LM predicted it from;
        # masked: every masked position. The function, not the model's method: under DDP
        # `model` is the wrapper, whose forward reduces the gradients across ranks
        out = energy_pass(model, net_input["src_tokens"], sample["target"],
                          num_samples=self.cfg.num_candidates,
                          segment_ids=net_input.get("segment_ids"),
                          backend=self.cfg.attention_backend,
                          sample_keys=self._sample_keys(sample))
        # the LM's cross-entropy from the pass's logsumexp (computed once, for the
        # energy head's log q too): sum over scored targets of logsumexp - logit(x)
        picked = out.logits.gather(-1, out.tokens.unsqueeze(-1)).squeeze(-1).to(out.logsumexp)
        ce = torch.where(out.scored, out.logsumexp - picked, torch.zeros_like(picked)).sum()
        loss, sample_size, logging_output = self._finish(ce, out, out.scored.sum(), sample)
        if not model.training and self.cfg.valid_tail_samples:
            logging_output.update(self._elm_estimate(model, sample))
        return loss, sample_size, logging_output

    def _elm_estimate(self, model, sample) -> dict:
        """The ELM's NLL on this batch with log Z estimated as energy-lm-eval-elm does (a
        second pass: q's top-k summed exactly, samples of the tail; the samples seeded by
        --seed and the batch's first example, so a validation repeats itself)."""
        from energy_lm.losses import topk_tail_log_z
        from energy_lm.inference.log_z import head_and_tail
        from energy_lm.inference.scored_batch import gather_tokens, score_batch

        k, m = self.cfg.valid_topk, self.cfg.valid_tail_samples
        vocab = len(self.task.target_dictionary)
        k = min(k, vocab - 2)  # a tail of at least two tokens remains to sample
        device = sample["net_input"]["src_tokens"].device
        first = int(sample["id"].reshape(-1)[0]) if sample.get("id") is not None else 0
        generator = torch.Generator(device=device).manual_seed(self.cfg.seed * 1_000_003 + first)
        out = score_batch(model, sample, head_and_tail(k, m, generator))
        head_log_q = out.lprobs.gather(-1, out.cand_tokens[:, :k].permute(0, 2, 1))  # (B, P, k)
        log_z, stderr, _ = topk_tail_log_z(head_log_q, out.cand_energy[:, :k].permute(0, 2, 1),
                                           out.cand_energy[:, k:].permute(0, 2, 1))
        mask = out.scored.to(log_z.dtype)
        nll = -gather_tokens(out.lprobs, out.tokens)
        return {"elm_est": ((nll + out.energy + log_z) * mask).sum().data,
                "elm_est_var": (stderr * stderr * mask).sum().data,
                "n_est": out.scored.sum().data}

    def _check_finite(self, ce, energy, cand_energy, z, scored) -> None:
        """A NaN or inf loss stops the run with one line naming the term: the LM's
        cross-entropy, the energies E(x) or E(y), or the Z estimate mean exp(-E(y)).
        One host sync per step (fairseq's trainer syncs on the gradient norm anyway);
        otherwise the run would stop later at "gradients are Nan/Inf", naming nothing."""
        mask = scored.unsqueeze(1)
        terms = torch.stack([ce.detach().float(),
                             (energy.detach().float() * scored).sum(),
                             (cand_energy.detach().float() * mask).sum(),
                             z.detach().float()])
        finite = torch.isfinite(terms)
        if bool(finite.all()):
            return
        names = ["CE (the LM's cross-entropy)", "energy E(x) of the data",
                 "energy E(y) of the samples", "Z (mean exp(-E(y)))"]
        bad = [f"{name} = {value}" for name, value, ok in zip(names, terms.tolist(), finite.tolist())
               if not ok]
        raise FloatingPointError(f"{self.name}: non-finite loss term(s): {'; '.join(bad)}")

    def _sample_keys(self, sample) -> Optional[SampleKeys]:
        """The samples of example `id` at update u depend on (seed, u, id) only, not on
        the batch layout (rank, position in the batch); without ids (a hand-made sample)
        torch's global RNG draws them."""
        if sample.get("id") is None:
            return None
        return SampleKeys(self.cfg.seed, self.num_updates, sample["id"])

    def _finish(self, ce, out, sample_size, sample):
        """ce over out's scored tokens; out: the energy pass (EnergyOutput). CE and E(x)
        cover the same targets (every scored one)."""
        energy, cand_energy, scored = out.energy, out.cand_energy, out.scored
        tokens, cand_tokens = out.tokens, out.cand_tokens
        terms = self.energy_terms(energy.unsqueeze(1), cand_energy)  # each (B, K, P)
        weight = scored.unsqueeze(1).float() / cand_energy.size(1)  # averages over K
        ebm = (terms["ebm"] * weight).sum()
        z = (terms["z"] * weight).sum()
        self._check_finite(ce, energy, cand_energy, z, scored)
        loss = ce + self.cfg.energy_weight * ebm
        # a sample equal to the data token (y = x) has nothing to learn: accuracy and the
        # energy gap are over y != x, the share of ties apart
        untied = weight * cand_tokens.ne(tokens.unsqueeze(1)).float()
        gap = (cand_energy.detach().float() - energy.detach().float().unsqueeze(1))
        logging_output = {
            "loss": loss.data,
            "lm_loss": ce.data,
            "ebm_loss": ebm.data,
            "energy_data": (energy.float() * scored).sum().data,
            "z": z.data,
            "energy_acc": (terms["correct"] * untied).sum().data,
            "energy_gap": (gap * untied).sum().data,
            "n_untied": untied.sum().data,
            "guarded": (terms["guarded"].float() * weight).sum().data,
            "n_scored": scored.sum().data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["nsentences"],
            "sample_size": sample_size,
        }
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        sample_size, n_scored = total("sample_size"), total("n_scored")
        n_scored_safe = max(float(n_scored), 1.0)
        metrics.log_scalar("loss", total("loss") / sample_size / LN2, sample_size, round=3)
        metrics.log_scalar("lm_loss", total("lm_loss") / sample_size / LN2, sample_size, round=3)
        metrics.log_derived("ppl", lambda meters: 2 ** meters["lm_loss"].avg)
        metrics.log_scalar("ebm_loss", total("ebm_loss") / n_scored_safe / LN2, n_scored, round=4)
        metrics.log_scalar("elm_loss", (total("lm_loss") + total("energy_data")) / sample_size / LN2,
                           sample_size, round=3)
        n_est = total("n_est")
        if n_est:  # validation: the estimate eval-elm gives, and its bias
            metrics.log_scalar("elm_est", total("elm_est") / n_est / LN2, n_est, round=4)
            metrics.log_scalar("elm_est_bias", total("elm_est_var") / 2 / n_est / LN2, n_est,
                               round=5)
            metrics.log_derived("elm_gain", lambda meters: round(elm_gain(meters), 4))
            metrics.log_derived("elm_est_se", lambda meters: round(elm_est_stderr(meters), 5))
        metrics.log_scalar("z", total("z") / n_scored_safe, n_scored, round=4)
        n_untied = total("n_untied")
        n_untied_safe = max(float(n_untied), 1e-9)
        metrics.log_scalar("energy_acc", total("energy_acc") / n_untied_safe, n_untied, round=4)
        metrics.log_scalar("energy_gap", total("energy_gap") / n_untied_safe, n_untied, round=4)
        metrics.log_scalar("tie_share", 1.0 - float(n_untied) / n_scored_safe, n_scored, round=4)
        metrics.log_scalar("guarded", total("guarded") / n_scored_safe, n_scored, round=5)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


@register_criterion("monarc", dataclass=ResidualEnergyConfig)
class MonArcCriterion(ResidualEnergyCriterion):
    """CE + w * [E(x) + exp(-E(y)) - 1]: the Z - log Z - 1 penalty with a one-sample Z."""

    name = "monarc"

    def energy_terms(self, energy, cand_energy):
        return monarc_terms(energy, cand_energy, max_log=self.cfg.energy_guard)


@register_criterion("nce", dataclass=ResidualEnergyConfig)
class NceCriterion(ResidualEnergyCriterion):
    """CE + w * [softplus(E(x)) + softplus(-E(y))]: data vs LM samples, logit -E."""

    name = "nce"

    def energy_terms(self, energy, cand_energy):
        # the loss's softplus needs no guard; the flag bounds the logged z = exp(-E(y))
        return nce_terms(energy, cand_energy, max_log=self.cfg.energy_guard)
