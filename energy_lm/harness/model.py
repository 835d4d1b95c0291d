"""The lm-evaluation-harness model `energy_lm`: a causal checkpoint of this package (or a
stock fairseq `transformer_lm`) scored by q or by its ELM.

    import lm_eval
    from energy_lm.harness.model import EnergyLMEval
    lm = EnergyLMEval(path="runs/lm-nce/checkpoint_best.pt", data="corpus/data-bin",
                      scoring="elm", log_z="exact")
    lm_eval.simple_evaluate(model=lm, tasks=[...])

or, through the harness's registry, `--model energy_lm --model_args path=...,data=...`.
Further keyword arguments go to fairseq's `from_pretrained` (e.g. `bpe=gpt2`).

Text is encoded as `from_pretrained` encodes it (the checkpoint's BPE and dictionary); a
document starts after `</s>`, as in the binarized data. A context longer than the
model's block (the task's --tokens-per-sample) is cut from the left, as fairseq-eval-lm
cuts its --context-window. `loglikelihood_rolling` scores a text in disjoint windows of
that block, each after one token of context: the windows of a split in
`fairseq-eval-lm` / `energy-lm-eval-elm` blocks.

The model is a `TemplateLM`: the harness splits each request into context and
continuation tokens (its `_encode_pair`: spaces ending the context go with the
continuation) and hands them to `_loglikelihood_tokens`, which scores them in windows.
"""

import logging
import math
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from tqdm import tqdm

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from energy_lm.harness.scoring import LOG_Z_MODES, score
from energy_lm.inference.protocol import is_masked_model, require


logger = logging.getLogger("energy_lm.harness")


class HarnessArgumentError(ValueError):
    pass


def _flag(value) -> str:
    return str(value).strip().lower()


