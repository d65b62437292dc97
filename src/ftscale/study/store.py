"""The results store: one SQLite file per study directory, one row per run.

Plain :mod:`sqlite3` in WAL mode, each write one transaction, so a process killed at any point
leaves the file consistent: a run is ``pending`` until it starts, ``running`` while it trains, and
``ok`` or ``failed`` once its record is in. Rows left ``running`` by a killed process are run
again. Read-only opens never write to the store, also when a killed writer (or an older ftscale,
which left its stores in WAL mode) left it with its write-ahead log, even in a read-only folder.
The schema (documented in ``docs/study.md``) is readable with ``sqlite3``, pandas
(``pd.read_sql("select * from runs", sqlite3.connect(path))``) or duckdb.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ftscale.common import first_line
from ftscale.errors import UserError

#: File name of the store inside a study directory.
STORE_FILE = "study.sqlite"
#: Version of the schema below, kept in ``PRAGMA user_version``.
SCHEMA_VERSION = 1
STATUSES = ("pending", "running", "ok", "failed")

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,            -- FinetuneJob.key (16 hex digits)
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'ok', 'failed')),
    planned INTEGER NOT NULL DEFAULT 1,  -- 1 if the current study file plans this run
    method TEXT NOT NULL,
    rung TEXT NOT NULL,
    nonembedding_params INTEGER,     -- parameters of the base model, embeddings excluded
    tokens_seen INTEGER,             -- pretraining tokens of the base model
    method_size INTEGER,             -- prompt length / LoRA rank (NULL for fmt)
    examples INTEGER NOT NULL,       -- D_f, finetuning examples
    subset_seed INTEGER NOT NULL,
    sweeps TEXT NOT NULL,            -- JSON list: model_size, pretraining, pet_size
    test_nll REAL,                   -- nats per target token (copied from the record)
    spec TEXT NOT NULL,              -- FinetuneJob JSON
    record TEXT,                     -- RunRecord JSON once the run ended
    error TEXT,                      -- one line, for failed runs
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,        -- Unix seconds
    started_at REAL,
    finished_at REAL,
    wall_s REAL                      -- seconds from start to end of the last attempt
);
CREATE TABLE IF NOT EXISTS lr_searches (
    grp TEXT PRIMARY KEY,            -- method|model|revision
    method TEXT NOT NULL,
    model TEXT NOT NULL,
    revision TEXT,
    learning_rate REAL NOT NULL,     -- the rate chosen and used by every run of the group
    search TEXT NOT NULL,            -- JSON of the search (grid, dev_nll, steps, chosen, ...)
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,           -- study, origin, config (JSON), ...
    value TEXT NOT NULL
);
"""


class BlankStore(UserError):
    """The store holds no table at all (an empty file, too): what a ``study run`` killed while it
    created the store leaves, since the schema is written in one transaction."""


