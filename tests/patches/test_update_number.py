"""fairseq's trainer hands its update number to the MonArc/NCE criterion (the key of the
candidates' samples), through a real `fairseq.trainer.Trainer`."""

import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.trainer import Trainer

from conftest import SMALL_DEC


def test_the_criterion_keys_each_step_with_the_trainers_update_number(data_bin, monkeypatch):
    argv = [str(data_bin), "--task", "language_modeling", "--arch", "transformer_lm_clap_tiny",
            "--criterion", "monarc", "--tokens-per-sample", "32", "--batch-size", "2",
            "--optimizer", "adam", "--lr", "1e-3", "--cpu", "--seed", "3", *SMALL_DEC]
    cfg = convert_namespace_to_omegaconf(
        options.parse_args_and_arch(options.get_training_parser(), argv))
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    model, criterion = task.build_model(cfg.model), task.build_criterion(cfg.criterion)
    trainer = Trainer(cfg, task, model, criterion)
    task.load_dataset("train")
    itr = task.get_batch_iterator(dataset=task.dataset("train"), max_sentences=2, seed=1)
    batches = iter(itr.next_epoch_itr(shuffle=False))

    seen = []
    keys_of = type(criterion)._sample_keys
    monkeypatch.setattr(type(criterion), "_sample_keys",
                        lambda self, sample: seen.append(keys_of(self, sample).update) or
                        keys_of(self, sample))
    for _ in range(3):
        trainer.train_step([next(batches)])
    assert seen == [0, 1, 2] and trainer.get_num_updates() == 3
    trainer.set_num_updates(40)  # as when a checkpoint is loaded
    trainer.train_step([next(batches)])
    assert seen[-1] == 40
