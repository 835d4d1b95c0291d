"""One list of what energy_lm changes in fairseq: energy_lm.patches.PATCHES, what an import
of energy_lm installed (recorded by patches.replace), and docs/compatibility.md's table
are the same; a second install changes nothing."""

import re

from conftest import REPO

import energy_lm  # noqa: F401  (installs the patches)
from energy_lm.patches import FEATURE, FIX, PATCHES, SAFETY, install_all
from energy_lm.patches.replace import INSTALLED


def resolve(dotted: str):
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(dotted)


def test_what_was_installed_is_the_list_in_its_order():
    declared = [name for patch in PATCHES for name in patch.replaces]
    assert INSTALLED == declared
    assert {p.group for p in PATCHES} == {FIX, SAFETY, FEATURE}
    for name in declared:
        if name != "torch.serialization.add_safe_globals":  # an allow-list, not a name
            assert getattr(resolve(name), "_energy_lm_wrapped", False), name


def test_installing_again_wraps_nothing_twice():
    from fairseq.trainer import Trainer

    before = Trainer.train_step
    install_all()
    assert Trainer.train_step is before
    assert INSTALLED == [name for patch in PATCHES for name in patch.replaces]


def test_the_docs_table_is_the_list():
    text = (REPO / "docs" / "compatibility.md").read_text()
    section = text.split("## What energy_lm changes in fairseq", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = []
    for row in rows:
        module, group, replaces, why = [c.strip() for c in row.strip("|").split(" | ")]
        documented.append((module.strip("`"), group, tuple(re.findall(r"`([^`]+)`", replaces)),
                           why))
    assert documented == [(p.module, p.group, p.replaces, p.why) for p in PATCHES]
