"""Each epoch's dataset reaches fairseq's data-loading workers.

fairseq builds an epoch's DataLoader once and, with `--num-workers` >= 1 (its default
is 1), reuses it and its persistent worker processes for every later epoch
(`EpochBatchIterator`, `reuse_dataloader`). A worker holds the copy of the dataset it
started with, so `dataset.set_epoch(e)` in the main process never reaches it:
`MaskTokensDataset` masks with (seed, epoch, index), and every later epoch repeats the
masks of the first (on `make demo` the training loss drops at each epoch boundary, and
the model memorises its masks). With 0 workers the main process's dataset serves the
batches and the masks change every epoch.

The patch builds a new loader for every epoch iterator when there are workers, so they
start from the dataset as set for that epoch: the same items with 0, 1 or N workers.
The cost is starting the workers once per epoch (fairseq's `reuse_dataloader=False`).
"""

from energy_lm.patches.replace import replace


def install() -> None:
    """Wrap `EpochBatchIterator._get_iterator_for_epoch` (idempotent)."""
    from fairseq.data.iterators import EpochBatchIterator

    replace(EpochBatchIterator, "_get_iterator_for_epoch", _fresh_loader_per_epoch)


def _fresh_loader_per_epoch(original):
    def _get_iterator_for_epoch(self, epoch, shuffle, fix_batches_to_gpus=False, offset=0):
        if self.num_workers > 0:
            # a reused loader's workers keep the dataset of the epoch they started in
            self.dataloader = None
        return original(self, epoch, shuffle, fix_batches_to_gpus=fix_batches_to_gpus,
                        offset=offset)

    return _get_iterator_for_epoch
