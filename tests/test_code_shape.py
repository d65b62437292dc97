"""The shape of the code in ``src``: short functions with few positional parameters (recipes as
named steps, read in one sitting), and no import cycle between modules (each module can be read
knowing only what it imports; a circle hidden behind imports inside functions still counts)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "ftscale"
#: The longest function (lines, decorators excluded, docstring included) and the most positional
#: parameters (``self``/``cls`` not counted; keyword-only parameters are free).
MAX_LINES, MAX_POSITIONAL = 60, 6


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def test_no_function_is_long_or_takes_many_positional_parameters():
    problems = []
    for name, path in _modules().items():
        for node in _functions(ast.parse(path.read_text(encoding="utf-8"))):
            lines = node.end_lineno - node.lineno + 1
            arguments = node.args.posonlyargs + node.args.args
            positional = [a.arg for a in arguments if a.arg not in ("self", "cls")]
            if lines > MAX_LINES:
                problems.append(f"{name}.{node.name}: {lines} lines")
            if len(positional) > MAX_POSITIONAL:
                problems.append(f"{name}.{node.name}: {len(positional)} positional parameters")
    assert not problems, "; ".join(problems)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(tree: ast.AST, modules: dict[str, Path]) -> set[str]:
    """Every ``ftscale`` module this module imports, anywhere in it (functions included), except
    under ``if TYPE_CHECKING:``. ``from a import b`` names ``a.b`` when that is a module."""
    skipped = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and _is_type_checking(node)
        for child in ast.walk(node)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: _imported(ast.parse(path.read_text(encoding="utf-8")), modules) - {name}
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def _package_edge(child: str, parent: str) -> bool:
    """A package's ``__init__`` importing its own submodules (and they the package back, to reach
    a sibling) is how Python packages are built, not a circle between modules."""
    return child.startswith(parent + ".")


def test_no_import_cycle_in_src():
    graph = import_graph()
    graph = {m: {n for n in deps if not _package_edge(m, n)} for m, deps in graph.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize(
    ("graph", "has_cycle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
        ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, False),
        ({"a": {"a2"}, "a2": {"b"}, "b": {"a2"}}, True),
    ],
)
def test_the_cycle_finder_finds_cycles(graph, has_cycle):
    assert (find_cycle(graph) is not None) is has_cycle


def test_function_imports_count_as_edges(tmp_path):
    """The old circle job -> train -> lr_search -> job hid behind imports inside functions."""
    code = "def f():\n    from ftscale.finetune.spec import FinetuneJob\n"
    modules = {"ftscale.finetune.spec": Path("x"), "ftscale.finetune": Path("y")}
    assert "ftscale.finetune.spec" in _imported(ast.parse(code), modules)
