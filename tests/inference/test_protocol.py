"""The one capability check (energy_lm.inference.protocol.require): both families are
EnergyLMs of their kind, stock fairseq models are not, and each refusal is one line
naming who asked and why."""

import pytest

from conftest import build_model
from energy_lm.inference.protocol import CAUSAL, MASKED, EnergyLM, family, missing, require


def test_both_families_serve_what_they_are_and_refuse_the_rest(data_bin):
    causal, _ = build_model(data_bin, "transformer_lm_clap_tiny", task="language_modeling")
    masked, _ = build_model(data_bin, "roberta_clap_tiny")
    assert isinstance(causal, EnergyLM) and isinstance(masked, EnergyLM)
    assert (family(causal), family(masked)) == (CAUSAL, MASKED)
    assert missing(causal, "energy", CAUSAL) is None
    assert missing(masked, "energy", MASKED) is None
    with pytest.raises(ValueError) as err:
        require(masked, CAUSAL, "energy", user="--sir-candidates")
    line = str(err.value)
    assert "\n" not in line and line.startswith("--sir-candidates needs a causal model")
    assert line.endswith("RobertaEnergyModel is a masked LM")
    assert missing(causal, MASKED) == f"{type(causal).__name__} is not a masked LM"
    with pytest.raises(ValueError, match="unknown capability 'cache'"):
        missing(causal, "cache")


def test_a_stock_model_has_no_energy_and_settings_the_stream_cannot_serve_are_named(data_bin):
    stock, _ = build_model(data_bin, "transformer_lm", task="language_modeling")
    assert family(stock) is None and not isinstance(stock, EnergyLM)

    class Refused(Exception):
        pass

    with pytest.raises(Refused, match="^--criterion monarc needs a model with a candidate "
                                      "stream and an energy head .*; TransformerLanguageModel "
                                      "has no energy head"):
        require(stock, "energy", user="--criterion monarc", error=Refused)
    assert missing(stock, CAUSAL) is None  # a causal LM all the same
    checkpointed, _ = build_model(data_bin, "transformer_lm_clap_tiny", "--checkpoint-activations",
                                  task="language_modeling")
    assert "--checkpoint-activations" in missing(checkpointed, "energy")
