"""Running a study: build the base models, plan, search learning rates, run, store, report.

:func:`run_study` is what ``ftscale study run`` calls. Every step can be interrupted and resumed:
the ladder build is atomic, the store keeps each run's outcome in one transaction, finished runs
are skipped on the next call, rows left ``running`` by a killed process run again, and
learning-rate searches are stored so a resumed study does not repeat them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ftscale.errors import Interrupted, UserError
from ftscale.study.config import Study
from ftscale.study.executors import ExecutorOptions, make_executor
from ftscale.study.plan import DATA_FOLDER, Plan, make_plan, materialise_data, pack_runs, pack_size
from ftscale.study.store import STORE_FILE, Store
from ftscale.study.validate import LOCK_FILE, check_study_dir, locked_error, preflight

__all__ = ["LOCK_FILE", "RunSummary", "check_study_dir", "locked", "run_study", "status"]

@dataclass
class RunSummary:
    """What one ``run_study`` call did."""

    study_dir: Path
    planned: int
    ran: int
    ok: int
    failed: int
    skipped: int
    wall_s: float
    report: dict = field(default_factory=dict)


@contextlib.contextmanager
def locked(study_dir: Path):
    """Hold the study directory's lock (``fcntl.flock`` on :data:`LOCK_FILE`, released by the
    kernel when the process dies, even by SIGKILL); the lock file names the holder, and a second
    driver gets a one-line error naming it."""
    handle = open(study_dir / LOCK_FILE, "a+")  # noqa: SIM115 (held for the whole block)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise locked_error(study_dir, handle.read()) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.ctime()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def run_study(
    study: Study,
    study_dir: Path,
    *,
    executor: str | None = None,
    options: ExecutorOptions | None = None,
    retry_failed: bool = False,
    cache: str | Path | None = None,
    say: Callable[[str], None] | None = None,
    progress: str = "auto",
    report: bool = True,
    pack: int | str | None = None,
    yes: bool = False,
) -> RunSummary:
    """Run ``study`` into ``study_dir`` (see the module docs) after checking all of it
    (:mod:`ftscale.study.validate`: nothing is written when a check fails; ``yes`` accepts a
    cost above the limit). ``progress`` is ``"bar"``, ``"lines"``, ``"none"`` or ``"auto"`` (a
    bar on a terminal); ``pack`` the runs per pack (None: the study file's ``[run] pack``; see
    :func:`ftscale.study.plan.pack_size`). A full disk or a folder that turns read-only is one
    :class:`UserError` line; every run already stored stays."""
    start = time.perf_counter()
    config = study.config
    options = options or _config_options(config)
    name = executor or config.run.executor
    runner = make_executor(name, options)
    say = say or (lambda message: None)
    study_dir = Path(study_dir).absolute()
    check_study_dir(study_dir, study)
    preflight(study, study_dir, cache=cache, executor=name, workers=_workers(runner), yes=yes)
    size = pack_size(config.run.pack if pack is None else pack, config.train.device)
    fresh = [p for p in (study_dir, study_dir / STORE_FILE) if not p.exists()]
    try:
        study_dir.mkdir(exist_ok=True)
        with locked(study_dir), Store(study_dir / STORE_FILE, create=True) as store:
            summary = _run_locked(study, study_dir, store, runner, size=size,
                                  retry_failed=retry_failed, cache=cache, say=say,
                                  progress=progress)
            counts = store.counts()
    except (OSError, sqlite3.OperationalError) as exc:
        error = _write_error(study_dir, exc)
        _remove_if_empty(fresh)
        raise error from None
    if counts.get("failed"):
        say(
            f"{counts['failed']} run(s) failed: `ftscale study status {study_dir}` lists them; "
            "rerun with --retry-failed to try them again"
        )
    if report and counts.get("ok"):
        from ftscale.study.reporting import write_report

        summary.report = {k: str(v) for k, v in write_report(study_dir).items()}
    elif report:
        say("no run finished: no report written")
    summary.wall_s = time.perf_counter() - start
    return summary


def _run_locked(study, study_dir, store, runner, *, size, retry_failed, cache, say,
                progress) -> RunSummary:
    """The body of :func:`run_study` once the directory is locked and the store open."""
    _record_study(store, study)
    bad = store.unreadable()
    if bad:
        store.reset_runs(bad)
        say(f"{len(bad)} run(s) had a record that cannot be read; running them again: "
            + ", ".join(bad[:8]) + (" ..." if len(bad) > 8 else ""))
    plan = _prepare(study, study_dir, store, cache=cache, say=say, progress=progress)
    plan = _resolve_learning_rates(plan, store, runner, say)
    store.sync_plan(plan.runs)
    todo = store.to_run(retry_failed)
    skipped = len(plan) - len(todo)
    say(
        f"study {study.name}: {len(plan)} runs planned, {skipped} already in the store, "
        f"{len(todo)} to run on {runner.describe(len(todo))}"
    )
    outcomes = _execute(store, runner, todo, plan, progress=progress, say=say, size=size)
    return RunSummary(
        study_dir=study_dir,
        planned=len(plan),
        ran=len(outcomes),
        ok=sum(o == "ok" for o in outcomes.values()),
        failed=sum(o != "ok" for o in outcomes.values()),
        skipped=skipped,
        wall_s=0.0,
    )


def _workers(runner) -> int:
    """Parallel runs for the cost estimate: the process pool's workers, else the option, 1."""
    if runner.name == "process":
        return runner.workers(0)
    return max(1, runner.options.workers)


