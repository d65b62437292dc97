"""Kill the study at random points and restart it; force a run to fail; Ray gives the same store."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from study_helpers import QUICK_TRAIN, ROOT, cli, write_study

#: A small study: fmt only, model-size sweep only (3 rungs x 3 D_f = 9 runs).
SMALL = {
    "name": "small",
    "methods": {"fmt": {}},
    "sweeps": {"pretraining": {"enabled": False}, "pet_size": {"enabled": False}},
    "run": {"executor": "local"},
    "train": QUICK_TRAIN,
    "analysis": {"bootstrap": 0},
}


QUIET = ("--no-report", "-q")


def _store(study_dir):
    with sqlite3.connect(study_dir / "study.sqlite") as db:
        db.row_factory = sqlite3.Row
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {r["key"]: dict(r) for r in db.execute("SELECT * FROM runs")}


@pytest.mark.parametrize("pack", ["1", "3"])
def test_killed_at_random_points_and_restarted_finishes_each_run_once(
    finished_study, cache_dir, tmp_path, pack
):
    """Packed or not, a study killed mid-way resumes run by run: each run in the store once."""
    path = write_study(tmp_path / "small.toml", SMALL, pet_sizes={})
    study_dir = tmp_path / "small"
    env = {**os.environ, "FTSCALE_CACHE": str(cache_dir), "PYTHONPATH": str(ROOT / "src")}
    rng = random.Random(8)
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-m", "ftscale", "study", "run", str(path), *QUIET, "--pack", pack],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(3.0, 9.0))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1
    if (study_dir / "study.sqlite").exists():
        partial = _store(study_dir)
        assert all(r["status"] in ("pending", "running", "ok", "failed") for r in partial.values())
    # The keys leave threads out, so the process pool finishes what the local runs started.
    result = cli(
        ["study", "run", str(path), "--no-report", "--executor", "process", "--pack", pack],
        tmp_path,
        cache_dir,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = _store(study_dir)
    assert len(rows) == 9
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert all(r["record"] is not None and r["test_nll"] is not None for r in rows.values())


def test_a_failed_run_is_recorded_and_the_study_completes(finished_study, cache_dir, tmp_path):
    changes = {
        **SMALL,
        "name": "failing",
        "methods": {"fmt": {}, "lora": {"rank": 2}},
        "train": {**QUICK_TRAIN, "lr": {"fmt": 1e30}},  # a non-finite loss within a few steps
        "examples": {"sizes": [50, 100]},
        "run": {"executor": "process"},
    }
    path = write_study(tmp_path / "failing.toml", changes, pet_sizes={})
    result = cli(["study", "run", str(path), "--no-report"], tmp_path, cache_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = _store(tmp_path / "failing")
    by_method = {}
    for r in rows.values():
        by_method.setdefault(r["method"], set()).add(r["status"])
    assert by_method["lora"] == {"ok"}
    assert "failed" in by_method["fmt"]
    failed = [r for r in rows.values() if r["status"] == "failed"]
    assert all(r["error"] for r in failed)
    status = cli(["study", "status", str(tmp_path / "failing")], tmp_path, cache_dir)
    assert status.returncode == 0 and "failed" in status.stdout
    # --retry-failed runs them again (they fail again: the rate is still impossible).
    again = cli(["study", "run", str(path), "--no-report", "--retry-failed"], tmp_path, cache_dir)
    assert again.returncode == 0
    attempts = {r["key"]: r["attempts"] for r in _store(tmp_path / "failing").values()}
    assert all(attempts[r["key"]] == 2 for r in failed)


def test_a_packed_study_stores_the_records_of_one_run_at_a_time(
    finished_study, cache_dir, tmp_path
):
    from ftscale.study.config import load_study
    from ftscale.study.executors import ExecutorOptions
    from ftscale.study.runner import run_study

    path = write_study(tmp_path / "packs.toml", {**SMALL, "name": "packs"}, pet_sizes={})
    study = load_study(path)
    options = ExecutorOptions(threads=1)
    for pack in (1, 3):
        summary = run_study(
            study,
            tmp_path / f"pack{pack}",
            executor="local",
            options=options,
            report=False,
            pack=pack,
        )
        assert summary.ok == 9
    alone, packed = _store(tmp_path / "pack1"), _store(tmp_path / "pack3")
    assert set(alone) == set(packed)
    for key, row in alone.items():
        a, b = json.loads(row["record"]), json.loads(packed[key]["record"])
        assert b["test_nll"] == pytest.approx(a["test_nll"], abs=1e-3)
        assert b["best_step"] == a["best_step"] and b["steps"] == a["steps"]


def test_ray_executor_gives_the_same_store_as_local(finished_study, cache_dir, tmp_path):
    ray = pytest.importorskip("ray")
    from ftscale.study.config import load_study
    from ftscale.study.executors import ExecutorOptions
    from ftscale.study.runner import run_study

    # One D_f per rung: three runs show the executor, and Ray's start-up dominates the rest
    # (a nine-run version took 30 s alone and four minutes beside the other xdist worker).
    one_size = {**SMALL, "name": "raycheck", "examples": {"sizes": [50], "holdout": "none"}}
    path = write_study(tmp_path / "raycheck.toml", one_size, pet_sizes={})
    study = load_study(path)
    options = ExecutorOptions(threads=1, workers=2)
    local = run_study(study, tmp_path / "local", executor="local", options=options, report=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_study(study, tmp_path / "ray", executor="ray", options=options, report=False)
    finally:
        ray.shutdown()
    assert local.ok == remote.ok == 3
    a, b = _store(tmp_path / "local"), _store(tmp_path / "ray")
    assert set(a) == set(b)
    for key in a:
        assert a[key]["status"] == b[key]["status"]
        assert a[key]["test_nll"] == pytest.approx(b[key]["test_nll"], abs=1e-9)


def test_sigterm_leaves_the_store_consistent_and_says_how_to_resume(
    finished_study, cache_dir, tmp_path
):
    path = write_study(tmp_path / "term.toml", {**SMALL, "name": "term"}, pet_sizes={})
    study_dir = tmp_path / "term"
    env = {**os.environ, "FTSCALE_CACHE": str(cache_dir), "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftscale", "study", "run", str(path), "--no-report"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        try:
            if any(r["status"] == "ok" for r in _store(study_dir).values()):
                break
        except (sqlite3.Error, OSError, AssertionError):
            continue
    assert proc.poll() is None, "the study finished before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("ftscale: interrupted; ") and "runs are in the store" in last
    rows = _store(study_dir)
    assert "running" not in {r["status"] for r in rows.values()}
    assert sum(r["status"] == "ok" for r in rows.values()) >= 1


def dying_worker(kind: str, spec: str, threads: int) -> dict:
    """A worker's task for the test below: ``spec`` "die" kills its process (as the kernel's
    out-of-memory killer would), any other answers at once."""
    import os
    import time

    if spec == "die":
        os._exit(9)
    time.sleep(0.2)  # let the tasks overlap, so that the death breaks a pool with work in it
    return {"status": "ok", "record": {"spec": spec}, "search": None, "error": None, "wall_s": 0}


def test_a_worker_that_dies_fails_its_own_run_and_the_sweep_goes_on():
    from ftscale.study.executors import ExecutorOptions, ProcessExecutor

    executor = ProcessExecutor(ExecutorOptions(workers=2, threads=1))
    executor.target = dying_worker
    tasks = [(f"t{i}", "run", "die" if i == 3 else f"ok{i}") for i in range(8)]
    outcomes = dict(executor.map(tasks))
    assert sorted(outcomes) == sorted(t for t, _, _ in tasks)  # every task answered, once
    assert outcomes["t3"]["status"] == "failed" and "worker died" in outcomes["t3"]["error"]
    assert all(outcomes[f"t{i}"]["status"] == "ok" for i in range(8) if i != 3)
    assert executor.pool is None  # no pool left behind
