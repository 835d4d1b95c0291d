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


def _imported(tmp_path_factory, name: str, save):
    """(source model, its folder, the imported folder) of the model `save` writes."""
    from energy_lm.hf.from_hf import convert

    root = tmp_path_factory.mktemp(name)
    source = save(root / "src")
    convert(str(root / "src"), root / "out")
    return source, root / "src", root / "out"


@pytest.fixture(scope="module")
def llama_import(tmp_path_factory):
    """A LlamaForCausalLM (untied, grouped heads, rope base 500) imported."""
    return _imported(tmp_path_factory, "llama", save_llama)


@pytest.fixture(scope="module")
def qwen2_import(tmp_path_factory):
    """A Qwen2ForCausalLM (tied, q/k/v biases, grouped heads) imported."""
    return _imported(tmp_path_factory, "qwen2", lambda path: save_llama(path, qwen2=True))


@pytest.fixture(scope="module")
def neox_import(tmp_path_factory):
    """A GPTNeoXForCausalLM (parallel residual, half of each head rotated) imported."""
    return _imported(tmp_path_factory, "neox", save_neox)


@pytest.fixture(scope="module")
def stablelm_import(tmp_path_factory):
    """A StableLmForCausalLM (LayerNorms, partial rotary, grouped heads, q/k/v biases)."""
    return _imported(tmp_path_factory, "stablelm", lambda path: save_neox(path, stablelm=True))
