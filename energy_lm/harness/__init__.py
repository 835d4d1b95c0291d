"""lm-evaluation-harness on energy_lm checkpoints (the harness is an optional import:
`energy_lm.harness.model` registers the harness model `energy_lm`)."""
