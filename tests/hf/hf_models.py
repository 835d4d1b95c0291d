"""What the bridge tests share: tiny random Hugging Face models built here, no downloads
(energy_lm.hf.tiny_models: perturbed norms and biases), imported once per module."""

from pathlib import Path

import pytest

from energy_lm.hf.tiny_models import (  # noqa: F401
    perturb, save_gpt2, save_llama, save_neox, save_roberta)


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


@pytest.fixture(scope="module")
def llama_import(tmp_path_factory):
    """A LlamaForCausalLM (untied, grouped heads, rope base 500) imported."""
    from energy_lm.hf.from_hf import convert

    root = tmp_path_factory.mktemp("llama")
    source = save_llama(root / "src")
    convert(str(root / "src"), root / "out")
    return source, root / "src", root / "out"


@pytest.fixture(scope="module")
def qwen2_import(tmp_path_factory):
    """A Qwen2ForCausalLM (tied, q/k/v biases, grouped heads) imported."""
    from energy_lm.hf.from_hf import convert

    root = tmp_path_factory.mktemp("qwen2")
    source = save_llama(root / "src", qwen2=True)
    convert(str(root / "src"), root / "out")
    return source, root / "src", root / "out"


@pytest.fixture(scope="module")
def neox_import(tmp_path_factory):
    """A GPTNeoXForCausalLM (parallel residual, half of each head rotated) imported."""
    from energy_lm.hf.from_hf import convert

    root = tmp_path_factory.mktemp("neox")
    source = save_neox(root / "src")
    convert(str(root / "src"), root / "out")
    return source, root / "src", root / "out"


@pytest.fixture(scope="module")
def stablelm_import(tmp_path_factory):
    """A StableLmForCausalLM (LayerNorms, partial rotary, grouped heads, q/k/v biases)."""
    from energy_lm.hf.from_hf import convert

    root = tmp_path_factory.mktemp("stablelm")
    source = save_neox(root / "src", stablelm=True)
    convert(str(root / "src"), root / "out")
    return source, root / "src", root / "out"
