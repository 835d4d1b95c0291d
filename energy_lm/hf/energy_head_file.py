"""The energy head beside an exported model: `energy_head.safetensors` (the head's
tensors, named as in `model.energy_head`) and an `energy_lm` entry in config.json
that says what it is. Stock transformers ignores both; `energy-lm-from-hf` restores
the head from them, so a round trip gives the same energies."""

from pathlib import Path
from typing import Dict, Tuple

from torch import Tensor

from energy_lm.hf.errors import BridgeError
from energy_lm.modules.energy_head import ENERGY_HEAD_CHOICES

ENERGY_KEY = "energy_lm"
ENERGY_FILE = "energy_head.safetensors"
ENTRY_FORMAT = 1
# beside the head's tensors: a causal model's learned-position row of the energy (the
# row one past the LM's positions, where a block's last target is scored), which GPT-2's
# position table has no room for
ENERGY_POSITION = "energy_position"


def energy_entry(kind: str, reads: str) -> Dict:
    """config.json's `energy_lm` entry; reads: which states the head reads."""
    return {"format": ENTRY_FORMAT, "energy_head": kind, "file": ENERGY_FILE,
            "reads": reads}


def write_energy_head(folder: Path, state: Dict[str, Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(folder / ENERGY_FILE))


def read_energy_head(folder: Path, entry) -> Tuple[str, Dict[str, Tensor]]:
    from safetensors.torch import load_file

    entry = dict(entry)
    if int(entry.get("format", 0)) > ENTRY_FORMAT:
        raise BridgeError(f"config.json energy_lm.format={entry.get('format')} is newer than "
                          f"this package's {ENTRY_FORMAT}: upgrade energy_lm")
    kind = entry.get("energy_head")
    if kind not in ENERGY_HEAD_CHOICES:
        raise BridgeError(f"config.json energy_lm.energy_head={kind!r}: not one of "
                          f"{', '.join(ENERGY_HEAD_CHOICES)}")
    path = Path(folder) / entry.get("file", ENERGY_FILE)
    if not path.is_file():
        raise BridgeError(f"config.json names an energy head in {path.name}, which is missing")
    return kind, load_file(str(path))
