from energy_lm.criterions import cwt, residual_energy  # noqa: F401  (register the criterions)
