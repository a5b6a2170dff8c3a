"""The import layers hold: the lower floors (models, data, monitor, the recipe's modules and the
small shared ones) import nothing from the commands and the training (train, check, sweep, cli,
eval, summary); nothing imports Hydra's internals; no two packages import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "dlrun"
UPPER = ("dlrun.train", "dlrun.check", "dlrun.sweep", "dlrun.cli", "dlrun.options", "dlrun.evaluate", "dlrun.summary",
         "dlrun.__main__")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at its top or inside a function (`from a import b` gives a and a.b)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


MODULES = {module_name(p): imports(p) for p in sorted(SRC.rglob("*.py"))}


def within(name: str, roots: tuple[str, ...]) -> bool:
    return any(name == root or name.startswith(root + ".") for root in roots)


def unit(name: str) -> str:
    """The package (dlrun.train) or top-level module (dlrun.cli) a module belongs to."""
    return ".".join(name.split(".")[:2])


def test_the_lower_floors_import_nothing_from_the_upper_ones():
    wrong = sorted(f"{module} imports {name}" for module, names in MODULES.items() if not within(module, UPPER)
                   for name in names if within(name, UPPER))
    assert not wrong, wrong


def test_nothing_imports_hydras_internals():
    wrong = sorted(f"{module} imports {name}" for module, names in MODULES.items() for name in names
                   if within(name, ("hydra._internal",)))
    assert not wrong, wrong


def test_no_two_packages_import_each_other():
    edges = {unit(module): set() for module in MODULES}
    for module, names in MODULES.items():
        edges[unit(module)].update(unit(n) for n in names if n.startswith("dlrun.") and unit(n) in edges
                                   and unit(n) != unit(module))

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for nxt in sorted(edges[node]):
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [" -> ".join(c) for c in map(cycle_from, sorted(edges)) if c]
    assert not cycles, cycles


@pytest.mark.parametrize("rule,module,imported", [
    (test_the_lower_floors_import_nothing_from_the_upper_ones, "dlrun.models.mlp", "dlrun.train.run"),
    (test_nothing_imports_hydras_internals, "dlrun.evaluate", "hydra._internal.utils"),
    (test_no_two_packages_import_each_other, "dlrun.monitor.tensorboard", "dlrun.train.run"),  # train imports monitor
])
def test_each_rule_fails_on_the_import_it_forbids(monkeypatch, rule, module, imported):
    """The checks can fail: one forbidden import added to the real graph trips each of them."""
    assert any(unit(n) == "dlrun.monitor" for n in MODULES["dlrun.train.assembly"])
    monkeypatch.setitem(MODULES, module, MODULES[module] | {imported})
    with pytest.raises(AssertionError):
        rule()
