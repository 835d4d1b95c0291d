"""`energy_language_modeling`: fairseq's `language_modeling` plus packed-document attention.

With `--document-attention`, short documents packed into one block
(`--sample-break-mode none` or `complete`) attend only within themselves, the MonArc
seed's setting. Documents are lines of the binarized data, so each ends with `</s>`; in
the (shifted) model input a document starts at the `</s>` that ends the previous one,
and `segment_ids = cumsum(src_tokens == eos)` numbers the documents of a block.
The ids travel in `net_input["segment_ids"]` to models that accept them
(`transformer_lm_energy` and its presets).
"""

from dataclasses import dataclass, field

import torch
from fairseq.data import BaseWrapperDataset
from fairseq.tasks import register_task
from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask


def document_segment_ids(src_tokens: torch.Tensor, eos: int) -> torch.Tensor:
    """(B, T) int64: the document index of each input position of a packed block."""
    return src_tokens.eq(eos).long().cumsum(dim=1)


class DocumentSegmentsDataset(BaseWrapperDataset):
    """Adds `net_input["segment_ids"]` to each batch of a language-modelling dataset."""

    def __init__(self, dataset, eos: int):
        super().__init__(dataset)
        self.eos = eos

    def collater(self, samples):
        batch = self.dataset.collater(samples)
        if batch and "net_input" in batch:
            batch["net_input"]["segment_ids"] = document_segment_ids(
                batch["net_input"]["src_tokens"], self.eos)
        return batch


@dataclass
class EnergyLanguageModelingConfig(LanguageModelingConfig):
    document_attention: bool = field(
        default=False,
        metadata={"help": "packed documents attend only within themselves (document = "
                          "a line of the data, ending with </s>)"})


@register_task("energy_language_modeling", dataclass=EnergyLanguageModelingConfig)
class EnergyLanguageModelingTask(LanguageModelingTask):
    def build_model(self, args, from_checkpoint=False):
        model = super().build_model(args, from_checkpoint)
        if self.args.document_attention and not _accepts_segment_ids(model):
            raise ValueError(
                "--document-attention needs a model whose decoder accepts segment_ids "
                "(transformer_lm_energy and its presets, e.g. --arch transformer_lm_alibi_base)")
        return model

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        if self.args.document_attention:
            self.datasets[split] = DocumentSegmentsDataset(
                self.datasets[split], self.source_dictionary.eos())
        return self.datasets[split]


def _accepts_segment_ids(model) -> bool:
    import inspect

    decoder = getattr(model, "decoder", None)
    return decoder is not None and "segment_ids" in inspect.signature(decoder.forward).parameters
