"""Scoring and generation with a residual energy-based LM, for any model that implements
`protocol.EnergyLM` (both families of energy_lm.models do): the energy pass (one entry,
`energy_pass.energy_pass`, over `causal_pass` and `masked_pass`), scored batches and
log Z (exact and its estimate's candidates), SIR sampling (`sir_sampler`, and
`sir_generator` inside fairseq's SequenceGenerator, one resampling step in
`sir_resample`) with its key/value cache (`decode_cache`), ELM fill-mask (`elm_fill`) and
the causal models' hub interface (`hub`). It never imports energy_lm.models."""
