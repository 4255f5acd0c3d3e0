"""The package's layering, as docs/architecture.md states it.

The table in docs/architecture.md is the one statement of which module sits in
which layer; this test reads it and checks every module's imports against it:
no import of a higher layer, no import circle (lazy and type-checking imports
count: they are circles for a reader), gevent only in the runner layer, and no
module missing from the table.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "flask_goelect"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
RUNNER_LAYER = 4

_ROW = re.compile(r"^\| `flask_goelect/(?P<path>[\w/]+\.py)` \| (?P<layer>\d) ")


def module_name(path: Path) -> str:
    """``flask_goelect/runner/elector.py`` -> ``runner.elector``; packages by their name."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or "__init__"


def layer_table() -> dict[str, int]:
    layers = {}
    for line in ARCHITECTURE.read_text().splitlines():
        match = _ROW.match(line)
        if match:
            layers[module_name(PACKAGE / match["path"])] = int(match["layer"])
    return layers


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    """The package modules ``path`` imports, and the top-level names of the others."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    if name == "__init__":
        package = []
    inside: set[str] = set()
    outside: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("flask_goelect."):
                    inside.add(alias.name.removeprefix("flask_goelect."))
                else:
                    outside.add(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                module = node.module or ""
                if module == "flask_goelect" or module.startswith("flask_goelect."):
                    base = module.removeprefix("flask_goelect").lstrip(".")
                    inside.update(_targets(base, node))
                else:
                    outside.add(module.split(".")[0])
                continue
            base_parts = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            base = ".".join([*base_parts, *([node.module] if node.module else [])])
            inside.update(_targets(base, node))
    return inside - {name}, outside


def _targets(base: str, node: ast.ImportFrom) -> set[str]:
    """``from <base> import a, b``: the modules meant (a name that is a module counts)."""
    modules = set(layer_table())
    found = set()
    for alias in node.names:
        candidate = f"{base}.{alias.name}" if base else alias.name
        if candidate in modules:
            found.add(candidate)
        elif base:
            found.add(base)
    return {m for m in found if m}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p)[0] for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_is_in_the_table() -> None:
    table = layer_table()
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    assert modules - set(table) == set(), "add these modules to docs/architecture.md"
    assert set(table) - modules == set(), "docs/architecture.md names modules that do not exist"


def test_no_module_imports_a_higher_layer() -> None:
    table = layer_table()
    wrong = [
        f"{module} (layer {table[module]}) imports {dep} (layer {table[dep]})"
        for module, deps in graph().items()
        for dep in sorted(deps)
        if dep in table and table[dep] > table[module]
    ]
    assert wrong == []


def find_circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every circle found by a depth-first walk (each reported once, from its first node)."""
    circles: list[list[str]] = []
    done: set[str] = set()
    stack: list[str] = []

    def visit(module: str) -> None:
        if module in stack:
            circles.append([*stack[stack.index(module) :], module])
            return
        if module in done:
            return
        stack.append(module)
        for dep in sorted(edges.get(module, ())):
            visit(dep)
        stack.pop()
        done.add(module)

    for module in sorted(edges):
        visit(module)
    return circles


def test_no_import_circle() -> None:
    assert find_circles(graph()) == []


def test_the_circle_finder_finds_one() -> None:
    # A check that can fail: the graph of the old glue, where decorators, views
    # and extension imported each other.
    old = {"decorators": {"views"}, "views": {"extension"}, "extension": {"decorators"}}
    assert find_circles(old) == [["decorators", "views", "extension", "decorators"]]


def test_gevent_only_in_the_runner_layer() -> None:
    table = layer_table()
    users = {module_name(p) for p in PACKAGE.rglob("*.py") if "gevent" in imports_of(p)[1]}
    assert users, "the runner uses gevent: the check reads imports wrongly"
    assert {m for m in users if table[m] != RUNNER_LAYER} == set()


#: What the lower layers may not import: the frameworks and the network; the
#: core may not start threads either (the pure leaves may hold a lock).
BANNED = {
    1: {"flask", "werkzeug", "gevent", "requests", "urllib3", "socket", "threading"},
    2: {"flask", "werkzeug", "gevent", "requests", "urllib3", "socket"},
}


@pytest.mark.parametrize("layer", sorted(BANNED))
def test_lower_layers_import_no_framework_or_network(layer: int) -> None:
    table = layer_table()
    found = [
        (module, lib)
        for p in PACKAGE.rglob("*.py")
        if table.get(module := module_name(p)) == layer
        for lib in sorted(imports_of(p)[1] & BANNED[layer])
    ]
    assert found == []
