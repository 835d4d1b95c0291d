"""The package's rooms (its sub-packages) only look down: every import of energy_lm
inside energy_lm, lazy ones included, goes to a room on a lower floor (or its own).
The floors, bottom first, are declared here; a new room or an import that runs up
fails with the file and the import named."""

import ast
from pathlib import Path

from conftest import REPO

FLOORS = [
    {"kernels", "losses", "data", "configs"},  # pure functions, data, files
    {"sampling"},                               # samples of q, keyed uniforms
    {"modules"},                                # layers, heads, the paired pass
    {"inference"},                              # the energy pass, log Z, SIR, fill-mask, hub
    {"models"},                                 # the architectures and their options
    {"criterions", "tasks", "patches", "hf"},   # what fairseq is given or changed; the HF bridge
    {"cli"},                                    # console scripts
    {"glue", "harness"},                        # drivers built on the tools
]
FLOOR = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}
PACKAGE = REPO / "energy_lm"


def imports_of(path: Path):
    """(line, energy_lm room) of every import of energy_lm in the file."""
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = ([f"energy_lm.{a.name}" for a in node.names]
                     if node.module == "energy_lm" else [node.module])
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "energy_lm" and len(parts) > 1:
                yield node.lineno, parts[1]


def test_every_room_is_on_a_floor():
    rooms = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert rooms == set(FLOOR), f"rooms without a floor: {rooms - set(FLOOR)}; " \
                                f"floors without a room: {set(FLOOR) - rooms}"


def test_no_import_runs_up():
    up = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) == 1:  # energy_lm/__init__.py: the package's face imports everything
            continue
        room = parts[0]
        for line, target in imports_of(path):
            if target in FLOOR and FLOOR[target] > FLOOR[room]:
                up.append(f"{path.relative_to(REPO)}:{line} ({room}, floor {FLOOR[room]}) "
                          f"imports {target} (floor {FLOOR[target]})")
    assert not up, "imports that run up:\n" + "\n".join(up)
