"""Dependencies point one way (README's layout): ``laws`` knows nothing of torch or of the other
layers; ``data`` and ``models`` stay below finetuning, the study and the laws (``finetune`` loads
its base models through ``models``); ``finetune`` knows nothing of the study or the laws; no
module of ``src`` imports itself back through others (no import cycle)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ftscale"

FORBIDDEN = {
    "laws": (
        "torch",
        "transformers",
        "peft",
        "ftscale.data",
        "ftscale.models",
        "ftscale.finetune",
        "ftscale.study",
        "ftscale.report",
        "ftscale.commands",
    ),
    "data": ("ftscale.finetune", "ftscale.study", "ftscale.laws", "ftscale.models"),
    "models": ("ftscale.finetune", "ftscale.study", "ftscale.laws"),
    "finetune": ("ftscale.study", "ftscale.laws", "ftscale.commands"),
    "report": (
        "torch",
        "transformers",
        "peft",
        "ftscale.finetune",
        "ftscale.models",
        "ftscale.study",
        "ftscale.commands",
    ),
    "study": ("ftscale.commands",),
}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_forbidden_imports(package):
    files = sorted((SRC / package).glob("*.py"))
    assert files
    for path in files:
        for name in _imports(path):
            assert not name.startswith(FORBIDDEN[package]), f"{package}/{path.name} imports {name}"


def test_cli_and_laws_never_load_torch():
    """`ftscale fit` starts in a tenth of a second: torch loads only for commands that train."""
    code = (
        "import sys, ftscale.cli, ftscale.laws, ftscale.commands.laws, ftscale.report.figures, "
        "ftscale.report.study_report, ftscale.report.study_figures, ftscale.study.analysis, "
        "ftscale.study.store, ftscale.study.recommend; "
        "sys.exit('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(SRC.parent)})
    assert proc.returncode == 0, "importing the CLI or the laws layer imported torch"
