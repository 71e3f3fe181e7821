"""Imports point one way: api → services → roles → engine → backends, and nothing goes in a circle.

The graph is read from the source (``ast``), counting imports inside functions too (a
function-level import is still a dependency, only a hidden one) and leaving out
``if TYPE_CHECKING:`` blocks (annotations only, never executed).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("appliance", "backends", "provisioning")

# (importer prefix, forbidden target prefix, why)
FORBIDDEN = [
    ("appliance.engine", "appliance.roles", "generation rules are storage rules: engine/generations.py"),
    ("appliance.engine", "appliance.settings", "the engine takes EngineOptions, not Settings"),
    ("appliance.engine", "appliance.services", "the engine is below the services"),
    ("appliance.engine", "appliance.api", "the engine knows nothing of HTTP"),
    ("appliance.roles", "appliance.api", "roles know nothing of HTTP"),
    ("backends", "appliance", "backends import nothing from appliance/"),
    ("backends", "provisioning", "backends import nothing from provisioning/"),
    ("appliance.services", "appliance.api", "the services know nothing of HTTP"),
    ("appliance.roles", "appliance.services", "roles are below the services"),
    ("appliance.query", "appliance.api", "queries are collected below HTTP"),
    ("appliance.workers", "appliance", "the worker pool knows nothing of what it runs"),
    ("appliance.sizes", "appliance.api", "the thresholds are plain numbers"),
]


def module_name(path: Path) -> str:
    """Dotted module name of a source file under ROOT."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    """Every module of the three packages."""
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that ``path`` imports (any depth, TYPE_CHECKING blocks excluded)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def resolve(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = package.split(".")
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = resolve(node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports."""
    modules = all_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def under(name: str, prefix: str) -> bool:
    """True if module ``name`` is ``prefix`` or inside it."""
    return name == prefix or name.startswith(prefix + ".")


def test_graph_sees_the_packages() -> None:
    graph = import_graph()
    # the walker must find real edges, or the checks below would pass on an empty graph
    assert "appliance.engine.storage" in graph
    assert "appliance.engine.generations" in graph["appliance.engine.recovery"]
    assert "backends.base" in graph["appliance.roles.fencing"]


def test_no_import_points_the_wrong_way() -> None:
    graph = import_graph()
    wrong = [
        f"{src} imports {dst} ({why})"
        for src, targets in sorted(graph.items())
        for dst in sorted(targets)
        for importer, forbidden, why in FORBIDDEN
        if under(src, importer) and under(dst, forbidden)
    ]
    assert wrong == []


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
