"""The energy models' checkpoint format buffer: a checkpoint says which format it was
written in, only an older one is upgraded (the energy position row, E = 0, the
dictionary fingerprint), and a newer one is refused in one line."""

import pytest
import torch

from conftest import build_model
from energy_lm.models.energy_model import FORMAT_KEY, FORMAT_VERSION


@pytest.fixture(scope="module")
def learned_lm(data_bin):
    return build_model(data_bin, "transformer_lm_clap_tiny", task="language_modeling")[0]


def test_every_checkpoint_carries_the_format_it_was_written_in(data_bin, learned_lm):
    masked, _ = build_model(data_bin, "roberta_zero_clap_tiny")
    for model in (learned_lm, masked):
        assert model.state_dict()[FORMAT_KEY].tolist() == [FORMAT_VERSION]


def test_a_checkpoint_of_this_format_is_loaded_as_it_is(learned_lm):
    """A position table one row short is an upgrade only for a checkpoint of an older
    format; in this format it is a wrong checkpoint, and loading it fails."""
    state = learned_lm.state_dict()
    key = "decoder.embed_positions.weight"
    state[key] = state[key][:-1].clone()
    with pytest.raises(RuntimeError, match="size mismatch for decoder.embed_positions.weight"):
        learned_lm.load_state_dict(state, strict=True)


def test_a_newer_format_is_refused_in_one_line(learned_lm):
    state = learned_lm.state_dict()
    state[FORMAT_KEY] = torch.tensor([FORMAT_VERSION + 1])
    with pytest.raises(ValueError, match=f"format {FORMAT_VERSION + 1}, newer than") as info:
        learned_lm.load_state_dict(state, strict=True)
    assert "\n" not in str(info.value)
