"""The import graph of trainer/ and launchers/ has no cycle (imports inside functions included), and every module
imports on its own in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.helpers import REPO

PACKAGES = ("trainer", "launchers")


def modules() -> dict[str, ast.Module]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = ast.parse(path.read_text(), str(path))
    return found


def bound_names(tree: ast.Module) -> set[str]:
    """Names a module binds at its top level (what ``from module import name`` can find there)."""
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def imports(name: str, tree: ast.Module, trees: dict[str, ast.Module]) -> set[str]:
    """The project modules ``name`` imports anywhere in its body: ``from pkg import mod`` counts as pkg.mod, and
    ``from pkg import obj`` as pkg only when pkg's __init__ binds obj."""
    known = set(trees)
    package = name if name in {m.rsplit(".", 1)[0] for m in known if "." in m} else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [
                f"{base}.{alias.name}"
                if f"{base}.{alias.name}" in known
                else base
                if base in trees and alias.name in bound_names(trees[base])
                else ""
                for alias in node.names
            ]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_modules():
    trees = modules()
    graph = {name: imports(name, tree, trees) for name, tree in trees.items()}
    assert graph["trainer.cli"] >= {"launchers"}  # the graph sees imports inside functions
    assert "trainer.library_args" not in graph["trainer.errors"] and "trainer.data" not in graph["trainer.data.cache"]
    assert not any(
        m.startswith("launchers")
        for name, deps in graph.items()
        if name != "trainer.cli"
        for m in deps
        if name.startswith("trainer")
    )  # one-way: only the CLI, at the top, reaches the launchers
    assert cycles(graph) == []


@pytest.mark.slow
@pytest.mark.parametrize("module", sorted(modules()))
def test_every_module_imports_alone_in_a_fresh_interpreter(module):
    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
