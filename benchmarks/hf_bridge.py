"""How exact is the Hugging Face bridge? Every direction measured on tiny random models
(energy_lm.hf.tiny_models: perturbed norms and biases), and what each known pitfall of
the GPT-2 conversion would cost, applied to a correct import.

Prints markdown tables of max |log p - log p_hf| over a probe text x the source
vocabulary (energy_lm.hf.agreement), in float32 and float64.

    python benchmarks/hf_bridge.py [--out DIR]
"""

import argparse
import math
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


# ---- the pitfalls, each applied to a correctly imported GPT-2 (tests/hf uses them too)
def no_decoder_version(model):
    """A state dict without decoder.version: fairseq's upgrade drops the final norm."""
    state = model.state_dict()
    del state["decoder.version"]
    model.upgrade_state_dict_named(state, "")


def sqrt_d_embedding_scale(model):
    model.decoder.embed_scale = math.sqrt(model.decoder.embed_dim)


def conv1d_reshaped(model):
    """GPT-2's Conv1D weight (in, out) reshaped to (out, in) instead of transposed."""
    fc1 = model.decoder.layers[0].fc1
    with torch.no_grad():
        fc1.weight.copy_(fc1.weight.t().clone().reshape(fc1.weight.shape))


def positions_without_offset(model):
    with torch.no_grad():
        table = model.decoder.embed_positions.weight
        table.copy_(torch.roll(table, -2, 0))


def eos_row_left_zero(model):
    with torch.no_grad():
        model.decoder.embed_tokens.weight[model.decoder.dictionary.eos()].zero_()


def erf_gelu_for_tanh_gelu(model):
    from fairseq import utils

    for layer in model.decoder.layers:
        layer.activation_fn = utils.get_activation_fn("gelu")


def eps_1e6_for_1e5(model):
    from energy_lm.modules.layers import set_layer_norm_eps

    set_layer_norm_eps(model.decoder, 1e-6)


def no_output_mask(model):
    model.decoder.unused_symbols = None


PITFALLS = [no_decoder_version, sqrt_d_embedding_scale, conv1d_reshaped,
            positions_without_offset, eos_row_left_zero, erf_gelu_for_tanh_gelu,
            eps_1e6_for_1e5, no_output_mask]


def load(out: Path):
    from fairseq import checkpoint_utils

    models, _, _ = checkpoint_utils.load_model_ensemble_and_task(
        [str(out / "model.pt")], arg_overrides={"data": str(out)})
    return models[0].eval()


def causal_agreement(out: Path, source, dtype, mistake=None):
    import json

    from energy_lm.data.hf_vocabulary import VocabularyMap
    from energy_lm.hf import agreement

    model = load(out)
    if mistake is not None:
        mistake(model)
    vocab = VocabularyMap.load(out)
    ids = agreement.probe_ids(json.loads((out / "tokenizer.json").read_text()), vocab.size)
    return agreement.causal(model, source, ids, vocab.specials["</s>"],
                            vocab.fairseq_index(model.decoder.dictionary), dtype)


def masked_agreement(out: Path, source, dtype):
    import json

    from energy_lm.data.hf_vocabulary import VocabularyMap
    from energy_lm.hf import agreement

    model = load(out)
    vocab = VocabularyMap.load(out)
    ids = agreement.probe_ids(json.loads((out / "tokenizer.json").read_text()), vocab.size)
    return agreement.masked(model, source, ids, vocab.specials["<s>"], vocab.specials["</s>"],
                            vocab.specials["<mask>"], vocab.fairseq_index(model.encoder.dictionary),
                            dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="keep the folders here (default: a temp dir)")
    args = parser.parse_args()
    import energy_lm  # noqa: F401
    from energy_lm.hf.from_hf import convert as from_hf
    from energy_lm.hf.tiny_models import save_gpt2, save_roberta
    from energy_lm.hf.to_hf import convert as to_hf

    root = args.out or Path(tempfile.mkdtemp())
    variants = {
        "GPT-2, eos id 0, tied, gelu_new": ("gpt2", {}),
        "GPT-2, eos last, untied": ("gpt2", dict(eos_first=False, tie_word_embeddings=False)),
        "GPT-2, erf gelu, eps 1e-6": ("gpt2", dict(activation_function="gelu",
                                                   layer_norm_epsilon=1e-6)),
        "RoBERTa (RobertaForMaskedLM)": ("roberta", {}),
    }
    print("| import | float32 | float64 | export of the import | round trip |")
    print("|---|---|---|---|---|")
    first = None
    for k, (name, (family, config)) in enumerate(variants.items()):
        src, out, back, again = (root / f"{k}-{part}" for part in ("src", "fs", "hf", "again"))
        source = (save_gpt2 if family == "gpt2" else save_roberta)(src, **config)
        from_hf(str(src), out)
        measure = causal_agreement if family == "gpt2" else masked_agreement
        f32, f64 = (measure(out, source, dtype).max_abs_diff
                    for dtype in (torch.float32, torch.float64))
        exported = to_hf(out / "model.pt", back)["agreement"].max_abs_diff
        from_hf(str(back), again)
        a = torch.load(out / "model.pt", weights_only=True)["model"]
        b = torch.load(again / "model.pt", weights_only=True)["model"]
        same = a.keys() == b.keys() and all(torch.equal(a[x], b[x]) for x in a)
        print(f"| {name} | {f32:.1e} | {f64:.1e} | {exported:.1e} | "
              f"{'bit-identical' if same else 'DIFFERS'} |")
        if first is None:
            first = (out, source)
    print("\n| pitfall (on the first GPT-2) | float32 | float64 | mass on masked symbols |")
    print("|---|---|---|---|")
    for mistake in PITFALLS:
        f32 = causal_agreement(*first, torch.float32, mistake)
        f64 = causal_agreement(*first, torch.float64, mistake)
        print(f"| {mistake.__name__} | {f32.max_abs_diff:.1e} | {f64.max_abs_diff:.1e} | "
              f"{f64.masked_mass:.2f} |")


if __name__ == "__main__":
    main()
