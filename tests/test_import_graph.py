"""The package's import graph: kernels/ is a leaf (it imports nothing else of
energy_lm), and no module reaches itself through imports, counting the imports written
inside functions too (they are arrows all the same)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "energy_lm"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def test_kernels_import_nothing_else_of_the_package():
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("energy_lm.kernels"):
            outside = [t for t in targets if not t.startswith("energy_lm.kernels")]
            assert not outside, f"{name} imports {outside}"


def test_no_import_cycles_between_modules():
    """Package __init__ files that re-export their own modules are not arrows back."""
    graph = import_graph()

    def arrows(name):
        return [t for t in graph[name]
                if not (name.endswith("__init__") or t.startswith(name + "."))
                and not (graph.get(t) is not None and name.startswith(t + ".")
                         and t.count(".") < name.count("."))]

    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in arrows(node):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
