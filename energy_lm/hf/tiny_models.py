"""Tiny random Hugging Face models, written as `save_pretrained` folders with a byte-level
BPE trained here on standard-library prose: stand-ins for hub models where none can be
downloaded (the README's walk-through and the tests).

    python -m energy_lm.hf.tiny_models gpt2 tiny-gpt2
    python -m energy_lm.hf.tiny_models roberta tiny-roberta
    python -m energy_lm.hf.tiny_models llama tiny-llama      (or qwen2, neox, stablelm)

Every 1-d parameter (norm weights and biases, biases) is moved off its initial value and
RoBERTa's token-type row is not zero, so that a converter which drops one, or maps it to
its default, is caught; the weights are drawn larger than GPT-2's 0.02 so that
pre-activations are of order 1, where the GELU variants differ (as in a trained model).
"""

import argparse
import collections
import json
import logging
import textwrap
from pathlib import Path
from typing import List

import torch

VOCAB = 300
INIT_RANGE = 0.15


def prose() -> List[str]:
    """Non-empty lines of a few standard-library module docstrings."""
    return [line for doc in (argparse.__doc__, collections.__doc__, json.__doc__,
                             logging.__doc__, textwrap.__doc__)
            for line in (doc or "").splitlines() if line.strip()]


def perturb(model, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.dim() == 1:
                param.add_(torch.randn(param.shape, generator=gen) * 0.3)
    return model


def _bpe(specials, trailing=()):
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer(add_prefix_space=False)
    tok.train_from_iterator(prose(), vocab_size=VOCAB, min_frequency=2, show_progress=False,
                            special_tokens=list(specials))
    if trailing:
        tok.add_special_tokens(list(trailing))
    return tok


def save_gpt2(folder: Path, eos_first: bool = True, seed: int = 0, **config):
    """A GPT-2 whose end-of-text token is id 0 (eos_first) or the last id (as GPT-2's
    own 50256); config: GPT2Config fields to override."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    eot = "<|endoftext|>"
    tok = _bpe([eot] if eos_first else [], () if eos_first else (eot,))
    eos = tok.token_to_id(eot)
    fast = GPT2TokenizerFast(tokenizer_object=tok._tokenizer, bos_token=eot, eos_token=eot,
                             unk_token=eot)
    config = dict(dict(initializer_range=INIT_RANGE), **config)
    cfg = GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2,
                     n_head=4, bos_token_id=eos, eos_token_id=eos, **config)
    torch.manual_seed(seed)
    model = perturb(GPT2LMHeadModel(cfg), seed).eval()
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return model


def save_llama(folder: Path, qwen2: bool = False, seed: int = 0, **config):
    """A LlamaForCausalLM (untied head; Llama's kind of tokenizer: SentencePiece-style BPE,
    <unk> <s> </s> first, <s> before each text) or, with qwen2, a Qwen2ForCausalLM (tied,
    byte-level BPE, one end-of-text token last): grouped-query attention (2 key/value
    heads for 4), a rope base unlike the default; config: fields to override."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    if qwen2:
        eot = "<|endoftext|>"
        tok = _bpe([], (eot,))
        bos = eos = tok.token_to_id(eot)
        fast = PreTrainedTokenizerFast(tokenizer_object=tok._tokenizer, eos_token=eot,
                                       pad_token=eot)
    else:  # Llama's kind: SentencePiece-style BPE (no byte level), BOS before each text
        from tokenizers import SentencePieceBPETokenizer
        from tokenizers.processors import TemplateProcessing

        tok = SentencePieceBPETokenizer()
        tok.train_from_iterator(prose(), vocab_size=VOCAB, min_frequency=2,
                                show_progress=False, special_tokens=["<unk>", "<s>", "</s>"])
        bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
        tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A",
                                                           special_tokens=[("<s>", bos)])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok._tokenizer, bos_token="<s>",
                                       eos_token="</s>", unk_token="<unk>")
    fields = dict(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=48,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=64, rms_norm_eps=1e-5, initializer_range=INIT_RANGE,
                  rope_parameters={"rope_type": "default", "rope_theta": 500.0},
                  bos_token_id=bos, eos_token_id=eos, tie_word_embeddings=qwen2)
    fields.update(config)
    cfg = (Qwen2Config if qwen2 else LlamaConfig)(**fields)
    torch.manual_seed(seed)
    model = perturb((Qwen2ForCausalLM if qwen2 else LlamaForCausalLM)(cfg), seed).eval()
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return model


def save_neox(folder: Path, stablelm: bool = False, seed: int = 0, **config):
    """A GPTNeoXForCausalLM (parallel residual, a quarter of each head rotated, biases,
    untied) or, with stablelm, a StableLmForCausalLM (LayerNorms, partial rotary, SwiGLU,
    grouped heads, q/k/v biases); one end-of-text token first."""
    from transformers import (
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        PreTrainedTokenizerFast,
        StableLmConfig,
        StableLmForCausalLM,
    )

    eot = "<|endoftext|>"
    tok = _bpe([eot])
    eos = tok.token_to_id(eot)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok._tokenizer, bos_token=eot,
                                   eos_token=eot, unk_token=eot)
    rope = {"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5}
    fields = dict(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=48,
                  num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                  layer_norm_eps=1e-5, initializer_range=INIT_RANGE, rope_parameters=rope,
                  bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=False)
    if stablelm:
        fields.update(num_key_value_heads=2, use_qkv_bias=True)
    fields.update(config)
    cfg = (StableLmConfig if stablelm else GPTNeoXConfig)(**fields)
    torch.manual_seed(seed)
    model = perturb((StableLmForCausalLM if stablelm else GPTNeoXForCausalLM)(cfg), seed).eval()
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return model


def save_roberta(folder: Path, with_head: bool = True, seed: int = 0, **config):
    """A RobertaForMaskedLM (or, without head, a RobertaModel) with RoBERTa's special
    tokens: <s> <pad> </s> <unk> first, <mask> last."""
    from tokenizers.processors import RobertaProcessing
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaModel, RobertaTokenizerFast

    tok = _bpe(["<s>", "<pad>", "</s>", "<unk>"], ("<mask>",))
    tok._tokenizer.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    fast = RobertaTokenizerFast(tokenizer_object=tok._tokenizer)
    config = dict(dict(initializer_range=INIT_RANGE), **config)
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m energy_lm.hf.tiny_models",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("family", choices=("gpt2", "roberta", "llama", "qwen2", "neox",
                                           "stablelm"))
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty")
    from energy_lm.hf.dependency import require
    from energy_lm.hf.errors import BridgeError

    try:
        require()
    except BridgeError as err:
        parser.error(str(err))
    if args.family in ("llama", "qwen2"):
        save_llama(args.out, qwen2=args.family == "qwen2", seed=args.seed)
    elif args.family in ("neox", "stablelm"):
        save_neox(args.out, stablelm=args.family == "stablelm", seed=args.seed)
    else:
        (save_gpt2 if args.family == "gpt2" else save_roberta)(args.out, seed=args.seed)
    print(f"a tiny random {args.family} in {args.out}")


if __name__ == "__main__":
    main()
