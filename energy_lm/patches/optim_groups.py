"""Keep chosen parameters (CLAP's beta) out of weight decay in fairseq's optimizers.

fairseq's trainer hands its optimizer one flat parameter list, so `--weight-decay`
applies to every parameter, and decay would pull the inverse temperature beta towards
zero. A parameter marked with `exclude_from_weight_decay` (energy_lm.modules.weight_decay)
is put in a second parameter group with weight_decay = 0 when fairseq builds its
optimizer; everything else is unchanged. fairseq's optimizers wrap torch optimizers, which accept parameter groups.

Coverage: fp32, `--amp` and `--memory-efficient-fp16/bf16` runs. fairseq's flattened
`--fp16/--bf16` optimizer builds fp32 copies of the parameters (without the mark), so
there beta is decayed like any other weight.
"""

from energy_lm.modules.weight_decay import weight_decay_groups

from energy_lm.patches.replace import replace


def install() -> None:
    """Wrap `fairseq.optim.build_optimizer` (idempotent)."""
    import fairseq.optim as fairseq_optim

    replace(fairseq_optim, "build_optimizer", _with_weight_decay_groups)


def _with_weight_decay_groups(original):
    import fairseq.optim as fairseq_optim

    build_from_registry = fairseq_optim._build_optimizer

    def build_optimizer(cfg, params, *extra_args, **extra_kwargs):
        params = list(params)
        if params and all(isinstance(p, dict) for p in params):  # fairseq flattens dicts too
            params = [t for p in params for t in p.values()]
        params = [p for p in params if p.requires_grad]
        return build_from_registry(cfg, weight_decay_groups(params), *extra_args, **extra_kwargs)

    build_optimizer.__doc__ = original.__doc__
    return build_optimizer
