"""Masked LM draws fresh masks every epoch with any number of data-loading workers
(energy_lm.patches.epoch_workers): fairseq's reused loader kept its workers' dataset at
the first epoch, so with --num-workers >= 1 every epoch repeated the first one's masks."""

import pytest
import torch

from conftest import build_model


def epoch_inputs(task, num_workers: int, epochs: int = 2):
    """{epoch: {example id: masked input}} of the first `epochs` epochs, through fairseq's
    own epoch iterator as fairseq-train makes it."""
    itr = task.get_batch_iterator(dataset=task.dataset("train"), max_sentences=8, seed=1,
                                  num_workers=num_workers, epoch=1,
                                  disable_iterator_cache=True)
    seen = {}
    for _ in range(epochs):
        epoch = itr.next_epoch_idx
        batches = itr.next_epoch_itr(shuffle=False)
        seen[epoch] = {int(i): tokens.clone() for batch in batches
                       for i, tokens in zip(batch["id"], batch["net_input"]["src_tokens"])}
    return seen


@pytest.fixture(scope="module")
def masked_task(data_bin):
    _, task = build_model(data_bin, "roberta_zero_clap_tiny", "--num-workers", "1")
    task.load_dataset("train")
    return task


def test_masks_change_between_epochs_and_do_not_depend_on_the_workers(masked_task):
    runs = {workers: epoch_inputs(masked_task, workers) for workers in (0, 1, 2)}
    for workers, epochs in runs.items():
        first, second = epochs[1], epochs[2]
        assert first.keys() == second.keys()
        same = sum(torch.equal(first[i], second[i]) for i in first)
        assert same == 0, f"{workers} workers: {same} of {len(first)} blocks kept epoch 1's masks"
    for epoch in (1, 2):
        for workers in (1, 2):
            assert all(torch.equal(runs[workers][epoch][i], runs[0][epoch][i])
                       for i in runs[0][epoch]), (workers, epoch)
