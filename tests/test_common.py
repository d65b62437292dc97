"""Shared helpers: atomic writes leave the old file or the new one, with ordinary permissions."""

from __future__ import annotations

import os

import pytest

from ftscale.common import default_workers, first_line, threads_per_worker, write_text_atomic


def test_atomic_write_has_ordinary_permissions_and_no_leftovers(tmp_path):
    mask = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "out.txt", "hello")
    finally:
        os.umask(mask)
    assert path.read_text() == "hello"
    assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_part(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(TypeError):
        write_text_atomic(path, 42)  # not text: fails while writing
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_first_line_and_worker_policy():
    assert first_line(ValueError("bad value\n  detail")) == "bad value"
    assert first_line(KeyError()) == "KeyError"
    assert threads_per_worker(2) == 1 and threads_per_worker(8) == 4 and threads_per_worker(64) == 4
    assert default_workers(3, 1, cores=2) == 2 and default_workers(1, 1, cores=8) == 1
    assert default_workers(10, 4, cores=2) == 1
