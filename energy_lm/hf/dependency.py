"""transformers and safetensors are optional (`pip install 'energy-lm[hf]'`; `make
install` installs them): the bridge checks for them once, in one line."""

from importlib.util import find_spec

from energy_lm.hf.errors import BridgeError

INSTALL = "pip install 'energy-lm[hf]' (transformers and safetensors)"


def require() -> None:
    missing = [name for name in ("transformers", "safetensors") if find_spec(name) is None]
    if missing:
        raise BridgeError(f"{' and '.join(missing)} not installed: {INSTALL}")
