"""Sampling: exact proposal samples from the LM (`proposal.sample_tokens`), keyed
uniforms that make them a function of the example (`keyed_random`), and energy-based
generation by sampling-importance-resampling (`sir.sir_sample`, served by the data
stream's key/value cache of `decode_cache`)."""

from energy_lm.sampling.proposal import sample_tokens  # noqa: F401
from energy_lm.sampling.sir import sir_sample  # noqa: F401
