from energy_lm.tasks import energy_language_modeling  # noqa: F401
