"""``ftscale.models`` and ``ftscale.data`` stay below the finetuning, study and laws layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ftscale"
FORBIDDEN = ("ftscale.finetune", "ftscale.study", "ftscale.laws")


@pytest.mark.parametrize("package", ["models", "data"])
def test_no_upward_imports(package):
    files = sorted((SRC / package).glob("*.py"))
    assert files
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(FORBIDDEN), f"{path.name} imports {name}"
