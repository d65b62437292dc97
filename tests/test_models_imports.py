"""``ftscale.models`` imports point one way: no module imports one that imports it back.

The config/cache/manifest part (``ladder_config``) imports no other ``models`` module; the
builders (``build``, ``external``) import it; ``ladder`` (the public entry point) imports all of
them. A cycle would make the import order matter and break ``import ftscale.models.build`` alone.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MODELS = SRC / "ftscale" / "models"
MODULES = sorted(f"ftscale.models.{p.stem}" for p in MODELS.glob("*.py") if p.stem != "__init__")


def _models_imports(path: Path) -> set[str]:
    """Every ``ftscale.models.*`` module imported anywhere in ``path`` (top level or inside a
    function: a lazy import still makes a cycle)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y
                base = "ftscale.models" + (f".{node.module}" if node.module else "")
            else:
                base = node.module or ""
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {name for name in found if name in MODULES}


def _graph() -> dict[str, set[str]]:
    return {m: _models_imports(MODELS / f"{m.rsplit('.', 1)[1]}.py") - {m} for m in MODULES}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_models_has_no_import_cycle():
    graph = _graph()
    assert "ftscale.models.ladder_config" in graph and "ftscale.models.build" in graph
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"
    # the layering the module docs promise
    assert graph["ftscale.models.ladder_config"] == set()
    assert "ftscale.models.ladder" not in graph["ftscale.models.build"]
    assert "ftscale.models.ladder" not in graph["ftscale.models.external"]


@pytest.mark.slow
def test_each_models_module_imports_alone():
    """Each module in a fresh interpreter (all started at once: each one loads torch)."""
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    procs = {m: subprocess.Popen([sys.executable, "-c", f"import {m}"], env=env,
                                 stderr=subprocess.PIPE, text=True) for m in MODULES}
    failed = {}
    for module, proc in procs.items():
        _, err = proc.communicate(timeout=180)
        if proc.returncode:
            failed[module] = err[-1000:]
    assert not failed, failed


def test_reading_a_ladder_needs_no_torch():
    """`ftscale ladder show` reads manifests only: the config module must not load torch."""
    code = "import sys, ftscale.models.ladder_config; sys.exit('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(SRC)})
    assert proc.returncode == 0, "ftscale.models.ladder_config imported torch"
