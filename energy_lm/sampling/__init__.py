"""Sampling: exact proposal samples from the LM (`proposal.sample_tokens`) and keyed
uniforms that make them a function of the example (`keyed_random`). Generation with an
energy LM (SIR) is model-level: energy_lm.inference.sir_sampler, .sir_generator, .decode_cache."""

from energy_lm.sampling.proposal import sample_tokens  # noqa: F401
