"""Everything that changes fairseq's own behaviour, each in one small tested module:
`compat` (a modern stack), `checkpoint_errors` and `checkpoint_safety` (reading and
writing checkpoints), `data_checks` (input validation), `optim_groups` (no weight decay
for CLAP's beta), `update_number` (the update number reaches the criterion), `epoch_workers` (each
epoch's dataset, its masks included, reaches the data-loading workers), `resume_batches`
(a run resumed after epoch 1 trains the uninterrupted run's batches), `shared_cpu` (a
CPU run's threads fit the cores other processes leave free).
`energy_lm/__init__.py` applies them once."""
