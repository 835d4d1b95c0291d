"""Everything energy_lm changes in fairseq (and numpy, torch), in one ordered list.

`PATCHES` says, for each module of this room, what it replaces (the dotted names its
`install()` sets, each through `replace.replace`) and why, grouped as fixes of fairseq
on a modern stack or of its bugs, safety of checkpoints and inputs, and features that
extend fairseq's own tools. `install_all()` (called once by `energy_lm/__init__.py`)
installs them in this order; installing twice changes nothing. docs/compatibility.md
carries the same list, and tests/patches/test_patch_list.py holds the three equal: the
list here, what an import of energy_lm installed, and the docs' table.
"""

import importlib
from dataclasses import dataclass
from typing import Tuple

FIX = "fix"          # fairseq 0.12 on a modern stack, or a fairseq bug
SAFETY = "safety"    # checkpoints and inputs: whole, readable, checked, one-line errors
FEATURE = "feature"  # what fairseq's own tools gain


@dataclass(frozen=True)
class Patch:
    module: str                  # energy_lm.patches.<module>
    group: str                   # FIX, SAFETY or FEATURE
    replaces: Tuple[str, ...]    # the dotted names it sets (or registers)
    why: str


_TRAINER = "fairseq.trainer.Trainer"
_CKPT = "fairseq.checkpoint_utils"

PATCHES: Tuple[Patch, ...] = (
    Patch("compat", FIX, (
        "torch.serialization.add_safe_globals", "numpy.compat",
        "fairseq.models.distributed_fairseq_model.DistributedDataParallel",
        "fairseq.data.iterators.BackgroundConsumer.run"),
        "torch >= 2.6 loads weights only (fairseq's pickled Namespace and numpy values "
        "allowed, nothing else); numpy 2 removed np.compat; DDP refuses device ids for "
        "a CPU module; a prefetch thread still in torch at exit aborted a finished run"),
    Patch("epoch_workers", FIX, (
        "fairseq.data.iterators.EpochBatchIterator._get_iterator_for_epoch",),
        "a reused loader's workers kept the first epoch's dataset: masked LM repeated "
        "its masks every epoch"),
    Patch("resume_batches", FIX, ("fairseq.tasks.fairseq_task.FairseqTask.get_batch_iterator",),
        "a causal run resumed after epoch 1 grouped its blocks into other batches"),
    Patch("shared_cpu", FIX, (f"{_TRAINER}.__init__",),
        "torch's spinning threads beside another process made a CPU run ~10x slower"),
    Patch("checkpoint_errors", SAFETY, (f"{_CKPT}.load_checkpoint_to_cpu",),
        "an unreadable or refused checkpoint is one line naming the file"),
    Patch("checkpoint_safety", SAFETY, (
        f"{_CKPT}.torch_persistent_save", f"{_CKPT}.PathManager", f"{_CKPT}.save_checkpoint",
        f"{_CKPT}.load_model_ensemble_and_task", f"{_TRAINER}.load_checkpoint",
        f"{_TRAINER}.save_checkpoint", f"{_TRAINER}.train_step", f"{_TRAINER}.valid_step"),
        "checkpoints written whole or not at all, a resume from the newest readable "
        "state, no diverged state saved, the flags named when a loss is not finite"),
    Patch("data_checks", SAFETY, ("fairseq.data.data_utils.load_indexed_dataset",),
        "an empty or truncated binarized split, or ids beyond its dictionary, is one line"),
    Patch("optim_groups", FEATURE, ("fairseq.optim.build_optimizer",),
        "parameters marked so (CLAP's beta) get no weight decay"),
    Patch("update_number", FEATURE, (f"{_TRAINER}.set_num_updates",),
        "the criterion learns the update number (its keyed candidates)"),
    Patch("sir_generation", FEATURE, (
        "fairseq.options.add_generation_args",
        "fairseq.dataclass.utils.convert_namespace_to_omegaconf",
        "fairseq.tasks.fairseq_task.FairseqTask.build_generator"),
        "--sir-candidates, --sir-print-weights, --sir-attention-backend in fairseq's "
        "generators"),
    Patch("valid_warning", FEATURE, ("fairseq.tasks.fairseq_task.FairseqTask.post_validate",),
        "one warning when a validation's ELM is above its LM beyond its error"),
    Patch("elm_fill_mask", FEATURE, (
        "fairseq.models.roberta.hub_interface.RobertaHubInterface.fill_mask",),
        "fill_mask(..., scoring='elm') ranks fillings by the ELM"),
)


def install_all() -> None:
    for patch in PATCHES:
        importlib.import_module(f"energy_lm.patches.{patch.module}").install()
