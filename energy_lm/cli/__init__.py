"""The console scripts (`energy-lm-eval-elm`, `-fill-mask`, `-add-head`, `-plot`) and
their shared one-line error reporting (`errors`). `energy-lm-prepare` lives with the
corpora it builds (`energy_lm.data.prepare`)."""
