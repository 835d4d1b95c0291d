"""Tiny random Hugging Face models built here (no downloads), saved as `save_pretrained`
folders with a byte-level BPE trained here on standard-library prose. Every norm and
bias is perturbed away from its initial value (and RoBERTa's token-type row is not
zero), so that a converter that drops one, or maps it to its default, is caught."""

import argparse
import collections
import json as json_module
import logging
import textwrap
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
import torch  # noqa: E402

# prose the tokenizers are trained on and the tests tokenize (module docstrings)
TEXT = [line for doc in (argparse.__doc__, collections.__doc__, json_module.__doc__,
                         logging.__doc__, textwrap.__doc__)
        for line in (doc or "").splitlines() if line.strip()]
VOCAB = 300


def perturb(model, seed: int = 0):
    """Move every 1-d parameter (norm weights and biases, biases) off its init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.dim() == 1:
                param.add_(torch.randn(param.shape, generator=gen) * 0.3)
    return model


def _bpe(specials, trailing=()):
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer(add_prefix_space=False)
    tok.train_from_iterator(TEXT, vocab_size=VOCAB, min_frequency=2, show_progress=False,
                            special_tokens=list(specials))
    if trailing:
        tok.add_special_tokens(list(trailing))
    return tok


def save_gpt2(folder: Path, eos_first: bool = True, seed: int = 0, **config):
    """A GPT-2 with end-of-text at id 0 (eos_first) or last (as GPT-2's own 50256)."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    eot = "<|endoftext|>"
    tok = _bpe([eot] if eos_first else [], () if eos_first else (eot,))
    eos = tok.token_to_id(eot)
    fast = GPT2TokenizerFast(tokenizer_object=tok._tokenizer, bos_token=eot, eos_token=eot,
                             unk_token=eot)
    # weights larger than GPT-2's 0.02 init: pre-activations of order 1, where the GELU
    # variants differ (1e-3 at |x| ~ 2), as in a trained model
    config = dict(dict(initializer_range=0.15), **config)
    cfg = GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2,
                     n_head=4, bos_token_id=eos, eos_token_id=eos, **config)
    torch.manual_seed(seed)
    model = perturb(GPT2LMHeadModel(cfg), seed).eval()
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return model


def save_roberta(folder: Path, with_head: bool = True, seed: int = 0, **config):
    from tokenizers.processors import RobertaProcessing
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaModel, RobertaTokenizerFast

    tok = _bpe(["<s>", "<pad>", "</s>", "<unk>"], ("<mask>",))
    tok._tokenizer.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    fast = RobertaTokenizerFast(tokenizer_object=tok._tokenizer)
    config = dict(dict(initializer_range=0.15), **config)  # as in save_gpt2
    cfg = RobertaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=66,
                        type_vocab_size=1, **config)
    torch.manual_seed(seed)
    model = perturb((RobertaForMaskedLM if with_head else RobertaModel)(cfg), seed).eval()
    with torch.no_grad():
        embeddings = model.roberta.embeddings if with_head else model.embeddings
        embeddings.token_type_embeddings.weight.normal_(0, 0.5)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return model


def load_fairseq(out: Path):
    """(model, task) of OUT/model.pt, as fairseq's own loader builds it."""
    from fairseq import checkpoint_utils

    import energy_lm  # noqa: F401

    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(out / "model.pt")], arg_overrides={"data": str(out)})
    return models[0].eval(), task


@pytest.fixture(scope="module")
def gpt2_import(tmp_path_factory):
    """(source model, its folder, the imported folder)."""
    from energy_lm.hf.from_hf import convert

    root = tmp_path_factory.mktemp("gpt2")
    source = save_gpt2(root / "src")
    convert(str(root / "src"), root / "out")
    return source, root / "src", root / "out"


@pytest.fixture(scope="module")
def roberta_import(tmp_path_factory):
    from energy_lm.hf.from_hf import convert

    root = tmp_path_factory.mktemp("roberta")
    source = save_roberta(root / "src")
    convert(str(root / "src"), root / "out")
    return source, root / "src", root / "out"
