"""The bridge to Hugging Face transformers, both ways: `energy-lm-from-hf` (a
`save_pretrained` folder -> fairseq's hub layout) and `energy-lm-to-hf` (a checkpoint
-> a folder stock transformers loads, the energy head beside it). transformers is an
optional dependency: `dependency.require()` says in one line how to install it."""
