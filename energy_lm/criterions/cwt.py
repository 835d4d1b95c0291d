"""`--criterion cwt`: contrastive weight tying, the "headless" objective
(docs/methods.md section 3), for causal and masked models.

The final state at each trained position (causal: every non-pad target; masked: the
masked positions) must pick out the input embedding of its own target among those of
the other targets of the micro-batch (in-batch negatives; `--cwt-dedup` keeps each
distinct target once). The model's output head is never called: no V-sized
projection happens in a CWT step. Logs `loss` (base 2) and `cwt_acc` (the share of
positions whose own target scores highest).
"""

import math
from dataclasses import dataclass, field

import torch
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from energy_lm.losses import cwt_candidates, cwt_loss_from_rows
from energy_lm.inference.protocol import is_masked_model

LN2 = math.log(2)


@dataclass
class CwtConfig(FairseqDataclass):
    cwt_dedup: bool = field(
        default=False, metadata={"help": "in-batch negatives over the distinct targets "
                                         "(default: every target position, repeats included, "
                                         "as in the original)"})


def trunk_of(model):
    """The encoder/decoder that embeds the input tokens: `model.trunk` on energy_lm archs
    (both families); on fairseq's own archs, RoBERTa's sentence encoder or the LM's
    decoder."""
    if hasattr(model, "trunk"):
        return model.trunk
    return model.encoder.sentence_encoder if is_masked_model(model) else model.decoder


def input_embedding(model):
    """The module that embeds input tokens. CWT scores against its raw rows (L2-normalised
    on CLAP archs), without the LM family's sqrt(d) input scale, as the seed does."""
    return trunk_of(model).embed_tokens


def check_cwt_model(model) -> None:
    embed = input_embedding(model)
    # an LM decoder's final states have --decoder-output-dim; an encoder's, its own width
    out_dim = getattr(trunk_of(model), "output_embed_dim", embed.embedding_dim)
    if out_dim != embed.embedding_dim:
        raise ValueError(f"--criterion cwt scores final states against input embeddings, so "
                         f"their sizes must match: output dim {out_dim} != embedding dim "
                         f"{embed.embedding_dim}")


@register_criterion("cwt", dataclass=CwtConfig)
class CwtCriterion(FairseqCriterion):
    def __init__(self, cfg: CwtConfig, task):
        super().__init__(task)
        self.dedup = cfg.cwt_dedup
        self._checked = False

    def forward(self, model, sample, reduce=True):
        if not self._checked:
            check_cwt_model(model)
            self._checked = True
        target = sample["target"]  # (B, T): pad where nothing is trained
        net_input = sample["net_input"]
        features, _ = model(**net_input, features_only=True)  # (B, T, C)
        trained = target.ne(self.padding_idx)
        # boolean indexing syncs once, like fairseq's own masked LM head
        hidden = features[trained]  # (N, C)
        targets = target[trained]  # (N,)
        candidates, labels = cwt_candidates(targets, self.dedup)  # (U,), (N,)
        if candidates.numel() < 2:
            raise ValueError(
                f"cwt: this batch has {targets.numel()} trained position(s) and "
                f"{candidates.numel()} candidate target(s): in-batch negatives need at least "
                f"2 (use larger batches{'' if not self.dedup else ', or drop --cwt-dedup'})")
        rows = input_embedding(model)(candidates)  # (U or N, C): only the needed rows
        loss, correct = cwt_loss_from_rows(hidden, rows, labels, reduction="sum")
        if not bool(torch.isfinite(loss.detach())):  # one sync: name the failing term
            raise FloatingPointError(f"cwt: non-finite loss {loss.item()} (the contrastive "
                                     f"cross-entropy over in-batch embeddings)")
        sample_size = targets.numel()
        logging_output = {
            "loss": loss.data,
            "correct": correct.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["nsentences"],
            "sample_size": sample_size,
        }
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        loss = sum(log.get("loss", 0) for log in logging_outputs)
        correct = sum(log.get("correct", 0) for log in logging_outputs)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        metrics.log_scalar("loss", loss / max(sample_size, 1) / LN2, sample_size, round=3)
        metrics.log_scalar("cwt_acc", correct / max(sample_size, 1), sample_size, round=4)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
