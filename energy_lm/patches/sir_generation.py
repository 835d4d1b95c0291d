"""`--sir-candidates K` and `--sir-print-weights` in fairseq's own generators.

fairseq-generate, fairseq-interactive and the hub's `generate`/`sample` build their
generator with `task.build_generator(models, cfg.generation)`; none has a hook for
another sampler, and GenerationConfig has a fixed set of fields. Three wraps, installed
at import (idempotent):

- `fairseq.options.add_generation_args` also adds the three flags to the Generation group;
- `fairseq.dataclass.utils.convert_namespace_to_omegaconf` carries them from the parsed
  arguments into `cfg.generation` (it keeps only GenerationConfig's own fields);
- `FairseqTask.build_generator` builds energy_lm's SIR generator
  (energy_lm.inference.sir_generator) when K > 1, and fairseq's own otherwise: without
  the flag, or with K = 1, generation is exactly fairseq's.
"""

from energy_lm.patches.replace import replace

SIR_FLAGS = ("sir_candidates", "sir_print_weights", "sir_attention_backend")


def _add_flags(group) -> None:
    group.add_argument("--sir-candidates", type=int, default=1, metavar="K",
                       help="energy LMs: sample the ELM q * exp(-E) by sampling-importance-"
                            "resampling with K candidates per token from the proposal "
                            "(needs --sampling and --beam 1; 1: plain sampling from q)")
    group.add_argument("--sir-print-weights", action="store_true",
                       help="with --sir-candidates: log each step's candidates, energies "
                            "and resampling weights")
    group.add_argument("--sir-attention-backend", default="auto", metavar="NAME",
                       help="with --sir-candidates: paired-attention backend of the "
                            "candidates' forward (auto, reference, sdpa, flex, triton)")


def install() -> None:
    import fairseq.dataclass.utils as dataclass_utils
    from fairseq import options
    from fairseq.tasks.fairseq_task import FairseqTask

    replace(options, "add_generation_args", _adding_the_flags)
    replace(dataclass_utils, "convert_namespace_to_omegaconf", _carrying_the_flags)
    replace(FairseqTask, "build_generator", _building_sir)


def _adding_the_flags(add_generation_args):
    def add_generation_args_sir(parser):
        group = add_generation_args(parser)
        _add_flags(group)
        return group

    add_generation_args_sir.__doc__ = add_generation_args.__doc__
    return add_generation_args_sir


def _carrying_the_flags(convert):
    def convert_namespace_to_omegaconf(args):
        cfg = convert(args)
        if any(hasattr(args, name) for name in SIR_FLAGS) and cfg.get("generation") is not None:
            from omegaconf import open_dict

            with open_dict(cfg.generation):
                for name in SIR_FLAGS:
                    if hasattr(args, name):
                        cfg.generation[name] = getattr(args, name)
        return cfg

    convert_namespace_to_omegaconf.__doc__ = convert.__doc__
    return convert_namespace_to_omegaconf


def _building_sir(build_generator):
    def build_generator_sir(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None,
                            prefix_allowed_tokens_fn=None):
        k = int(getattr(args, "sir_candidates", 1) or 1)
        if k == 1 or getattr(args, "score_reference", False):
            return build_generator(self, models, args, seq_gen_cls=seq_gen_cls,
                                   extra_gen_cls_kwargs=extra_gen_cls_kwargs,
                                   prefix_allowed_tokens_fn=prefix_allowed_tokens_fn)
        from energy_lm.inference.sir_generator import SirSequenceGenerator, check_sir_args

        check_sir_args(models, args, k)
        extra = dict(extra_gen_cls_kwargs or {}, sir_candidates=k,
                     sir_print_weights=bool(getattr(args, "sir_print_weights", False)),
                     sir_attention_backend=getattr(args, "sir_attention_backend", "auto"))
        return build_generator(self, models, args, seq_gen_cls=SirSequenceGenerator,
                               extra_gen_cls_kwargs=extra,
                               prefix_allowed_tokens_fn=prefix_allowed_tokens_fn)

    build_generator_sir.__doc__ = build_generator.__doc__
    return build_generator_sir
