"""Register energy_lm with fairseq whenever fairseq is imported, so the stock commands
(`fairseq-train --arch roberta_clap_base`, `fairseq-hydra-train`, `from_pretrained`)
know our names without `--user-dir`.

fairseq has no plugin entry points. `energy_lm_autoload.pth` (installed into
site-packages with the package) imports this module at interpreter start-up; it only
adds a one-shot import finder (no torch, no fairseq import). When `fairseq` finishes
importing, the finder imports `energy_lm`, whose import registers everything.

Set ENERGY_LM_NO_AUTOLOAD=1 to turn it off (then use `--user-dir`). It never raises:
a failure becomes a warning and fairseq works as without energy_lm.
"""

import os
import sys

DISABLE_ENV = "ENERGY_LM_NO_AUTOLOAD"


def _disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _import_energy_lm() -> None:
    if _disabled():
        return
    try:
        import energy_lm  # noqa: F401  (registers models, tasks, criterions)
    except Exception as err:  # never break fairseq because of us
        import warnings

        warnings.warn(f"energy_lm autoload failed ({err!r}); fairseq runs without "
                      f"energy_lm. Set {DISABLE_ENV}=1 to silence this.", RuntimeWarning,
                      stacklevel=2)


class _LoaderThenEnergyLM:
    """Delegates to fairseq's own loader, then imports energy_lm."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _import_energy_lm()

    def __getattr__(self, name):  # get_resource_reader, is_package, ...
        return getattr(self._loader, name)


class _FairseqFinder:
    """Meta-path finder that fires once, for the top-level `fairseq` import."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "fairseq":
            return None
        try:
            sys.meta_path.remove(self)
            import importlib.util

            spec = importlib.util.find_spec("fairseq")
            if spec is not None and spec.loader is not None:
                spec.loader = _LoaderThenEnergyLM(spec.loader)
            return spec
        except Exception:
            return None  # let the normal machinery find fairseq


def install() -> None:
    if _disabled() or "fairseq" in sys.modules:
        return
    if not any(isinstance(f, _FairseqFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _FairseqFinder())


try:
    install()
except Exception:
    pass
