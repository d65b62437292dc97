"""Suite-wide policy: the tests run in parallel (pytest-xdist, one worker per core), each worker
and every process it starts on one thread, and the tests that share the session's smoke ladder
and finished study run on one worker so that both are built once.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

# One thread per process is the fastest on a small shared CPU (a worker's torch and the CLI
# processes it starts all read this); set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")

#: The session fixtures (tests/study/conftest.py) that build the smoke ladder and a study once.
SESSION_FIXTURES = {"cache_dir", "finished_study"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SESSION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("session-study"))


@pytest.fixture(scope="session")
def user_mounts(tmp_path_factory) -> None:
    """Skip the test unless this user may mount a tmpfs in a private user and mount namespace
    (``unshare -r -m``): how the tests make a full disk or a read-only folder without root."""
    if shutil.which("unshare") is None:
        pytest.skip("no `unshare` here")
    where = tmp_path_factory.mktemp("probe")
    command = f"mount -t tmpfs -o size=64k none {where}"
    probe = subprocess.run(["unshare", "-r", "-m", "sh", "-c", command], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("no user+mount namespace for a tmpfs here")
