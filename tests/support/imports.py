"""The package's import graph, read from the source tree (AST only: nothing is imported).

An edge is every import a module can execute: at module level, inside functions, and
``importlib.import_module("literal")`` (in a module that imports a computed name, every string
constant that names a module of the package counts: a list of plugins); imports under
``if TYPE_CHECKING:`` are left out (they never run). A parent package imported implicitly
(``a.b`` runs ``a/__init__``) is not an edge.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "ownership_ctx"


@dataclass(frozen=True)
class Module:
    name: str
    path: Path

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


@dataclass(frozen=True)
class Import:
    """``module`` runs ``target`` (a module of the package); ``names`` taken from it."""

    module: str
    target: str
    names: tuple[str, ...]
    line: int


def modules(root: Path = ROOT) -> dict[str, Module]:
    found: dict[str, Module] = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = Module(".".join(parts), path)
    return found


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _absolute(module: Module, level: int, name: str | None) -> str:
    if not level:
        return name or ""
    base = module.name.split(".")
    if not module.is_package:
        base.pop()
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def imports(module: Module, known: dict[str, Module]) -> Iterator[Import]:
    """The imports of ``module`` whose target is a module of the package."""
    tree = ast.parse(module.path.read_text(), str(module.path))
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield Import(module.name, alias.name, (), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node.level, node.module)
            if base not in known:
                continue
            plain: list[str] = []
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in known:  # `from pkg import submodule`
                    yield Import(module.name, submodule, (), node.lineno)
                else:
                    plain.append(alias.name)
            if plain:
                yield Import(module.name, base, tuple(plain), node.lineno)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            target = _absolute(module, 0, node.args[0].value)
            if target in known:
                yield Import(module.name, target, (), node.lineno)
    if any(_imports_a_computed_name(node) for node in _runtime_nodes(tree)):
        for node in _runtime_nodes(tree):
            if isinstance(node, ast.Constant) and node.value in known:
                yield Import(module.name, str(node.value), (), node.lineno)


def _imports_a_computed_name(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "import_module"
        and bool(node.args)
        and not isinstance(node.args[0], ast.Constant)
    )


def module_aliases(module: Module, known: dict[str, Module]) -> dict[str, str]:
    """Local names bound to a module of the package: ``{"events": "ownership_ctx.events"}``."""
    tree = ast.parse(module.path.read_text(), str(module.path))
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in known:
                    aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node.level, node.module)
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
    return aliases


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    known = modules(root)
    edges: dict[str, set[str]] = {name: set() for name in known}
    for module in known.values():
        for found in imports(module, known):
            if found.target != module.name:
                edges[module.name].add(found.target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def private_imports(root: Path = ROOT) -> list[str]:
    """Every place a module takes another module's private (``_name``) name: imported by name
    (``from .codec import _X``) or read off an imported module (``events._sink``). Private
    *modules* (``from . import _spool``) are fine: a private module is the package's own."""
    known = modules(root)
    found: list[str] = []
    for module in known.values():
        where = module.path.relative_to(root)
        for imported in imports(module, known):
            for name in imported.names:
                if name.startswith("_") and not name.startswith("__"):
                    found.append(f"{where}:{imported.line}: {name} from {imported.target}")
        aliases = module_aliases(module, known)
        tree = ast.parse(module.path.read_text(), str(module.path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and f"{aliases[node.value.id]}.{node.attr}" not in known
            ):
                target = aliases[node.value.id]
                found.append(f"{where}:{node.lineno}: {node.attr} from {target}")
    return sorted(found)
