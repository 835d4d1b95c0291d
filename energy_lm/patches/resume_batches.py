"""A run resumed after its first epoch trains the batches the uninterrupted run trained.

fairseq builds an epoch iterator's batches once, when the iterator is created, from the
dataset's order under the numpy seed `seed + epoch`, and reuses the iterator (and those
batches, reshuffled per epoch) for every later epoch. A run creates its iterator at the
epoch it starts in: epoch 1 for a fresh run, epoch k for one resumed in epoch k, so a
causal LM resumed in epoch 2 (whose dataset's order is a permutation drawn under that
seed) grouped its blocks into other batches than the run it resumed: its losses
differed from the first update after the resume (measured:
tests/e2e/test_resume_every_family.py). The patch builds such a reused iterator's
batches as epoch 1 builds them, whatever epoch the run starts in; the iterator still
starts at its own epoch. Iterators fairseq does not reuse (sharded data, a disabled
cache, `--rebuild-batches`) are built per epoch in every run, and are left alone.
"""

import inspect

from energy_lm.patches.replace import replace


def install() -> None:
    """Wrap `FairseqTask.get_batch_iterator` (idempotent)."""
    from fairseq.tasks import FairseqTask

    replace(FairseqTask, "get_batch_iterator", _first_epochs_batches)


def _first_epochs_batches(original):
    signature = inspect.signature(original)

    def get_batch_iterator(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        given = bound.arguments
        epoch, dataset = given["epoch"], given["dataset"]
        reused = (not given["disable_iterator_cache"] and not given["update_epoch_batch_itr"]
                  and self.can_reuse_epoch_itr(dataset)
                  and not getattr(self.cfg, "rebuild_batches", False))
        if epoch <= 1 or not reused or dataset in self.dataset_to_epoch_iter:
            return original(*bound.args, **bound.kwargs)
        given["epoch"] = 1  # the batches of the run's first epoch
        itr = original(*bound.args, **bound.kwargs)
        dataset.set_epoch(epoch)
        itr.epoch = epoch  # it starts where the run is
        return itr

    get_batch_iterator.__doc__ = original.__doc__
    return get_batch_iterator
