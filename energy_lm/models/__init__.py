from energy_lm.models import roberta_energy, transformer_lm_energy  # noqa: F401
