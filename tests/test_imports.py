"""The import graph of trainer/ and launchers/ has no cycle (imports inside functions included), and every module
imports on its own in a fresh interpreter."""

from __future__ import annotations

import ast
import os
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
    assert (
        "trainer.config.library_args" not in graph["trainer.config.errors"]
        and "trainer.data" not in graph["trainer.data.cache"]
    )
    assert not any(
        m.startswith("launchers")
        for name, deps in graph.items()
        if name != "trainer.cli"
        for m in deps
        if name.startswith("trainer")
    )  # one-way: only the CLI, at the top, reaches the launchers
    assert cycles(graph) == []


#: Each project module is imported in a child forked from one interpreter that has imported only these libraries
#: (and none of hydratune): the child starts with none of hydratune's modules loaded, as a fresh interpreter would, so
#: an import that only works in some order fails here, without paying each child's torch import again.
_FORK_EACH = """
import os, sys, traceback
import torch, transformers, trl, peft, datasets, hydra, omegaconf  # noqa: F401
assert not any(m.split('.')[0] in ('trainer', 'launchers') for m in sys.modules)
failed = 0
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            __import__(name)
        except BaseException:
            sys.stderr.write(f'--- import {name} failed:\\n' + traceback.format_exc())
            os._exit(1)
        os._exit(0)
    failed += os.waitpid(pid, 0)[1] != 0
sys.exit(1 if failed else 0)
"""


@pytest.mark.slow
def test_every_module_imports_alone():
    names = sorted(modules())
    result = subprocess.run([sys.executable, "-c", _FORK_EACH, *names], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.slow
def test_the_import_check_sees_a_module_that_fails_alone(tmp_path):
    """A module that imports a name its package only binds after it (a cycle seen at import time) fails there."""
    package = tmp_path / "trainer_probe"
    package.mkdir()
    (package / "__init__.py").write_text("from trainer_probe.a import A\nB = 1\n")
    (package / "a.py").write_text("from trainer_probe import B\nA = B\n")
    result = subprocess.run(
        [sys.executable, "-c", _FORK_EACH, "trainer.config.choices", "trainer_probe.a"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": f"{tmp_path}:{REPO}"},
    )  # fmt: skip
    assert result.returncode == 1 and "import trainer_probe.a failed" in result.stderr, result.stderr[-2000:]


#: The layers, top to bottom: a module may import its own room and any room of a lower layer, never one above.
#: cli -> launchers / tools -> engine -> hosting -> report -> evaluation -> data / models -> run -> config.
#: (hosting sits below the engine: a run exports and serves its own model to check what users ship.)
LAYERS = {
    "trainer.cli": 9,
    "launchers": 8,
    "trainer.tools": 8,
    "trainer.engine": 7,
    "trainer.hosting": 6,
    "trainer.report": 5,
    "trainer.evaluation": 4,
    "trainer.data": 3,
    "trainer.models": 3,
    "trainer.run": 2,
    "trainer.config": 1,
    "trainer.conf": 0,
    "trainer": 0,  # the package's own __init__ (a docstring)
}


def room(module: str) -> str:
    """The room a module lives in: its sub-package of trainer/, launchers, or trainer.cli / trainer.models."""
    if module.startswith("launchers"):
        return "launchers"
    parts = module.split(".")
    return ".".join(parts[:2])


def test_imports_follow_the_layers():
    trees = modules()
    assert set(map(room, trees)) <= set(LAYERS), set(map(room, trees)) - set(LAYERS)  # every room has its layer
    against = sorted(
        f"{name} -> {dep}"
        for name, tree in trees.items()
        for dep in imports(name, tree, trees)
        if room(dep) != room(name) and LAYERS[room(dep)] >= LAYERS[room(name)]
    )
    assert against == []


def test_the_layer_check_sees_a_wrong_arrow():
    """A throwaway module in the config room importing the engine is reported (the check can fail)."""
    trees = modules()
    trees["trainer.config.bad"] = ast.parse("from trainer.engine import pipeline\n")
    wrong = [dep for dep in imports("trainer.config.bad", trees["trainer.config.bad"], trees)]
    assert "trainer.engine.pipeline" in wrong and LAYERS[room(wrong[0])] > LAYERS["trainer.config"]


def test_config_imports_no_torch():
    """The config room (schema, checks, errors) composes and checks without torch or transformers."""
    names = [m for m in modules() if m.startswith("trainer.config")]
    code = f"import sys\nfor m in {names!r}:\n    __import__(m)\n" + (
        "assert not {'torch', 'transformers', 'trl', 'peft'} & set(sys.modules), sorted({'torch', 'transformers'} & set(sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
