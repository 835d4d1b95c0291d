"""`RobertaModel.from_pretrained(...).fill_mask(..., scoring="elm")`.

fairseq's RoBERTa hub interface ranks the fillings of `<mask>` by the MLM head; a masked
energy model's energy is ignored there. The wrap adds two keywords to
`RobertaHubInterface.fill_mask` (installed at import, idempotent): `scoring="lm"` (the
default: fairseq's own method, unchanged) or `"elm"` (energy_lm.inference.elm_fill: q's top
`elm_candidates` re-weighted by exp(-E) and renormalised over them; None: the whole
vocabulary). The result keeps fairseq's format, (filled sentence, probability, token).
"""

from energy_lm.patches.replace import replace

MASK = "<mask>"


def _tokens(hub, masked_input: str):
    """The masked input as fairseq's fill_mask encodes it: the BPE of the text around
    the mask, joined by the mask symbol, between <s> and </s>."""
    if masked_input.count(MASK) != 1:
        raise ValueError(f"fill_mask needs exactly one {MASK} in {masked_input!r}")
    spans = masked_input.split(MASK)
    bpe = f" {MASK} ".join(hub.bpe.encode(span.rstrip()) for span in spans).strip()
    return hub.task.source_dictionary.encode_line(f"<s> {bpe} </s>", append_eos=False,
                                                  add_if_not_exist=False).long()


def install() -> None:
    from fairseq.models.roberta.hub_interface import RobertaHubInterface

    replace(RobertaHubInterface, "fill_mask", _with_elm_scoring)


def _with_elm_scoring(original):
    def fill_mask(self, masked_input: str, topk: int = 5, scoring: str = "lm",
                  elm_candidates=32):
        if scoring == "lm":
            return original(self, masked_input, topk=topk)
        if scoring != "elm":
            raise ValueError(f"scoring must be 'lm' or 'elm', got {scoring!r}")
        from fairseq import utils

        from energy_lm.inference.elm_fill import elm_fillings

        tokens = _tokens(self, masked_input).to(self.device)
        index = int((tokens == self.task.mask_idx).nonzero()[0])
        with utils.model_eval(self.model):
            ids, probs, _ = elm_fillings(self.model, tokens, index, topk, elm_candidates)
        out = []
        spaced = f" {MASK}" in masked_input
        for token_id, prob in zip(ids.tolist(), probs.tolist()):
            word = self.bpe.decode(self.task.source_dictionary.string([token_id]))
            filled = (masked_input.replace(f" {MASK}", word) if spaced
                      else masked_input.replace(MASK, word))
            out.append((filled, prob, word))
        return out

    fill_mask.__doc__ = (original.__doc__ or "") + __doc__
    return fill_mask
