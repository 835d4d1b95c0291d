"""What both model families share to act as residual energy-based LMs: the energy
head and the two-stage paired forward (docs/methods.md sections 4 and 6).

    paired = model.paired_pass(src_tokens, segment_ids, sample_keys=keys)
    with paired.recording():
        features, _ = model(src_tokens, features_only=True)     # stage 1: data stream
    ...sample candidates from model.output_layer(features)...
    cand_features = model.candidate_features(paired, src_tokens, cand_tokens, cand_pos)

`candidate_features` returns the final (normed) state of each candidate token standing
at its data position; `model.energy_head` turns states into energies.
"""

import hashlib
import logging
import os
from typing import List, Optional

import torch
from torch import Tensor, nn

from energy_lm.inference.energy_pass import energy_pass
from energy_lm.models.stock_conversion import adapt_stock_checkpoint
from energy_lm.modules.energy_head import EnergyHead
from energy_lm.modules.paired_pass import PairedPass
from energy_lm.sampling.keyed_random import SampleKeys


def check_task_length(model, task) -> None:
    """A model with learned positions cannot take blocks longer than it learned: fairseq
    would silently drop every longer sample (fairseq-eval-lm then reports loss 0) or
    index past the position table. Refuse at build time, in one line."""
    try:
        wanted = task.max_positions()
    except (AttributeError, NotImplementedError):
        wanted = None
    if wanted is None:  # fairseq's language_modeling task reports none: its block length
        task_cfg = getattr(task, "cfg", None) or getattr(task, "args", None)
        wanted = getattr(task_cfg, "tokens_per_sample", None)
    limit = model.max_positions()
    if isinstance(wanted, int) and isinstance(limit, int) and wanted > limit:
        raise ValueError(
            f"this model learned {limit} positions but the task asks for {wanted} "
            f"(--tokens-per-sample / --max-positions): learned absolute positions do not "
            f"extrapolate; evaluate at <= {limit} tokens, or train an ALiBi arch "
            f"(*_alibi_*, *_zero_clap_*), which evaluates longer inputs")


class DictionaryMismatchError(ValueError):
    pass


# The checkpoint format of the energy models, saved as the buffer `energy_lm_format` (as
# fairseq's own models keep a `version` buffer): 1 = energy head, dictionary fingerprint
# and (learned positions) the energy position row. A checkpoint without it was written
# before it existed or by stock fairseq, and only such a checkpoint is upgraded.
FORMAT_VERSION = 1
FORMAT_KEY = "energy_lm_format"


def checkpoint_format(state_dict, prefix: str) -> int:
    """The format a state dict was saved in (0: before the buffer existed, or stock)."""
    saved = state_dict.get(prefix + FORMAT_KEY)
    return int(saved.reshape(-1)[0]) if saved is not None else 0


def dictionary_fingerprint(dictionary) -> Tensor:
    """sha256 of the dictionary's symbols in order, as a (32,) uint8 tensor: two
    dictionaries of one size with two symbols swapped differ here."""
    digest = hashlib.sha256("\n".join(dictionary.symbols).encode("utf-8")).digest()
    return torch.tensor(list(digest), dtype=torch.uint8)


def attach_dictionary(model, task) -> None:
    """Make the task's dictionary part of the model: its fingerprint is a buffer, saved
    in every checkpoint and compared when one is loaded (`load_state_dict`)."""
    data = getattr(getattr(task, "cfg", None) or getattr(task, "args", None), "data", None)
    source = os.path.join(str(data).split(os.pathsep)[0], "dict.txt") if data else "the dictionary"
    model.register_buffer("dictionary_fingerprint", dictionary_fingerprint(task.source_dictionary))
    model.energy_lm_dictionary_source = source


def _data_parallel() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and \
        torch.distributed.get_world_size() > 1


