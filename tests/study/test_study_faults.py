"""Issue 19, faults: `study run` killed (SIGKILL) at ten points spread over its run and resumed
after each ends with every planned run in the store exactly once and a report identical to an
uninterrupted run's, and the read-only commands read each killed store without writing to it;
SIGINT and SIGTERM stop it cleanly (exit 130 / 143, workers gone, nothing left running, finished
runs kept); a second `study run` on a directory being run refuses, naming the first; a tampered
record is run again on resume and nothing finished is lost; a disk that fills up mid-run is one
line and a resume completes the study.

One tiny study (its own two-rung ladder, 6 runs, no bootstrap), so the ladder build itself holds
kill points. Kills wait for milestones in the cache, the store and the report files, never for
fixed times.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from study_helpers import ROOT

TINY = """
name = "tiny"
[ladder]
name = "tiny-faults"
workers = 1           # rungs one after another in the driver: a later rung is a later point
[ladder.tokenizer]
vocab_size = 512
[ladder.recipe]
tokens = 16384
batch_size = 16
seq_len = 64
val_tokens = 2048
checkpoints = [8192]  # a checkpoint half-way through each rung: a point with work after it
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
min_steps = 16        # runs of 0.3-1.5 s: a store milestone polled every 20 ms is not overshot
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


@dataclass
class Run:
    """A `study run` process and when it started (Unix seconds, as the store's timestamps)."""

    proc: subprocess.Popen
    t0: float

    @property
    def pid(self) -> int:
        return self.proc.pid


def _start(root: Path, cache: Path, study_dir: Path, *extra: str, **popen) -> Run:
    command = [sys.executable, "-m", "ftscale", "study", "run", str(root / "tiny.toml")]
    t0 = time.time()
    proc = subprocess.Popen(
        [*command, "--dir", str(study_dir), "--threads", "1", *extra],
        cwd=root,
        env=_env(cache),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )
    return Run(proc, t0)


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