def _remove_if_empty(made: list[Path]) -> None:
    """After a failed write, remove the study directory or store this call made when no run
    finished in it (a store that could not even take its schema would block the rerun)."""
    store = next((p for p in made if p.name == STORE_FILE), None)
    if store is None:
        return
    try:
        with Store(store, readonly=True) as existing:
            counts = existing.counts()
        if counts["ok"] + counts["failed"]:
            return
    except UserError:
        pass  # no schema at all: nothing in it
    if store.parent in made:
        shutil.rmtree(store.parent, ignore_errors=True)
        return
    for path in store.parent.glob(STORE_FILE + "*"):
        path.unlink(missing_ok=True)


def _write_error(study_dir: Path, exc: BaseException) -> UserError:
    """A write that failed (full disk, read-only folder, permissions) as one line."""
    from ftscale.common import first_line

    reason = getattr(exc, "strerror", None) or first_line(exc)
    where = getattr(exc, "filename", None) or study_dir
    kept = ""
    store = study_dir / STORE_FILE
    if store.is_file():
        try:
            with Store(store, readonly=True) as existing:
                counts = existing.counts()
            kept = f"; {counts['ok'] + counts['failed']} finished runs are kept in the store"
        except UserError:
            pass
    try:
        free = shutil.disk_usage(study_dir if study_dir.is_dir() else study_dir.parent).free
    except OSError:
        free = None
    space = f" ({free:,} bytes free on its disk)" if free is not None and free < 2**24 else ""
    return UserError(f"{where}: cannot write: {reason}{space}{kept}; free space or fix the "
                     "folder, then rerun to resume")


def _config_options(config) -> ExecutorOptions:
    """Executor options from the study file's ``[run]`` table."""
    return ExecutorOptions(
        workers=config.run.workers,
        threads=config.run.threads,
        num_cpus=config.run.num_cpus,
        num_gpus=config.run.num_gpus,
    )


def _record_study(store: Store, study: Study) -> None:
    """The study file and its ladder, stored beside the runs (status and the report read them)."""
    store.set_meta(
        study=study.name,
        origin=study.origin,
        config=study.config.model_dump(mode="json"),
        ladder=study.ladder.model_dump(mode="json"),
    )


def _prepare(study: Study, study_dir: Path, store: Store, *, cache, say, progress: str) -> Plan:
    """Build the ladder, write the capped data sets and plan the runs; Ctrl-C here says how many
    runs the store already holds."""
    try:
        _build_ladder(study, cache, say, progress)
        materialise_data(study, study_dir / DATA_FOLDER)
        return make_plan(study, study_dir, cache)
    except KeyboardInterrupt as exc:
        counts = store.counts()
        raise Interrupted(
            f"{counts['ok'] + counts['failed']} runs are in the store (interrupted before "
            "running; an unfinished ladder build starts again); rerun to resume",
            getattr(exc, "exit_code", 130),
        ) from None


def _build_ladder(study: Study, cache, say, progress: str) -> None:
    from ftscale.models.ladder import build_ladder, entry_path, is_complete

    if is_complete(entry_path(study.ladder, cache)):
        return
    say(f"building ladder {study.ladder.name} (base models; cached for later studies)")
    t0 = time.perf_counter()
    try:
        path, _ = build_ladder(study.ladder, cache, progress=progress != "none" and _tty(progress))
    except (OSError, RuntimeError) as exc:  # a full disk, a folder gone read-only, memory
        from ftscale.common import first_line

        raise UserError(f"ladder {study.ladder.name}: build failed: {first_line(exc)}") from None
    say(f"ladder built in {time.perf_counter() - t0:.0f} s: {path}")


