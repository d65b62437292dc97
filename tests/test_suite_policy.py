"""The suite's own policy holds: tests marked with one ``xdist_group`` run on one worker (the
session study and the coverage simulation are built once, not once per worker). pytest 9.2's
structured node ids made pytest-xdist 3.8 ignore the marks silently (pytest-dev/pytest-xdist#1386),
which doubled the suite's most expensive fixtures without failing anything."""

from __future__ import annotations

import subprocess
import sys

GROUPED = '''
import os
import pathlib
import pytest

pytestmark = pytest.mark.xdist_group("one")

@pytest.mark.parametrize("i", range(6))
def test_where(i):
    here = pathlib.Path(__file__).parent / f"worker-{i}"
    here.write_text(os.environ["PYTEST_XDIST_WORKER"])
'''


def test_an_xdist_group_runs_on_one_worker(tmp_path):
    (tmp_path / "test_grouped.py").write_text(GROUPED, encoding="utf-8")
    (tmp_path / "test_other.py").write_text("def test_other():\n    pass\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-q",
         "-p", "no:cacheprovider", "-c", "/dev/null", "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    workers = [path.read_text() for path in sorted(tmp_path.glob("worker-*"))]
    assert len(workers) == 6 and len(set(workers)) == 1, workers