def _wait(run: Run, ready: Callable[[Run], bool], timeout: float = 300) -> bool:
    """Poll ``ready(run)`` every 20 ms until it holds (True) or the process ends (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run.proc.poll() is not None:
            return False
        if ready(run):
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


@dataclass
class Point:
    """A kill point: kill when ``ready(run)`` holds; ``landed(run)``, read after the kill, says
    whether the run died in this point's phase. A point that is not ``guaranteed`` may race a
    fast finish (the process is gone before the poll sees it) and be missed."""

    name: str
    ready: Callable[[Run], bool]
    landed: Callable[[Run], bool]
    guaranteed: bool = True


def _points(cache: Path, study_dir: Path) -> list[Point]:
    """The ten kill points, in the order a run reaches them. A store point needs a run started
    (or finished) by this process, so that a point overshot by one kill is not taken again at the
    next start-up."""
    ladders = cache / "ladders"

    def building(run: Run) -> bool:  # this process's temporary ladder folder exists
        return any(ladders.glob(f".tmp-tiny-faults-*-{run.pid}-*"))

    def checkpoint(rung: str) -> Callable[[Run], bool]:  # of `rung`, in this process's build
        return lambda run: any(ladders.glob(f".tmp-tiny-faults-*-{run.pid}-*/{rung}/tokens-*"))

    def published(run: Run) -> bool:
        return any(ladders.glob("tiny-faults-*"))

    def since(column: str) -> Callable[[Run], bool]:  # a run started / finished by this process
        return lambda run: any((r[column] or 0) >= run.t0 for r in _rows(study_dir))

    def stored(k: int) -> Callable[[Run], bool]:
        return lambda run: since("started_at")(run) and _ok(study_dir) >= k

    def ok_is(k: int) -> Callable[[Run], bool]:
        return lambda run: _ok(study_dir) == k

    def wrote(run: Run) -> bool:  # this process wrote fits.json, the first report file
        path = study_dir / "fits.json"
        return path.is_file() and path.stat().st_mtime >= run.t0

    def locked(run: Run) -> bool:  # this process holds the directory and made the store
        lock = study_dir / ".lock"
        named = lock.is_file() and f"pid {run.pid} " in lock.read_text()
        return named and (study_dir / "study.sqlite").is_file()

    def analysing(run: Run) -> bool:
        return _ok(study_dir) == RUNS and since("finished_at")(run)

    def negate(condition: Callable[[Run], bool]) -> Callable[[Run], bool]:
        return lambda run: not condition(run)

    return [
        Point("store created, ladder not begun", locked, negate(building)),
        Point("ladder: first rung's checkpoint", checkpoint("a"), negate(checkpoint("b"))),
        Point("ladder: later rung's checkpoint", checkpoint("b"), negate(published)),
        Point("plan stored, first run in progress", since("started_at"), ok_is(0)),
        Point("first run stored", stored(1), ok_is(1)),
        Point("1/3 of the runs stored", stored(2), ok_is(2)),
        Point("2/3 of the runs stored", stored(4), ok_is(4)),
        Point("last run in progress", stored(RUNS - 1), ok_is(RUNS - 1)),
        Point("analysis", analysing, negate(wrote)),
        Point("report writing", wrote, lambda run: True, guaranteed=False),
    ]


def _store_bytes(study_dir: Path) -> dict[str, bytes]:
    """The study folder's files with their bytes; SQLite's shared-memory index (-shm) by name
    only, since every reader of a store in WAL mode rewrites it."""
    return {
        p.name: p.read_bytes() if p.is_file() and not p.name.endswith("-shm") else b""
        for p in study_dir.iterdir()
    }


def _read_killed_store(study_dir: Path) -> None:
    """`study status` and `study export` (in this process: no start-up cost) read the store a
    killed run left, without a traceback, and write nothing to it or beside it."""
    from typer.testing import CliRunner

    from ftscale.cli import app

    before, runner = _store_bytes(study_dir), CliRunner()
    status = runner.invoke(app, ["study", "status", str(study_dir), "--json"])
    assert status.exception is None or isinstance(status.exception, SystemExit), status.exception
    if status.exit_code == 2:  # killed before its schema was committed (one transaction)
        assert "schema 0" in status.stderr and len(status.stderr.splitlines()) == 1
    else:
        assert status.exit_code == 0, status.output
        assert json.loads(status.stdout)["counts"]["ok"] == _ok(study_dir)
        out = study_dir.parent / "export.csv"
        export = runner.invoke(app, ["study", "export", str(study_dir), "-o", str(out)])
        rows = len(_rows(study_dir))
        assert export.exit_code == 0 and f"{rows} runs ->" in export.stdout, export.output
    assert _store_bytes(study_dir) == before


def test_killed_at_ten_points_and_resumed_equals_an_uninterrupted_run(tiny, cache_dir):
    """The first test of the module: the tiny ladder is not in the cache yet, so the first
    kills land in its build (one run of the module alone builds it; the `clean` run reuses
    it). Each kill is followed by a resume on the same directory, which the next point kills."""
    cache, study_dir = tiny / "cache", tiny / "killed"
    for stale in cache_dir.glob("ladders/tiny-faults-*"):
        shutil.rmtree(stale)  # a cache kept from an earlier session: build it again
    points, outcome = _points(cache, study_dir), {}
    for point in points:
        run = _start(tiny, cache, study_dir, "-q")
        killed = _wait(run, point.ready)
        if killed:
            run.proc.send_signal(signal.SIGKILL)
        run.proc.wait(timeout=60)
        outcome[point.name] = (killed and point.landed(run), _ok(study_dir))
        keys = [r["key"] for r in _rows(study_dir)]
        assert len(keys) == len(set(keys)) <= RUNS, point.name
        _read_killed_store(study_dir)
    missed = [p.name for p in points if p.guaranteed and not outcome[p.name][0]]
    assert not missed, f"kill points missed: {missed}; (landed, ok runs) per point: {outcome}"
    final = _start(tiny, cache, study_dir, "-q")
    _, err = final.proc.communicate(timeout=300)
    assert final.proc.returncode == 0, err[-2000:]
    rows = _rows(study_dir)
    assert len(rows) == len({r["key"] for r in rows}) == RUNS
    assert {r["status"] for r in rows} == {"ok"}
    clean = {r["key"]: r for r in _rows(_clean(tiny))}
    assert {r["key"]: r["test_nll"] for r in rows} == {k: r["test_nll"] for k, r in clean.items()}
    for name in REPORT_FILES:
        assert (study_dir / name).read_bytes() == (tiny / "clean" / name).read_bytes(), name
    assert not list(cache.glob("ladders/.tmp-tiny-faults-*")), "a killed build left its folder"


def _clean(tiny: Path) -> Path:
    """The uninterrupted run of the tiny study (made once; the ladder comes from the cache)."""
    study_dir = tiny / "clean"
    if not (study_dir / "fits.json").is_file():
        run = _start(tiny, tiny / "cache", study_dir, "-q")
        _, err = run.proc.communicate(timeout=600)
        assert run.proc.returncode == 0, err[-2000:]
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


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_a_signal_stops_the_workers_and_a_resume_completes(tiny, sig, code):
    """With the process executor, Ctrl-C (SIGINT) or SIGTERM to the driver mid-run: exit 130 /
    143 with one `interrupted` line and no traceback; its worker processes (and the resource
    tracker of multiprocessing) are gone; the store is consistent (integrity checked, no row
    left `running`, every run finished before the signal kept as it was); a resume completes
    the study without running those again (SIGTERM with the local executor:
    test_study_resilience)."""
    cache, study_dir = tiny / "cache", tiny / sig.name.lower()
    run = _start(tiny, cache, study_dir, "--executor", "process", "--workers", "2", "-q")
    assert _wait(run, lambda r: _ok(study_dir) >= 1 and len(_children(r.pid)) >= 2)
    workers = _children(run.pid)
    finished = {r["key"]: r for r in _rows(study_dir) if r["status"] == "ok"}
    run.proc.send_signal(sig)
    _, err = run.proc.communicate(timeout=120)
    assert run.proc.returncode == code, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("ftscale: interrupted; ") and "runs are in the store" in lines[-1]
    assert "Traceback" not in err, err[-2000:]
    deadline = time.monotonic() + 60  # a loaded machine can take seconds to reap a pool
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers), "worker processes outlived the driver"
    rows = {r["key"]: r for r in _rows(study_dir)}
    assert len(rows) == RUNS and "running" not in {r["status"] for r in rows.values()}
    assert sum(r["status"] == "ok" for r in rows.values()) < RUNS, "finished before the signal"
    for key, row in finished.items():
        assert rows[key]["status"] == "ok" and rows[key]["test_nll"] == row["test_nll"]
    again = _start(tiny, cache, study_dir, "-q", "--no-report")
    assert again.proc.wait(timeout=300) == 0, again.proc.stderr.read()[-2000:]
    after = {r["key"]: r for r in _rows(study_dir)}
    assert sorted(r["status"] for r in after.values()) == ["ok"] * RUNS
    assert all(after[k]["attempts"] == row["attempts"] for k, row in finished.items())


def test_a_second_run_on_one_directory_refuses_and_names_the_first(tiny):
    cache, study_dir = tiny / "cache", tiny / "locked"
    first = _start(tiny, cache, study_dir, "-q", "--no-report")
    lock = study_dir / ".lock"
    assert _wait(first, lambda run: lock.is_file() and "pid" in lock.read_text())
    second = _start(tiny, cache, study_dir, "-q", "--no-report")
    _, err = second.proc.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.strip()]
    assert second.proc.returncode == 2, err
    assert len(lines) == 1 and lines[0].startswith("ftscale: error: "), err
    assert f"pid {first.pid}" in lines[0] and "another `ftscale study run`" in lines[0]
    assert first.proc.wait(timeout=300) == 0
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
    _, err = again.proc.communicate(timeout=300)
    assert again.proc.returncode == 0, err[-2000:]
    assert victim in err and "cannot be read" in err
    after = {r["key"]: r for r in _rows(study_dir)}
    assert set(after) == set(before)
    for key, row in after.items():
        assert row["status"] == "ok" and json.loads(row["record"])["test_nll"] == row["test_nll"]
        assert row["test_nll"] == before[key]["test_nll"]
        expected = before[key]["attempts"] + (key == victim)
        assert row["attempts"] == expected, "a finished run was run again"


def _fill(path: Path) -> None:
    """Write zeros to ``path`` until its disk refuses even one byte more (ENOSPC)."""
    with path.open("wb", buffering=0) as handle:
        for chunk in (bytes(1 << 16), bytes(1 << 12), b"\0"):
            try:
                while handle.write(chunk):
                    pass
            except OSError:
                continue


def disk_full_scenario(root: str, cache: str, mount: str) -> None:
    """Run in a private user and mount namespace: an 8 MiB tmpfs at ``mount`` holds the study
    directory; once two runs are stored, another writer fills the disk and the run meets it;
    then that space is freed and the study resumed. Prints what happened as one JSON line."""
    mount_dir, study_dir = Path(mount), Path(mount) / "x"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "none", mount], check=True)
    run = _start(Path(root), Path(cache), study_dir, "-q")
    assert _wait(run, lambda r: _ok(study_dir) >= 2), "the study ended before two runs"
    _fill(mount_dir / "filler")
    _, err = run.proc.communicate(timeout=300)
    seen = {"code": run.proc.returncode, "stderr": err, "rows": _rows(study_dir)}
    (mount_dir / "filler").unlink()
    again = _start(Path(root), Path(cache), study_dir, "-q")
    _, err = again.proc.communicate(timeout=300)
    seen.update(again_code=again.proc.returncode, again_stderr=err, final=_rows(study_dir))
    seen["files"] = sorted(os.listdir(study_dir))
    print(json.dumps(seen))


@pytest.mark.usefixtures("user_mounts")
def test_a_disk_that_fills_up_mid_run_is_one_line_and_a_resume_completes(tiny, tmp_path):
    """The disk of the study directory (a real tmpfs) fills up after two runs: `study run` ends
    with one error line (exit 2, no traceback) naming the directory, SQLite's reason, the bytes
    left and the finished runs it kept; with the space freed, a resume completes the study and
    runs none of those again."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    call = f"import test_study_faults as t; t.disk_full_scenario({str(tiny)!r}, "
    call += f"{str(tiny / 'cache')!r}, {str(mount)!r})"
    env = {**_env(tiny / "cache"), "PYTHONPATH": f"{ROOT / 'tests' / 'study'}:{ROOT / 'src'}"}
    done = subprocess.run(
        ["unshare", "-r", "-m", sys.executable, "-c", call],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    lines = [line for line in seen["stderr"].splitlines() if line.strip()]
    assert seen["code"] == 2 and len(lines) == 1, seen["stderr"][-3000:]
    kept = {r["key"]: r for r in seen["rows"] if r["status"] == "ok"}
    assert len(kept) >= 2
    assert lines[0].startswith(f"ftscale: error: {mount / 'x'}: cannot write: "), lines[0]
    assert "disk is full" in lines[0] and " bytes free on its disk)" in lines[0], lines[0]
    assert f"; {len(kept)} finished runs are kept in the store; free space" in lines[0], lines[0]
    assert seen["again_code"] == 0, seen["again_stderr"][-3000:]
    final = {r["key"]: r for r in seen["final"]}
    assert len(final) == RUNS and {r["status"] for r in final.values()} == {"ok"}
    for key, row in kept.items():
        assert final[key]["test_nll"] == row["test_nll"]
        assert final[key]["attempts"] == row["attempts"], "a finished run was run again"
    assert set(REPORT_FILES) <= set(seen["files"])