class EnergyModelMixin:
    """Mixed into a fairseq model class that has `self.energy_head` and implements
    `_trunk()` (the encoder/decoder with `attention_pattern`, `candidate_features`): what
    makes it an `energy_lm.inference.protocol.EnergyLM`, the one interface scoring and
    generation use. Each family sets `energy_family` (causal or masked)."""

    energy_head: EnergyHead
    energy_family: str

    def _trunk(self):
        raise NotImplementedError

    @property
    def trunk(self):
        """The encoder/decoder that holds the token embedding, the attention pattern and
        the candidate stream (RoBERTa's sentence encoder, the LM's decoder)."""
        return self._trunk()

    def _head_modules(self) -> List[nn.Module]:
        """The heads a criterion may leave unused: the energy head (cross_entropy, cwt)
        and the output head (cwt). Models add their output head."""
        return [self.energy_head]

    def upgrade_older_format(self, state_dict, prefix: str) -> None:
        """What a family adds to a checkpoint of an older format (see FORMAT_VERSION)."""

    def forward(self, src_tokens, *args, **kwargs):
        limit = self.max_positions()
        if src_tokens.size(1) > limit:
            raise ValueError(
                f"input of {src_tokens.size(1)} tokens is longer than the {limit} positions "
                f"this model learned (learned absolute positions do not extrapolate; the ALiBi "
                f"archs, *_alibi_* and *_zero_clap_*, evaluate longer inputs)")
        out = super().forward(src_tokens, *args, **kwargs)
        if self.training and torch.is_grad_enabled() and _data_parallel():
            # DistributedDataParallel requires every parameter to get a gradient in every
            # step ("did not receive grad"); a criterion that leaves a head unused breaks
            # that, and DDP's find_unused_parameters cannot serve MonArc (its candidate
            # pass runs the energy head outside forward: "marked ready twice"). So the heads
            # enter the output with weight 0: exact zero gradients, the output unchanged.
            anchor = sum(p.sum() for head in self._head_modules() for p in head.parameters())
            out = (out[0] + 0.0 * anchor, *out[1:])
        return out

    def candidate_stream_problem(self) -> Optional[str]:
        """Why the candidate stream cannot run with this model's settings (one phrase),
        or None (read by energy_lm.inference.protocol.require)."""
        trunk = self._trunk()
        if getattr(getattr(trunk, "args", None), "checkpoint_activations", False):
            return ("the candidate stream (monarc/nce) does not work with "
                    "--checkpoint-activations: checkpointed layers keep no graph for the "
                    "recorded data keys/values")
        return None

    def paired_pass(self, src_tokens: Tensor, segment_ids: Optional[Tensor] = None, *,
                    backend: str = "auto",
                    sample_keys: Optional[SampleKeys] = None) -> PairedPass:
        """The description of one batch's paired forward (energy_lm.modules.paired_pass)."""
        problem = self.candidate_stream_problem()
        if problem is not None:
            raise ValueError(problem)
        trunk = self._trunk()
        return PairedPass(owner=trunk.attention_pattern,
                          key_padding_mask=src_tokens.eq(trunk.padding_idx),
                          segment_ids=segment_ids, backend=backend, sample_keys=sample_keys)

    def energy_pass(self, src_tokens: Tensor, targets: Tensor, candidates=None, **options):
        """One batch of the family's task (src_tokens, targets (B, T)) scored in one call:
        at every scored position the LM's proposal, the data token's energy and the
        candidates' (given (B, K, S), chosen by a function of the proposal logits, or
        num_samples draws from q). Returns an `energy_lm.inference.energy_output.EnergyOutput`,
        the same type for both families; options as `energy_lm.inference.energy_pass.energy_pass`
        (first_target f scores targets[:, f - 1:] only; segment_ids, packed documents,
        are an option of a causal model). A criterion calls that function with the model
        fairseq hands it instead (under DistributedDataParallel, the wrapper)."""
        return energy_pass(self, src_tokens, targets, candidates, **options)

    def candidate_features(self, paired: PairedPass, src_tokens: Tensor, cand_tokens: Tensor,
                           cand_pos: Tensor, pre_norm: bool = False) -> Tensor:
        """Stage 2: cand_tokens, cand_pos (B, M) after `paired.recording()` ran the data
        stream. Returns the candidates' final states (B, M, C), taken before the trunk's
        final norm with pre_norm (what the seed energy head reads)."""
        with paired.candidates(cand_pos):
            return self._trunk().candidate_features(src_tokens, cand_tokens, cand_pos,
                                                    pre_norm=pre_norm)

    def load_state_dict(self, state_dict, *args, **kwargs):
        """fairseq's load, with one line when the checkpoint's vocabulary is not the data's
        (torch lists every mismatching tensor over many lines), in size or in symbols."""
        own = self._trunk().embed_tokens.weight
        for key, value in state_dict.items():
            if key.endswith("embed_tokens.weight") and value.dim() == 2 and \
                    value.size(0) != own.size(0) and value.size(1) == own.size(1):
                raise DictionaryMismatchError(
                    f"the checkpoint's vocabulary has {value.size(0)} symbols but this data's "
                    f"dict.txt has {own.size(0)}: the data was binarized with another "
                    f"dictionary than the one the model was trained on")
        mine = getattr(self, "dictionary_fingerprint", None)
        theirs = state_dict.get("dictionary_fingerprint")
        if mine is not None and theirs is not None and not torch.equal(mine, theirs.to(mine)):
            raise DictionaryMismatchError(
                f"the checkpoint was trained with another dictionary than "
                f"{getattr(self, 'energy_lm_dictionary_source', 'this data')} (fingerprint "
                f"{bytes(theirs.tolist())[:4].hex()} vs {bytes(mine.tolist())[:4].hex()}: other "
                f"symbols or order); use the data-bin the model was trained on")
        return super().load_state_dict(state_dict, *args, **kwargs)

    def register_format(self) -> None:
        """The format buffer every checkpoint of this model carries (FORMAT_VERSION)."""
        self.register_buffer(FORMAT_KEY, torch.tensor([FORMAT_VERSION]))

    def upgrade_state_dict_named(self, state_dict, name):
        """Checkpoints of an older format (written before the energy head, the dictionary
        fingerprint or the format buffer existed, stock fairseq ones included) load with
        E = 0 (and without a dictionary check); a stock one is converted where positions
        or head differ (energy_lm.models.stock_conversion). A checkpoint of this format is
        loaded as it is; one of a newer format is refused."""
        super().upgrade_state_dict_named(state_dict, name)
        prefix = name + "." if name else ""
        saved = checkpoint_format(state_dict, prefix)
        if saved > FORMAT_VERSION:
            raise ValueError(f"the checkpoint was written in energy_lm checkpoint format "
                             f"{saved}, newer than this package's {FORMAT_VERSION}: upgrade "
                             f"energy_lm to load it")
        if saved < FORMAT_VERSION:
            adapt_stock_checkpoint(state_dict, prefix, self, self._trunk())
            if getattr(self, "dictionary_fingerprint", None) is not None:
                state_dict.setdefault(prefix + "dictionary_fingerprint",
                                      self.dictionary_fingerprint.clone())
            self.upgrade_older_format(state_dict, prefix)
        state_dict[prefix + FORMAT_KEY] = torch.tensor([FORMAT_VERSION])
        head_prefix = prefix + "energy_head."
        theirs = {k[len(head_prefix):] for k in state_dict if k.startswith(head_prefix)}
        if theirs and theirs != set(self.energy_head.state_dict()):
            # a checkpoint trained with another kind of energy head: continuing it with
            # this one (an adaptation) starts this head afresh, the trunk as it was
            logging.getLogger(__name__).warning(
                "the checkpoint's energy head has other parameters (%s) than this model's "
                "%s head: starting the %s head afresh (E = 0)", ", ".join(sorted(theirs)),
                self.energy_head.kind, self.energy_head.kind)
            for key in [k for k in state_dict if k.startswith(head_prefix)]:
                del state_dict[key]
        # a newly built head's values: E = 0 for every head (linear and rich start all
        # zero; the seed head's context factor is zero, its token factor is not, so that
        # it can learn)
        for key, value in self.energy_head.initial_state().items():
            state_dict.setdefault(prefix + "energy_head." + key, value)
