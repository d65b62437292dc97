"""The hostile-input harness: every case asserts the CLI's promise for bad input.

A case is a command line (and, where needed, files prepared in a scratch folder). It must end
with exit status 2 (or the status the case names), exactly one non-empty stderr line that starts
with ``ftscale: error:``, no traceback anywhere in the output, and no file created, changed or
removed in the scratch folder. Cases run in-process through typer's test runner, so most take
milliseconds; the few that would load torch do so once per session.

Usage in a test module::

    CASES = [("empty table", ["fit", "{empty}"], "no rows"), ...]

    @pytest.mark.parametrize(("name", "args", "match"), CASES, ids=[c[0] for c in CASES])
    def test_fit_hostile(hostile, name, args, match):
        hostile(args, match=match)

Placeholders ``{NAME}`` in arguments are replaced by paths of files the test wrote with
``hostile.file(NAME, text)`` (or ``hostile.folder``) before the call.
"""

from __future__ import annotations

import re
import traceback
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftscale.cli import app


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time (ns)."""
    out = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        out[str(path.relative_to(root))] = (
            stat.st_size if path.is_file() else -1,
            stat.st_mtime_ns,
        )
    return out


class Hostile:
    """Callable harness bound to one scratch folder (see the module docs)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths: dict[str, Path] = {}
        self.runner = CliRunner()

    def file(self, name: str, content: str | bytes, filename: str | None = None) -> Path:
        """Write a file under the scratch folder; ``{name}`` in arguments becomes its path."""
        path = self.root / (filename or name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        self.paths[name] = path
        return path

    def folder(self, name: str) -> Path:
        """Make a folder under the scratch folder; ``{name}`` in arguments becomes its path."""
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        self.paths[name] = path
        return path

    def expand(self, args: list[str]) -> list[str]:
        values = {name: str(path) for name, path in self.paths.items()}
        values["tmp"] = str(self.root)
        return [
            str(a).format(**values) if "{" in str(a) and "}" in str(a) else str(a) for a in args
        ]

    def __call__(self, args: list[str], match: str | None = None, code: int = 2) -> str:
        """Run ``ftscale ARGS`` and assert the bad-input contract; returns the error line."""
        args = self.expand(args)
        before = _snapshot(self.root)
        result = self.runner.invoke(app, args, catch_exceptions=True)
        shown = " ".join(args)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            trace = "".join(traceback.format_exception(result.exception))
            pytest.fail(f"ftscale {shown}: raised instead of a one-line error:\n{trace}")
        output = result.stdout + result.stderr
        assert "Traceback" not in output, f"ftscale {shown}: traceback in output:\n{output}"
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == code, (
            f"ftscale {shown}: exit {result.exit_code}, expected {code}; stderr:\n{result.stderr}"
        )
        assert len(lines) == 1, f"ftscale {shown}: expected one stderr line, got:\n{result.stderr}"
        assert lines[0].startswith("ftscale: error: "), f"ftscale {shown}: {lines[0]!r}"
        if match is not None:
            assert re.search(match, lines[0]), f"ftscale {shown}: {lines[0]!r} !~ {match!r}"
        assert _snapshot(self.root) == before, f"ftscale {shown}: changed files in {self.root}"
        return lines[0]


@pytest.fixture
def hostile(tmp_path, monkeypatch) -> Hostile:
    """A :class:`Hostile` harness whose scratch folder is also the working directory."""
    monkeypatch.chdir(tmp_path)
    return Hostile(tmp_path)