@register_model("energy_lm")
class EnergyLMEval(TemplateLM):
    def __init__(self, path: str = None, data: str = None, scoring: str = "lm",
                 log_z: str = "exact", topk: int = 16, num_samples: int = 16,
                 batch_size: int = 1, max_batch_size: Optional[int] = None,
                 device: Optional[str] = "cpu", dtype: str = "float32", seed: int = 0,
                 sir_candidates: int = 1, **load_kwargs):
        super().__init__()
        if not path or not data:
            raise HarnessArgumentError("model_args needs path=CHECKPOINT and data=DATA_BIN")
        scoring, log_z = _flag(scoring), _flag(log_z)
        if scoring not in ("lm", "elm"):
            raise HarnessArgumentError(f"scoring must be lm or elm, got {scoring!r}")
        if log_z not in LOG_Z_MODES:
            raise HarnessArgumentError(f"log_z must be exact or estimate, got {log_z!r}")
        if str(batch_size).startswith("auto") or max_batch_size is not None:
            raise HarnessArgumentError(
                f"batch_size={batch_size}"
                f"{'' if max_batch_size is None else f', max_batch_size={max_batch_size}'}: "
                f"give batch_size=N, the windows scored together (no automatic size: a "
                f"CPU run has no memory limit to probe, and a window's figures do not "
                f"depend on its batch)")
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise HarnessArgumentError(f"batch_size must be >= 1, got {batch_size}")
        checkpoint = Path(path)
        if not checkpoint.is_file():
            raise HarnessArgumentError(f"path: checkpoint not found: {checkpoint}")
        if not (Path(data) / "dict.txt").is_file():
            raise HarnessArgumentError(f"data: no dict.txt in {data}")
        if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            device = "cpu"  # the harness's --device defaults to cuda
        from fairseq import hub_utils

        loaded = hub_utils.from_pretrained(str(checkpoint.parent), checkpoint.name, str(data),
                                           **self._bpe_defaults(Path(data), load_kwargs))
        self.hub = hub_utils.GeneratorHubInterface(loaded["args"], loaded["task"],
                                                   loaded["models"])
        # fairseq's hub makes the model inference-only: its eval() then returns None
        self.model = self.hub.models[0].to(device=device, dtype=getattr(torch, dtype))
        self.model.eval()
        self.dictionary = loaded["task"].source_dictionary
        # a masked checkpoint is scored by pseudo-log-likelihood: each token masked in turn
        self.masked = is_masked_model(self.model)
        self.mask_idx = getattr(loaded["task"], "mask_idx", None)
        if self.masked and self.mask_idx is None:
            raise HarnessArgumentError("path: a masked model whose task has no <mask> symbol")
        if scoring == "elm":
            require(self.model, "energy", user="scoring=elm", error=HarnessArgumentError)
        self.scoring, self.log_z = scoring, log_z
        self.sir_candidates = int(sir_candidates)
        self.topk, self.num_samples = int(topk), int(num_samples)
        self.generator = torch.Generator().manual_seed(int(seed))
        task_cfg = loaded["args"].task
        self.max_length = int(getattr(task_cfg, "tokens_per_sample", 0) or
                              self.model.max_positions())
        if self.masked:  # the block holds <s> ... </s>
            self.max_length = min(self.max_length, self.model.max_positions()) - 2
        self._device = torch.device(device)

    @staticmethod
    def _bpe_defaults(data: Path, kwargs: dict) -> dict:
        """The embedded corpus's byte-level BPE when DATA_BIN has its files (as
        energy-lm-fill-mask does), else an imported tokenizer's tokenizer.json (data
        prepared with --tokenizer-from); otherwise what the caller gave."""
        if "bpe" in kwargs:
            return kwargs
        if (data / "vocab.json").is_file() and (data / "merges.txt").is_file():
            return dict(kwargs, bpe="energy_byte_bpe", bpe_vocab=str(data / "vocab.json"),
                        bpe_merges=str(data / "merges.txt"))
        if (data / "tokenizer.json").is_file() and (data / "hf-vocab.json").is_file():
            return dict(kwargs, bpe="energy_hf_tokenizer",
                        hf_tokenizer_json=str(data / "tokenizer.json"))
        return kwargs

    @property
    def device(self):
        return self._device

    # ---------------------------------------------------------------- tokens
    @property
    def eot_token_id(self) -> int:
        """</s>: a document of the binarized data starts after it (the harness's prefix
        before an empty context)."""
        return self.dictionary.eos()

    def tok_encode(self, text: str, add_special_tokens: Optional[bool] = None,
                   **kwargs) -> List[int]:
        """The checkpoint's BPE and dictionary, no special symbols (a window adds its
        </s> itself)."""
        if not text:
            return []
        bpe = self.hub.bpe.encode(text) if self.hub.bpe is not None else text
        return self.dictionary.encode_line(bpe, append_eos=False,
                                           add_if_not_exist=False).long().tolist()

    def _window(self, context: List[int], continuation: List[int]) -> Tuple[List[int], List[int]]:
        """(src, targets) of one scored window: </s> + context + continuation, cut from
        the left to the block length; only the continuation's targets are scored."""
        seq = ([self.dictionary.eos()] + context + continuation)[-(self.max_length + 1):]
        targets = seq[1:]
        unscored = len(targets) - len(continuation)
        return seq[:-1], [self.dictionary.pad()] * unscored + targets[unscored:]

    def _masked_rows(self, context: List[int], continuation: List[int]):
        """Pseudo-log-likelihood: <s> context continuation </s> (the context cut from the
        left to fit), one row per continuation token with that token masked."""
        d = self.dictionary
        room = max(self.max_length - len(continuation), 0)
        seq = [d.bos()] + context[len(context) - room:] + continuation + [d.eos()]
        first = len(seq) - 1 - len(continuation)
        rows = []
        for i in range(first, len(seq) - 1):
            src, targets = list(seq), [d.pad()] * len(seq)
            src[i], targets[i] = self.mask_idx, seq[i]
            rows.append((src, targets))
        return rows

    def _pieces(self, context: List[int], continuation: List[int]):
        """The windows of a continuation: pieces of at most the block, each after as
        much of what precedes it as the window holds (masked: one row per token)."""
        if self.masked:
            return [row for start in range(0, len(continuation), self.max_length)
                    for row in self._masked_rows(context + continuation[:start],
                                                 continuation[start:start + self.max_length])]
        return [self._window(context + continuation[:start],
                             continuation[start:start + self.max_length])
                for start in range(0, len(continuation), self.max_length)]

    def _score_windows(self, windows, desc: str, disable_tqdm: bool):
        """[(log-likelihood, greedy)] of every window, in batches of --batch_size windows
        of similar length (longest first); a window's figures do not depend on its batch."""
        pad = self.dictionary.pad()
        order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))
        results: List[Optional[Tuple[float, bool]]] = [None] * len(windows)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in tqdm(batches, disable=disable_tqdm, desc=desc):
            width = max(len(windows[i][0]) for i in batch)
            src = torch.full((len(batch), width), pad, dtype=torch.long)
            targets = torch.full((len(batch), width), pad, dtype=torch.long)
            for row, i in enumerate(batch):
                s, t = windows[i]
                src[row, :len(s)] = torch.tensor(s)
                targets[row, :len(t)] = torch.tensor(t)
            scores = score(self.model, src.to(self.device), targets.to(self.device), self.scoring,
                           self.log_z, self.topk, self.num_samples, self.generator)
            values = scores.lm if self.scoring == "lm" else scores.elm
            for row, i in enumerate(batch):
                results[i] = (float(values[row]), bool(scores.greedy[row]))
        return results

    def _requests(self, pieces_per_request, desc: str, disable_tqdm: bool):
        flat = [(r, w) for r, pieces in enumerate(pieces_per_request) for w in pieces]
        if self.scoring == "elm" and self.log_z == "exact" and flat:
            vocab = len(self.dictionary)
            positions = sum(len(src) for _, (src, _) in flat)
            logger.info("%s: exact Z scores %d vocabulary entries at each of up to %d "
                        "positions in %d windows (%d passes of each window; a batch's "
                        "context before its first scored target is skipped); "
                        "log_z=estimate is cheaper",
                        desc, vocab, positions, len(flat), math.ceil(vocab / 256))
        scored = self._score_windows([w for _, w in flat], desc, disable_tqdm)
        totals = [[0.0, True] for _ in pieces_per_request]
        for (r, _), (value, greedy) in zip(flat, scored):
            totals[r][0] += value
            totals[r][1] = totals[r][1] and greedy
        return [(value, greedy) for value, greedy in totals]

    # ---------------------------------------------------------------- harness API
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False,
                              **kwargs) -> List[Tuple[float, bool]]:
        """requests: ((context, continuation), context tokens, continuation tokens), as
        TemplateLM.loglikelihood makes them. An empty context comes as the prefix token
        (</s>), which every window starts with already."""
        pieces = []
        for (context, _), context_enc, continuation_enc in requests:
            if not context and context_enc == [self.eot_token_id]:
                context_enc = []
            pieces.append(self._pieces(list(context_enc), list(continuation_enc)))
        return self._requests(pieces, "loglikelihood", disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> List[float]:
        pieces = [self._rolling_windows(self.tok_encode(request.args[0])) for request in requests]
        return [value for value, _ in self._requests(pieces, "loglikelihood_rolling",
                                                     disable_tqdm)]

    def rolling_tokens(self, tokens: List[int]) -> float:
        """The log-likelihood of a token stream in disjoint windows of the block, each
        after one token of context (the first after </s>)."""
        return self._requests([self._rolling_windows(tokens)], "rolling", True)[0][0]

    def _rolling_windows(self, tokens: List[int]):
        if self.masked:  # blocks of the text, each token masked in turn within its block
            return [row for start in range(0, len(tokens), self.max_length)
                    for row in self._masked_rows([], tokens[start:start + self.max_length])]
        windows = map(make_disjoint_window, get_rolling_token_windows(
            token_list=tokens, prefix_token=self.dictionary.eos(),
            max_seq_len=self.max_length, context_len=1))
        # the first window's context is the prefix token, which _window adds itself
        return [self._window(context[1:] if i == 0 else context, continuation)
                for i, (context, continuation) in enumerate(windows)]

    def generate_until(self, requests, disable_tqdm: bool = False) -> List[str]:
        """Through fairseq's generator: greedy from q (do_sample false, the harness's
        default), or sampling at the given temperature, the ELM's SIR with the model
        argument sir_candidates=K > 1 (docs/generation.md). The text stops at the first
        of the request's `until` strings."""
        if self.masked:
            raise NotImplementedError("generate_until: a masked checkpoint does not generate")
        out = []
        for request in tqdm(requests, disable=disable_tqdm, desc="generate_until"):
            context, kwargs = request.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            new_tokens = int(kwargs.pop("max_gen_toks", 256))
            sample = bool(kwargs.pop("do_sample", False))
            temperature = float(kwargs.pop("temperature", 1.0) or 1.0)
            room = max(1, self.max_length - min(new_tokens, self.max_length // 2))
            prompt = self.tok_encode(context)[-room:]
            flags = dict(beam=1, max_len_a=1, max_len_b=new_tokens, sampling=sample)
            if sample:
                flags.update(temperature=temperature, sir_candidates=self.sir_candidates)
            prompt_ids = torch.tensor(prompt + [self.dictionary.eos()], dtype=torch.long)
            hypo = self.hub.generate([prompt_ids], **flags)[0][0]
            continuation = hypo["tokens"][len(prompt):].tolist()[:new_tokens]
            if self.dictionary.eos() in continuation:
                continuation = continuation[:continuation.index(self.dictionary.eos())]
            text = self.hub.decode(torch.tensor(continuation, dtype=torch.long)) if continuation else ""
            for stop in until:
                if stop and stop in text:
                    text = text[:text.index(stop)]
            out.append(text)
        return out