class Store:
    """The study's SQLite store (see the module docs). Use as a context manager or ``close()``."""

    def __init__(self, path: str | Path, *, create: bool = False, readonly: bool = False) -> None:
        """Open the store at ``path``: ``create`` makes the file and schema (``study run``);
        ``readonly`` opens it with SQLite's ``mode=ro`` (status, export, report, recommend:
        nothing is ever written, not even to a foreign or empty file; see :meth:`_open_readonly`
        for a store in WAL mode in a read-only folder)."""
        self.path = Path(path)
        self.readonly = readonly and not create
        self.copy: Path | None = None  # the private folder a read-only open reads from, if any
        if not create and not self.path.is_file():
            raise UserError(f"{self.path.parent}: not a study directory (no {STORE_FILE})")
        try:
            self.db = self._open_readonly() if self.readonly else self._open_writer()
            if create:
                self._create_schema()
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master")}
            problem = self.db.execute("PRAGMA quick_check").fetchone()[0] if tables else "ok"
        except sqlite3.OperationalError:
            self._close_quietly()
            if create:
                raise  # could not write (a full disk, a read-only folder): the caller says so
            raise UserError(f"{self.path}: cannot be read as a study store") from None
        except sqlite3.DatabaseError as exc:
            self._close_quietly()
            raise UserError(f"{self.path}: not a study store ({first_line(exc)})") from None
        if problem != "ok":
            self._close_quietly()
            raise UserError(f"{self.path}: the store is damaged ({problem})")
        if version != SCHEMA_VERSION or not {"runs", "meta", "lr_searches"} <= tables:
            self._close_quietly()
            kind = BlankStore if not tables and version == 0 else UserError
            raise kind(f"{self.path}: not a study store of this ftscale (schema {version})")

    def _open_writer(self) -> sqlite3.Connection:
        db = _connect(self.path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _open_readonly(self) -> sqlite3.Connection:
        """A ``mode=ro`` connection to the store, or to a private copy of it.

        A store in WAL mode is read through its ``-wal`` and ``-shm`` files. A killed writer
        leaves both, and a reader uses them in place (SQLite keeps its shared-memory index in
        ``-shm``; the store and its log are not written). A store in WAL mode that lacks one of
        them (an older ftscale closed its stores in WAL mode; a copy without ``-shm``) would
        have them created beside it, and a read-only folder refuses that; a store that SQLite
        cannot open read-only (a rollback journal left by a killed writer must be rolled back
        first) fails. Such a store is copied into a temporary folder, read there, and the copy
        removed on :meth:`close`. A writer keeps both WAL files while it works, and leaves no
        journal to roll back, so no copy is taken under a working writer."""
        reason = "its write-ahead log is incomplete"
        if not self._wal_incomplete():
            db = _connect(f"file:{quote(str(self.path.absolute()))}?mode=ro", uri=True)
            try:
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opens the logs
                return db
            except sqlite3.OperationalError as exc:
                db.close()
                reason = first_line(exc)
        return _connect(self._private_copy(reason))  # read-write: SQLite recovers the copy

    def _wal_incomplete(self) -> bool:
        """True for a store in WAL mode (bytes 18 and 19 of the SQLite header are 2) that lacks
        its ``-wal`` or ``-shm`` file."""
        if all(self.path.with_name(self.path.name + s).is_file() for s in ("-wal", "-shm")):
            return False
        try:
            with self.path.open("rb") as handle:
                header = handle.read(20)
        except OSError:
            return False  # the open below says what is wrong
        return header[18:20] == b"\x02\x02"

    def _private_copy(self, reason: str) -> Path:
        """Copy the store and its logs (write-ahead log; a rollback journal left by a killed
        writer, which SQLite then rolls back in the copy) into a new temporary folder."""
        try:
            self.copy = Path(tempfile.mkdtemp(prefix="ftscale-store-"))
            for suffix in ("", "-wal", "-journal"):
                source = self.path.with_name(self.path.name + suffix)
                if source.is_file():
                    shutil.copyfile(source, self.copy / (STORE_FILE + suffix))
        except OSError as exc:
            self._remove_copy()
            raise UserError(
                f"{self.path}: cannot be read in place ({reason}) and copying it to a temporary "
                f"folder failed: {first_line(exc)}"
            ) from None
        return self.copy / STORE_FILE

    def _create_schema(self) -> None:
        with self.transaction():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _close_quietly(self) -> None:
        db = getattr(self, "db", None)
        if db is not None:
            db.close()
        self._remove_copy()

    def _remove_copy(self) -> None:
        if self.copy is not None:
            shutil.rmtree(self.copy, ignore_errors=True)
            self.copy = None

    # -- plumbing ----------------------------------------------------------------------------
    def transaction(self):
        return _Transaction(self.db)

    def close(self) -> None:
        """Close; a writer leaves the file in rollback-journal mode when it is the last user, so
        a later read-only open (``mode=ro``) finds no WAL to recover and creates no files."""
        if not self.readonly:
            try:
                self.db.execute("PRAGMA busy_timeout=200")  # a reader: do not wait for it
                self.db.execute("PRAGMA journal_mode=DELETE")
            except sqlite3.Error:
                pass  # a reader still has it open: it stays in WAL mode
        self.db.close()
        self._remove_copy()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- meta --------------------------------------------------------------------------------
    def set_meta(self, **values: Any) -> None:
        with self.transaction():
            for name, value in values.items():
                self.db.execute(
                    "INSERT INTO meta(name, value) VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                    (name, json.dumps(value)),
                )

    def meta(self) -> dict[str, Any]:
        """Every meta value; a one-line error names a value that is not JSON."""
        return {
            r["name"]: _json(r["value"], self.path, f"meta {r['name']!r}")
            for r in self.db.execute("SELECT * FROM meta")
        }

    def meta_value(self, name: str) -> Any:
        """One meta value, None when it is missing or not readable (``study run`` rewrites it)."""
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        try:
            return None if row is None else json.loads(row["value"])
        except (TypeError, ValueError):
            return None

    # -- runs ----------------------------------------------------------------------------------
    def sync_plan(self, runs: Iterable) -> int:
        """Add planned runs not yet in the store (``pending``), mark which rows the current plan
        has, and reset rows left ``running`` by a killed process; one transaction. Returns the
        number of runs added."""
        now = time.time()
        added = 0
        with self.transaction():
            self.db.execute("UPDATE runs SET planned = 0")
            for run in runs:
                meta = run.meta()
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO runs(key, status, method, rung, nonembedding_params, "
                    "tokens_seen, method_size, examples, subset_seed, sweeps, spec, created_at) "
                    "VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run.key,
                        meta["method"],
                        meta["rung"],
                        meta["nonembedding_params"],
                        meta["tokens_seen"],
                        meta["method_size"],
                        meta["examples"],
                        meta["subset_seed"],
                        json.dumps(meta["sweeps"]),
                        run.job.to_json(),
                        now,
                    ),
                )
                added += cur.rowcount
                self.db.execute(
                    "UPDATE runs SET planned = 1, sweeps = ? WHERE key = ?",
                    (json.dumps(meta["sweeps"]), run.key),
                )
            self.db.execute("UPDATE runs SET status = 'pending' WHERE status = 'running'")
        return added

    def to_run(self, retry_failed: bool = False) -> list[str]:
        """Keys of planned runs still to do (pending; failed too with ``retry_failed``)."""
        statuses = ("pending", "failed") if retry_failed else ("pending",)
        marks = ",".join("?" * len(statuses))
        rows = self.db.execute(
            f"SELECT key FROM runs WHERE planned = 1 AND status IN ({marks}) ORDER BY rowid",
            statuses,
        )
        return [r["key"] for r in rows]

    def mark_running(self, key: str) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE runs SET status = 'running', attempts = attempts + 1, started_at = ?, "
                "error = NULL WHERE key = ?",
                (time.time(), key),
            )

    def mark_pending(self, keys: Iterable[str]) -> None:
        """Put runs back to ``pending`` (an interrupted sweep)."""
        with self.transaction():
            for key in keys:
                self.db.execute(
                    "UPDATE runs SET status = 'pending' WHERE key = ? AND status = 'running'",
                    (key,),
                )

    def finish(self, key: str, outcome: dict[str, Any]) -> None:
        """Store a run's outcome (from :func:`ftscale.study.worker.execute`): one transaction."""
        record = outcome.get("record")
        status = "ok" if outcome.get("status") == "ok" else "failed"
        test_nll = record.get("test_nll") if record else None
        now = time.time()
        with self.transaction():
            self.db.execute(
                "UPDATE runs SET status = ?, record = ?, error = ?, test_nll = ?, "
                "finished_at = ?, wall_s = ? WHERE key = ?",
                (
                    status,
                    json.dumps(record) if record is not None else None,
                    outcome.get("error"),
                    test_nll,
                    now,
                    outcome.get("wall_s"),
                    key,
                ),
            )

    def spec(self, key: str) -> str:
        row = self.db.execute("SELECT spec FROM runs WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise UserError(f"{self.path}: no run {key}")
        return row["spec"]

    def rows(self, planned_only: bool = True) -> list[dict[str, Any]]:
        """Every run as a dict (``sweeps`` and ``record`` parsed)."""
        where = " WHERE planned = 1" if planned_only else ""
        out = []
        for row in self.db.execute(f"SELECT * FROM runs{where} ORDER BY rowid"):
            item = dict(row)
            where = f"run {item['key']}"
            item["sweeps"] = _json(item["sweeps"], self.path, f"{where}: sweeps")
            record = item["record"]
            item["record"] = _json(record, self.path, f"{where}: record") if record else None
            out.append(item)
        return out

    def unreadable(self) -> list[str]:
        """Keys of runs whose stored record or sweeps is not JSON (a tampered store)."""
        bad = []
        for row in self.db.execute("SELECT key, sweeps, record FROM runs ORDER BY rowid"):
            for text in (row["sweeps"], row["record"]):
                try:
                    if text is not None:
                        json.loads(text)
                except (TypeError, ValueError):
                    bad.append(row["key"])
                    break
        return bad

    def reset_runs(self, keys: Iterable[str]) -> None:
        """Put runs back to ``pending`` with no record (their record could not be read); their
        sweeps are rewritten by the next :meth:`sync_plan`."""
        with self.transaction():
            for key in keys:
                self.db.execute(
                    "UPDATE runs SET status = 'pending', record = NULL, test_nll = NULL, "
                    "error = NULL, sweeps = '[]' WHERE key = ?",
                    (key,),
                )

    def counts(self) -> dict[str, int]:
        """Planned runs per status."""
        out = dict.fromkeys(STATUSES, 0)
        for row in self.db.execute(
            "SELECT status, count(*) AS n FROM runs WHERE planned = 1 GROUP BY status"
        ):
            out[row["status"]] = row["n"]
        return out

    # -- learning-rate searches ----------------------------------------------------------------
    def lr_search(self, group: str) -> float | None:
        row = self.db.execute(
            "SELECT learning_rate FROM lr_searches WHERE grp = ?", (group,)
        ).fetchone()
        return None if row is None else float(row["learning_rate"])

    def save_lr_search(self, group: str, method: str, model: str, revision, search: dict) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO lr_searches VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    group,
                    method,
                    model,
                    revision,
                    float(search["chosen"]),
                    json.dumps(search),
                    time.time(),
                ),
            )

    def lr_searches(self) -> list[dict[str, Any]]:
        out = []
        for row in self.db.execute("SELECT * FROM lr_searches ORDER BY created_at"):
            item = dict(row)
            item["search"] = _json(item["search"], self.path, f"lr search {item['grp']}")
            out.append(item)
        return out


def _connect(target: str | Path, *, uri: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (:class:`_Transaction` opens transactions) whose rows are
    :class:`sqlite3.Row`; waits up to 30 s for another connection's lock."""
    db = sqlite3.connect(target, uri=uri, timeout=30.0, isolation_level=None)
    db.row_factory = sqlite3.Row
    return db


def _json(text: str, path: Path, where: str) -> Any:
    """``text`` as JSON; a one-line error naming the store and the value otherwise."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        fix = "runs the run again" if where.startswith("run ") else "writes it again"
        raise UserError(
            f"{path}: {where} is not valid JSON (the store was changed outside ftscale); "
            f"`ftscale study run` {fix}"
        ) from None


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any exception, Ctrl-C included)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")


def open_store(study_dir: str | Path) -> Store:
    """The store of an existing study directory (one-line error if it is not one)."""
    study_dir = Path(study_dir)
    if not study_dir.exists():
        raise UserError(f"{study_dir}: no such study directory")
    if not study_dir.is_dir():
        raise UserError(f"{study_dir}: not a directory")
    return Store(study_dir / STORE_FILE, readonly=True)
