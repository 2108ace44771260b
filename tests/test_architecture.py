"""The layout's rules, checked on the source: no file-level import cycle, small modules and functions.

Imports are read with `ast` (nothing is imported), wherever they sit in a file — a lazy import inside
a function is still a dependency of the file — except under `if TYPE_CHECKING:`.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "strategies", "kernels")
MAX_MODULE_LINES = 320  # the style guide's ~300
MAX_FUNCTION_LINES = 60  # the style guide's ~50
LONG_FUNCTIONS = {"engine/trainer.py::train_cell": 100}  # the one loop may read top to bottom


def _module_files(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of `packages` under `root`."""
    files = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = path
    return files


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    """The dotted names a file imports (for `from X import y`: X.y and X), outside TYPE_CHECKING blocks."""
    names, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".") if is_package else module.split(".")[:-1]
                parent = parent[:len(parent) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            names.extend(f"{base}.{alias.name}" for alias in node.names)
            names.append(base)
        stack.extend(ast.iter_child_nodes(node))
    return names


def import_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    """Module -> the modules of `packages` its file imports (a name resolves to the longest known module)."""
    files = _module_files(root, packages)
    graph = {}
    for module, path in files.items():
        edges = set()
        for name in _imported_names(ast.parse(path.read_text()), module, path.name == "__init__.py"):
            parts = name.split(".")
            for end in range(len(parts), 0, -1):
                target = ".".join(parts[:end])
                if target in files:
                    if target != module:
                        edges.add(target)
                    break
        graph[module] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_source_has_no_import_cycle():
    cycles = import_cycles(import_graph(REPO))
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_import_cycle_check_finds_a_planted_cycle(tmp_path):
    pkg = tmp_path / "engine"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from engine.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")  # lazy and relative: still an edge
    (pkg / "c.py").write_text("import engine.a\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from engine import a\n")
    graph = import_graph(tmp_path, ("engine",))
    assert import_cycles(graph) == [["engine.a", "engine.c", "engine.sub.b"]]
    assert graph["engine.d"] == set()


def _sizes(root: Path):
    for path in sorted(p for package in PACKAGES for p in (root / package).rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        source = path.read_text()
        yield rel, None, len(source.splitlines())
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield rel, node.name, node.end_lineno - node.lineno + 1


@pytest.mark.parametrize("kind", ["module", "function"])
def test_modules_and_functions_stay_small(kind):
    too_long = []
    for rel, function, lines in _sizes(REPO):
        if kind == "module" and function is None and lines > MAX_MODULE_LINES:
            too_long.append(f"{rel}: {lines} lines")
        limit = LONG_FUNCTIONS.get(f"{rel}::{function}", MAX_FUNCTION_LINES)
        if kind == "function" and function is not None and lines > limit:
            too_long.append(f"{rel}::{function}: {lines} lines")
    assert not too_long, f"over the {kind} size limit: " + ", ".join(too_long)
