"""Issue 19, faults: `study run` killed (SIGKILL) at points spread over its run and resumed after
each ends with every planned run in the store exactly once and a report identical to an
uninterrupted run's; SIGINT stops it cleanly (exit 130, workers gone, nothing left running); a
second `study run` on a directory being run refuses, naming the first; a tampered record is run
again on resume and nothing finished is lost.

One tiny study (its own two-rung ladder, 6 runs, no bootstrap), so the ladder build itself is one
of the kill points. Kills wait for milestones in the cache, the store and the report files, never
for fixed times.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from study_helpers import ROOT

TINY = """
name = "tiny"
[ladder]
name = "tiny-faults"
[ladder.tokenizer]
vocab_size = 512
[ladder.recipe]
tokens = 4096
batch_size = 16
seq_len = 64
val_tokens = 2048
[[ladder.rungs]]
name = "a"
width = 16
layers = 1
heads = 2
ffn = 32
[[ladder.rungs]]
name = "b"
width = 24
layers = 1
heads = 2
ffn = 48
[task]
test_examples = 16
[methods]
fmt = {}
[sweeps.pretraining]
enabled = false
[sweeps.pet_size]
enabled = false
[sweeps.model_size]
holdout = "none"
[examples]
sizes = [16, 24, 32]
holdout = "none"
[train]
epochs = 1
min_steps = 2
evals = 1
dev_examples = 8
gen_examples = 2
max_new_tokens = 4
[analysis]
forms = ["multiplicative"]
bootstrap = 0
[run]
executor = "local"
"""
RUNS = 6
#: Report files that must come out byte for byte identical.
REPORT_FILES = ("fits.json", "summary.md", "report.html")


def _env(cache: Path) -> dict[str, str]:
    return {
        **os.environ,
        "FTSCALE_CACHE": str(cache),
        "PYTHONPATH": str(ROOT / "src"),
        "OMP_NUM_THREADS": "1",
    }


def _start(root: Path, cache: Path, study_dir: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "ftscale", "study", "run", str(root / "tiny.toml")]
    return subprocess.Popen(
        [*command, "--dir", str(study_dir), "--threads", "1", *extra],
        cwd=root,
        env=_env(cache),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _rows(study_dir: Path) -> list[dict]:
    path = study_dir / "study.sqlite"
    if not path.is_file():
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        db.row_factory = sqlite3.Row
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            return [dict(r) for r in db.execute("SELECT * FROM runs")]
        finally:
            db.close()
    except sqlite3.OperationalError:
        return []  # being created


def _ok(study_dir: Path) -> int:
    return sum(r["status"] == "ok" for r in _rows(study_dir))


def _wait(proc: subprocess.Popen, ready, timeout: float = 300) -> bool:
    """Poll ``ready()`` every 20 ms until it holds (True) or the process ends (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            return True
        time.sleep(0.02)
    raise AssertionError("milestone not reached in time")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, cache_dir):
    """A folder with the tiny study file; the session's model cache (its tokenizer is shared
    with the smoke ladder's; the tiny ladder is built by the first test that needs it)."""
    root = tmp_path_factory.mktemp("faults")
    (root / "tiny.toml").write_text(TINY, encoding="utf-8")
    (root / "cache").symlink_to(cache_dir)
    return root