def _tty(progress: str) -> bool:
    return progress == "bar" or (progress == "auto" and sys.stderr.isatty())


def _resolve_learning_rates(plan: Plan, store: Store, runner, say) -> Plan:
    """Replace ``learning_rate = "auto"`` by each group's searched rate: one search per method
    and base model (:func:`ftscale.finetune.lr_search.search_group`), run through the executor on
    the group's representative job for the groups the store does not have yet."""
    from ftscale.finetune.lr_search import search_group

    groups: dict[str, list] = {}
    for run in plan.runs:
        if run.job.train_config.learning_rate == "auto":
            groups.setdefault(search_group(run.method, run.job), []).append(run)
    missing = {g: runs for g, runs in groups.items() if store.lr_search(g) is None}
    if missing:
        say(f"searching learning rates for {len(missing)} (method, base model) group(s)")
        try:
            _search_groups(missing, store, runner, say)
        except KeyboardInterrupt as exc:
            runner.close()
            done = len(store.lr_searches())
            raise Interrupted(
                f"{done} of {len(groups)} learning-rate searches are in the store; rerun to resume",
                getattr(exc, "exit_code", 130),
            ) from None
    for group, runs in groups.items():
        rate = store.lr_search(group)
        for run in runs:
            run.job = run.job.replace(learning_rate=rate)
    return plan


def _search_groups(groups: dict[str, list], store: Store, runner, say) -> None:
    """Search each group's rate and store it; a search that fails falls back to the method's
    default rate (and says so)."""
    from ftscale.finetune.lr_search import representative

    tasks = []
    for group, runs in groups.items():
        job = representative([r.job for r in runs])
        tasks.append((group, "search", job.to_json()))
    for group, outcome in runner.map(tasks):
        run = groups[group][0]
        search = outcome.get("search")
        if search is None:
            search = {
                "chosen": run.job.method.default_learning_rate,
                "error": outcome.get("error"),
                "fallback": True,
            }
            say(
                f"learning-rate search {group} failed ({outcome.get('error')}); "
                f"using the default {search['chosen']:g}"
            )
        store.save_lr_search(group, run.method, run.job.model, run.job.revision, search)


def _execute(store: Store, runner, todo: list[str], plan: Plan, *, progress: str, say, size: int):
    """Run ``todo`` through the executor in packs of at most ``size`` runs, storing each run's
    outcome as it arrives (one row per run, so a killed study resumes run by run)."""
    by_key = plan.by_key()
    outcomes: dict[str, str] = {}
    if not todo:
        return outcomes
    packs = {
        group[0].key: [r.key for r in group] for group in pack_runs([by_key[k] for k in todo], size)
    }

    def tasks():
        for first, keys in packs.items():
            for key in keys:
                store.mark_running(key)
            if len(keys) == 1:
                yield first, "run", store.spec(first)
            else:
                yield first, "pack", json.dumps([store.spec(k) for k in keys])

    bar = _Progress(len(todo), progress, say)
    try:
        for first, outcome in runner.map(
            list(tasks()) if runner.name != "local" else _Lazy(tasks())
        ):
            for key, result in _per_run(packs[first], outcome):
                store.finish(key, result)
                outcomes[key] = result["status"]
                bar.advance(by_key.get(key), result)
    except KeyboardInterrupt as exc:
        runner.close()
        store.mark_pending([k for k in todo if k not in outcomes])
        bar.close()
        counts = store.counts()
        stored = counts["ok"] + counts["failed"]
        raise Interrupted(
            f"{stored} of {len(plan)} runs are in the store; rerun to resume",
            getattr(exc, "exit_code", 130),
        ) from None
    bar.close()
    return outcomes


def _per_run(keys: list[str], outcome: dict) -> list[tuple[str, dict]]:
    """A task's outcome as one outcome per run: a pack's list, or a lone run's; a pack that
    died (its worker was killed) fails each of its runs with the worker's error."""
    results = outcome.get("outcomes")
    if results is None:
        results = [outcome] if len(keys) == 1 else [dict(outcome, record=None)] * len(keys)
    return list(zip(keys, results, strict=True))


