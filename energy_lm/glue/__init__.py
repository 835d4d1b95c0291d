"""GLUE fine-tuning with fairseq's `sentence_prediction` task, one module per step:

    tasks       the eight tasks as data: files, columns, labels, dev metrics
    reader      one GLUE .tsv file -> examples, with one-line errors
    fixtures    small GLUE-format tasks from the standard library's docstrings (offline)
    preprocess  task folders -> BPE -> fairseq-preprocess -> OUT/<TASK>-bin
    finetune    fine-tune one task with fairseq-hydra-train and the task's YAML
    collect     the runs' dev scores as one table (MNLI ... STS-B, Avg)

Each runs as `python -m energy_lm.glue.<module> --help`. Configs and a walk-through:
energy_lm/configs/glue/ (`energy-lm-config-dir glue`).
"""