def _milestones(cache: Path, study_dir: Path):
    """(name, condition) of each kill point, in the order a run reaches them."""
    ladders = cache / "ladders"
    return [
        ("ladder build", lambda: any(ladders.glob(".tmp-tiny-faults-*/*/tokens-*"))),
        ("mid-run", lambda: _ok(study_dir) >= RUNS // 2),
        ("analysis", lambda: _ok(study_dir) == RUNS),
        ("report writing", lambda: (study_dir / "summary.md").exists()),
    ]


def test_killed_at_each_point_and_resumed_equals_an_uninterrupted_run(tiny, cache_dir):
    """The first test of the module: the tiny ladder is not in the cache yet, so the first kill
    lands in its build (one run of the module alone builds it; the `clean` run reuses it)."""
    cache, study_dir = tiny / "cache", tiny / "killed"
    for stale in cache_dir.glob("ladders/tiny-faults-*"):
        shutil.rmtree(stale)  # a cache kept from an earlier session: build it again
    killed = []
    for name, ready in _milestones(cache, study_dir):
        proc = _start(tiny, cache, study_dir, "-q")
        if _wait(proc, ready):
            proc.send_signal(signal.SIGKILL)
            killed.append(name)
        proc.wait(timeout=60)
        rows = _rows(study_dir)
        keys = [r["key"] for r in rows]
        assert len(keys) == len(set(keys)) <= RUNS, name
    # Each point must have been hit (the report point may race a fast finish on an idle machine).
    assert killed[:3] == ["ladder build", "mid-run", "analysis"], killed
    final = _start(tiny, cache, study_dir, "-q")
    assert final.wait(timeout=300) == 0, final.stderr.read()[-2000:]
    rows = _rows(study_dir)
    assert len(rows) == RUNS and {r["status"] for r in rows} == {"ok"}
    assert all(r["attempts"] >= 1 for r in rows)
    clean = _clean(tiny)
    by_key = {r["key"]: r for r in _rows(clean)}
    assert set(by_key) == {r["key"] for r in rows}
    for row in rows:
        assert row["test_nll"] == by_key[row["key"]]["test_nll"]
    for name in REPORT_FILES:
        assert (study_dir / name).read_bytes() == (clean / name).read_bytes(), name
    assert not list(cache.glob("ladders/.tmp-*")), "a killed build left its temporary folder"


def _clean(tiny: Path) -> Path:
    """The uninterrupted run of the tiny study (made once; the ladder comes from the cache)."""
    study_dir = tiny / "clean"
    if not (study_dir / "fits.json").is_file():
        proc = _start(tiny, tiny / "cache", study_dir, "-q")
        assert proc.wait(timeout=600) == 0, proc.stderr.read()[-2000:]
    return study_dir


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").exists() else ""
        out += [int(p) for p in text.split()]
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_sigint_stops_workers_and_leaves_nothing_running(tiny):
    """With the process executor: Ctrl-C (SIGINT) mid-run ends the driver with 130 and one
    `interrupted` line, its worker processes are gone, no row is left `running`, and a resume
    completes the study (SIGTERM, 143: test_study_resilience)."""
    sig, code = signal.SIGINT, 130
    cache, study_dir = tiny / "cache", tiny / "sigint"
    proc = _start(tiny, cache, study_dir, "--executor", "process", "--workers", "2", "-q")
    assert _wait(proc, lambda: _ok(study_dir) >= 1 and len(_children(proc.pid)) >= 2)
    workers = _children(proc.pid)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("ftscale: interrupted; ") and "runs are in the store" in lines[-1]
    deadline = time.monotonic() + 60  # a loaded machine can take seconds to reap a pool
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers), "worker processes outlived the driver"
    rows = _rows(study_dir)
    assert "running" not in {r["status"] for r in rows}
    assert 1 <= sum(r["status"] == "ok" for r in rows) < RUNS or len(rows) == RUNS
    again = _start(tiny, cache, study_dir, "-q", "--no-report")
    assert again.wait(timeout=300) == 0
    assert sorted(r["status"] for r in _rows(study_dir)) == ["ok"] * RUNS


def test_a_second_run_on_one_directory_refuses_and_names_the_first(tiny):
    cache, study_dir = tiny / "cache", tiny / "locked"
    first = _start(tiny, cache, study_dir, "-q", "--no-report")
    assert _wait(
        first,
        lambda: (study_dir / ".lock").is_file() and "pid" in (study_dir / ".lock").read_text(),
    )
    second = _start(tiny, cache, study_dir, "-q", "--no-report")
    _, err = second.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.strip()]
    assert second.returncode == 2, err
    assert len(lines) == 1 and lines[0].startswith("ftscale: error: "), err
    assert f"pid {first.pid}" in lines[0] and "another `ftscale study run`" in lines[0]
    assert first.wait(timeout=300) == 0
    rows = _rows(study_dir)
    assert len(rows) == RUNS and all(r["attempts"] == 1 for r in rows), "a run ran twice"


def test_a_tampered_record_runs_again_and_nothing_finished_is_lost(tiny):
    cache, study_dir = tiny / "cache", tiny / "tampered"
    shutil.copytree(_clean(tiny), study_dir)
    before = {r["key"]: r for r in _rows(study_dir)}
    victim = sorted(before)[0]
    db = sqlite3.connect(study_dir / "study.sqlite")
    with db:
        db.execute("UPDATE runs SET record = '{\"test_nll\": 1.' WHERE key = ?", (victim,))
    db.close()
    status = subprocess.run(
        [sys.executable, "-m", "ftscale", "study", "status", str(study_dir)],
        env=_env(cache),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 2 and victim in status.stderr
    again = _start(tiny, cache, study_dir, "--no-report")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-2000:]
    assert victim in err and "cannot be read" in err
    after = {r["key"]: r for r in _rows(study_dir)}
    assert set(after) == set(before)
    for key, row in after.items():
        assert row["status"] == "ok" and json.loads(row["record"])["test_nll"] == row["test_nll"]
        assert row["test_nll"] == before[key]["test_nll"]
        expected = before[key]["attempts"] + (key == victim)
        assert row["attempts"] == expected, "a finished run was run again"