class _Lazy:
    """A sequence-like wrapper so the local executor pulls (and marks running) one task at a
    time."""

    def __init__(self, generator) -> None:
        self.generator = generator

    def __iter__(self):
        return iter(self.generator)

    def __len__(self) -> int:  # executors only test emptiness
        return 1

    def __bool__(self) -> bool:
        return True


class _Progress:
    """A rich bar with ETA on a terminal, plain lines otherwise, nothing with ``none``."""

    def __init__(self, total: int, mode: str, say) -> None:
        self.total, self.done, self.say, self.bar = total, 0, say, None
        self.mode = "bar" if _tty(mode) else ("none" if mode == "none" else "lines")
        self.start = time.perf_counter()
        if self.mode == "bar":
            from ftscale.finetune.progress import counting_bar

            self.bar = counting_bar("runs", last="{task.description}")
            self.bar.start()
            self.task = self.bar.add_task("", total=total)

    def advance(self, run, outcome: dict) -> None:
        self.done += 1
        what = (
            "?"
            if run is None
            else (
                f"{run.method} {run.checkpoint.rung} tokens={run.checkpoint.tokens_seen} "
                f"size={run.method_size} D_f={run.examples}"
            )
        )
        record = outcome.get("record") or {}
        result = (
            f"test_nll {record['test_nll']:.4f}"
            if outcome["status"] == "ok" and record.get("test_nll") is not None
            else f"FAILED: {outcome.get('error')}"
        )
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description=f"{what}: {result}")
        elif self.mode == "lines":
            elapsed = time.perf_counter() - self.start
            eta = elapsed / self.done * (self.total - self.done)
            self.say(
                f"[{self.done}/{self.total}] {what}: {result} "
                f"({outcome.get('wall_s') or 0:.1f} s; eta {eta:.0f} s)"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def status(study_dir: Path) -> dict:
    """Progress of a study directory: counts per status, failed runs, searches, timings."""
    from ftscale.study.store import open_store

    with open_store(study_dir) as store:
        rows = store.rows()
        meta = store.meta()
        searches = store.lr_searches()
    counts = {s: 0 for s in ("pending", "running", "ok", "failed")}
    for row in rows:
        counts[row["status"]] += 1
    done = [r for r in rows if r["wall_s"] is not None and r["status"] == "ok"]
    return {
        "study": meta.get("study"),
        "origin": meta.get("origin"),
        "dir": str(Path(study_dir)),
        "planned": len(rows),
        "counts": counts,
        "complete": counts["ok"] + counts["failed"] == len(rows) and bool(rows),
        "run_seconds": round(sum(r["wall_s"] for r in done), 1),
        "failed": [
            {
                "key": r["key"],
                "method": r["method"],
                "rung": r["rung"],
                "examples": r["examples"],
                "error": r["error"],
            }
            for r in rows
            if r["status"] == "failed"
        ],
        "lr_searches": [{"group": s["grp"], "learning_rate": s["learning_rate"]} for s in searches],
    }


def check_export_path(out: Path) -> str:
    """The export format (``.csv`` or ``.parquet``) of ``out``; one-line error otherwise."""
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise UserError(f"{out}: export writes .csv or .parquet, not {out.suffix or 'no suffix'!r}")
    if not out.parent.is_dir():
        raise UserError(f"{out}: folder {out.parent} does not exist")
    return suffix


def export_table(study_dir: Path, out: Path) -> int:
    """Write the finished runs as CSV or Parquet (by suffix) with the columns ``ftscale fit``
    reads by default (``examples``, ``test_nll``) and the design's (``nonembedding_params``,
    ``tokens_seen``, ``method_size``, ``method``, ``rung``, ...). Returns the rows written."""
    import pandas as pd

    from ftscale.common import first_line
    from ftscale.study.analysis import runs_frame
    from ftscale.study.store import open_store

    suffix = check_export_path(out)
    with open_store(study_dir) as store:
        store.meta()  # a tampered meta value: one line, as status and report say it
        frame = runs_frame(store.rows())
    frame = frame.drop(columns=["evals"], errors="ignore")
    frame["sweeps"] = frame["sweeps"].map(json.dumps) if len(frame) else frame.get("sweeps")
    tmp = out.with_name(f".{out.name}.part")
    try:
        if suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
        tmp.replace(out)
    except (OSError, ValueError, ImportError) as exc:
        with contextlib.suppress(OSError):  # a read-only folder refuses even this unlink
            tmp.unlink(missing_ok=True)
        raise UserError(f"{out}: cannot write: {first_line(exc)}") from None
    del pd
    return len(frame)
