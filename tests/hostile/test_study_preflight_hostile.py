"""Issue 19: a whole study is checked before anything is written, read-only commands never write
to a store, a tampered or truncated store is one line, `expr:` formulas are bounded.

Every case: one ``ftscale: error:`` line naming the file, field and value, exit 2, nothing created
or changed in the scratch folder (the harness snapshots it), the cache included (it lives in the
scratch folder too).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from test_study_hostile import study

ROOT = Path(__file__).resolve().parents[2]

PAIRS = "source,target\n" + "".join(f"s{i},t{i}\n" for i in range(40))

# (id, study text, regex the error line must match after "s.toml: ")
STUDIES = [
    (
        "device unknown",
        study('[train]\ndevice = "tpu9"\n'),
        r"train\.device: 'tpu9' is not a device",
    ),
    ("device number", study('[train]\ndevice = "cuda:x"\n'), r"train\.device: 'cuda:x'"),
    ("lr infinite", study("[train]\nlr = inf\n"), r"train\.lr: must be a positive .*got inf\)$"),
    ("lr nan", study("[train]\nlr = nan\n"), r"train\.lr: must be a positive"),
    (
        "eval file missing",
        study('[[evals]]\nname = "x"\nspec = "nope.jsonl"\n'),
        r"evals\.0\.spec: 'nope\.jsonl': no such file",
    ),
    (
        "eval is folder",
        study('[[evals]]\nname = "x"\nspec = "{tmp}"\n'),
        r"evals\.0\.spec: .*folder",
    ),
    (
        "task file missing",
        study('[task]\nspec = "nope.jsonl"\n'),
        r"task\.spec: 'nope\.jsonl': no such",
    ),
    (
        "task etc passwd",
        study('[task]\nspec = "../../etc/passwd"\n'),
        r"task\.spec: '\.\./\.\./etc/passwd'",
    ),
    (
        "task dev zero",
        study('[task]\nspec = "/dev/zero"\n'),
        r"task\.spec: '/dev/zero': not a regular file",
    ),
    (
        "task dev null",
        study('[task]\nspec = "/dev/null"\n'),
        r"task\.spec: '/dev/null': not a regular",
    ),
    ("task folder", study('[task]\nspec = "{tmp}"\n'), r"task\.spec: .*is a folder"),
    (
        "task bad format",
        study('[task]\nspec = "{txt}"\n'),
        r"task\.spec: .*unknown table format '\.txt'",
    ),
    (
        "bad template",
        study('[task]\ntemplate = "{nope} {src"\n'),
        r"task\.template: .*not a format",
    ),
    (
        "source column",
        study('[task]\nspec = "{pairs}"\nsource_column = "en"\n'),
        r"task\.spec: .*column 'en' not found",
    ),
    (
        "target column",
        study('[task]\nspec = "{pairs}"\ntarget_column = "de"\n'),
        r"task\.spec: .*column 'de' not found",
    ),
    (
        "D_f above data",
        study("[examples]\nsizes = [1e12]\n"),
        r"examples\.sizes: D_f 1,000,000,000,000 \(fmt\) is more than the [\d,]+ training pairs",
    ),
    (
        "D_f above file",
        study('[task]\nspec = "{pairs}"\n[examples]\nsizes = [10, 5000]\n'),
        r"examples\.sizes: D_f 5,000 .* training pairs",
    ),
    (
        "per-method D_f",
        study("[examples]\nper_method = { lora = [10, 1e9] }\n"),
        r"examples\.per_method: D_f 1,000,000,000 \(lora\)",
    ),
    (
        "per-method empty",
        study("[examples]\nper_method = { fmt = [] }\n"),
        r"examples\.per_method: fmt: must not be empty",
    ),
    (
        "pet sizes empty",
        study("[sweeps.pet_size]\nsizes = { prompt = [] }\n"),
        r"sweeps\.pet_size\.sizes: prompt: must name at least one",
    ),
    (
        "pet sizes twice",
        study("[sweeps.pet_size]\nsizes = { prompt = [4, 4, 16] }\n"),
        r"sweeps\.pet_size\.sizes: prompt: 4 appears twice",
    ),
    (
        "methods twice",
        study('[sweeps.model_size]\nmethods = ["fmt", "fmt"]\n'),
        r"sweeps\.model_size\.methods: fmt appears twice",
    ),
    (
        "pretraining methods twice",
        study('[sweeps.pretraining]\nmethods = ["lora", "lora"]\n'),
        r"sweeps\.pretraining\.methods: lora appears twice",
    ),
    (
        "methods empty",
        study("[sweeps.model_size]\nmethods = []\n"),
        r"sweeps\.model_size\.methods: must name at least one",
    ),
    (
        "pretraining holdout",
        study("[sweeps.pretraining]\nholdout = [12345]\n"),
        r"sweeps\.pretraining\.holdout: no checkpoint at 12,345 tokens \(checkpoints: 4,096\)",
    ),
    (
        "every sweep off",
        study(
            "[sweeps.model_size]\nenabled = false\n[sweeps.pretraining]\nenabled = false\n"
            "[sweeps.pet_size]\nenabled = false\n"
        ),
        r"sweeps: every sweep is disabled",
    ),
    (
        "only empty pet sweep",
        study("[sweeps.model_size]\nenabled = false\n[sweeps.pretraining]\nenabled = false\n"),
        r"sweeps: every sweep is disabled \(or the PET-size sweep has no sizes\)",
    ),
    (
        "max_steps cost",
        study("[train]\nmax_steps = 1_000_000_000_000\n"),
        r"train\.max_steps = 1,000,000,000,000: the \d+ runs would take about .* h .*--yes",
    ),
    (
        "min_steps cost",
        study("[train]\nmin_steps = 1_000_000_000_000_000\n"),
        r"train\.min_steps = 1,000,000,000,000,000, .*more than 24 h: pass --yes",
    ),
    (
        "huge rung",
        study().replace("width = 24", "width = 1048576"),
        r"ladder\.rungs\.1: rung 'b' \(width 1048576.*parameters.*memory",
    ),
    (
        "executor unknown",
        study('[run]\nexecutor = "slurm"\n'),
        r"run\.executor: unknown \(known: local.*\(got 'slurm'\)",
    ),
]


def _prepare(hostile) -> None:
    hostile.file("pairs", PAIRS, filename="pairs.csv")
    hostile.file("txt", PAIRS, filename="pairs.txt")
    hostile.folder("cache")


@pytest.fixture
def scratch_cache(hostile, monkeypatch):
    """The model cache inside the scratch folder, so a write to it would fail the case."""
    monkeypatch.setenv("FTSCALE_CACHE", str(hostile.root / "cache"))
    return hostile


@pytest.mark.parametrize(("name", "text", "match"), STUDIES, ids=[s[0] for s in STUDIES])
def test_study_checked_before_run_writes(scratch_cache, name, text, match):
    hostile = scratch_cache
    _prepare(hostile)
    for name in ("pairs", "txt"):
        text = text.replace("{" + name + "}", str(hostile.paths[name]))
    text = text.replace("{tmp}", str(hostile.root))
    hostile.file("study", text, filename="s.toml")
    hostile(["study", "run", "{study}", "-q"], match=r"s\.toml: " + match)


PLAN_ALSO = ["device unknown", "task dev zero", "D_f above data", "max_steps cost", "huge rung"]


@pytest.mark.parametrize("name", PLAN_ALSO)
def test_plan_checks_as_run_does(scratch_cache, name):
    hostile = scratch_cache
    _prepare(hostile)
    _, text, match = next(s for s in STUDIES if s[0] == name)
    hostile.file("study", text, filename="s.toml")
    hostile(["study", "plan", "{study}"], match=r"s\.toml: " + match)


def test_yes_accepts_the_cost_in_plan(scratch_cache):
    hostile = scratch_cache
    hostile.file("study", study("[train]\nmax_steps = 1_000_000_000_000\n"), filename="s.toml")
    result = hostile.runner.invoke(
        __import__("ftscale.cli", fromlist=["app"]).app,
        ["study", "plan", str(hostile.paths["study"]), "--yes"],
    )
    assert result.exit_code == 0, result.stderr
    assert "runs;" in result.stdout


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="ray is installed here")
def test_ray_executor_without_ray(scratch_cache):
    scratch_cache.file("study", study('[run]\nexecutor = "ray"\n'), filename="s.toml")
    scratch_cache(["study", "plan", "{study}"], match=r"executor 'ray': Ray is not installed")


# -- stores: read-only commands on tampered, truncated, empty, foreign stores ---------------------


@pytest.fixture(scope="session")
def planned_store(tmp_path_factory) -> Path:
    """A real store as `study run` leaves it before its first run finished: the study's meta and
    every planned run ``pending`` (made by the runner's own steps; no ladder is built)."""
    from ftscale.study.config import load_study
    from ftscale.study.plan import make_plan
    from ftscale.study.runner import _record_study
    from ftscale.study.store import Store

    root = tmp_path_factory.mktemp("planned")
    path = root / "s.toml"
    path.write_text(study(), encoding="utf-8")
    loaded = load_study(path)
    (root / "s").mkdir()
    with Store(root / "s" / "study.sqlite", create=True) as store:
        _record_study(store, loaded)
        store.sync_plan(make_plan(loaded, root / "s").runs)
    return root / "s"


def _sql(statement: str):
    def tamper(path: Path) -> None:
        with sqlite3.connect(path) as db:
            db.execute(statement)
        db.close()

    return tamper


def _truncate(size: int):
    def cut(path: Path) -> None:
        with path.open("r+b") as handle:
            handle.truncate(size)

    return cut


def _foreign(path: Path) -> None:
    path.unlink()
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE photos (id INTEGER, jpeg BLOB)")
    db.close()


def _garbage(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)


FIRST = "(SELECT key FROM runs ORDER BY rowid LIMIT 1)"
STATUS = ["study", "status", "{store}"]
EXPORT = ["study", "export", "{store}", "-o", "{tmp}/runs.csv"]
REPORT = ["report", "{store}"]
RECOMMEND = ["recommend", "{store}", "--model-size", "1e5", "--examples", "100"]

# (id, how the store is spoiled (None: left as planned), command, regex)
STORES = [
    (
        "record json status",
        _sql(f"UPDATE runs SET record = '{{bad' WHERE key = {FIRST}"),
        STATUS,
        r"study\.sqlite: run [0-9a-f]{16}: record is not valid JSON",
    ),
    (
        "record json export",
        _sql(f"UPDATE runs SET record = '{{bad' WHERE key = {FIRST}"),
        EXPORT,
        r"run [0-9a-f]{16}: record is not valid JSON",
    ),
    (
        "sweeps json status",
        _sql(f"UPDATE runs SET sweeps = '[x' WHERE key = {FIRST}"),
        STATUS,
        r"run [0-9a-f]{16}: sweeps is not valid JSON",
    ),
    (
        "sweeps json export",
        _sql(f"UPDATE runs SET sweeps = 'nope' WHERE key = {FIRST}"),
        EXPORT,
        r"sweeps is not valid JSON",
    ),
    (
        "meta json status",
        _sql("UPDATE meta SET value = '{x' WHERE name = 'study'"),
        STATUS,
        r"meta 'study' is not valid JSON",
    ),
    (
        "meta json export",
        _sql("UPDATE meta SET value = '{x' WHERE name = 'config'"),
        EXPORT,
        r"meta 'config' is not valid JSON",
    ),
    (
        "meta json report",
        _sql("UPDATE meta SET value = '{x' WHERE name = 'config'"),
        REPORT,
        r"meta 'config' is not valid JSON",
    ),
    ("truncated status", _truncate(3000), STATUS, r"study\.sqlite: (not a study store|the store)"),
    ("truncated export", _truncate(5000), EXPORT, r"study\.sqlite: (not a study store|the store)"),
    ("garbage pages", _garbage, STATUS, r"study\.sqlite: (not a study store|the store)"),
    ("empty file status", _truncate(0), STATUS, r"not a study store of this ftscale \(schema 0\)"),
    ("empty file export", _truncate(0), EXPORT, r"not a study store of this ftscale"),
    ("foreign db status", _foreign, STATUS, r"not a study store of this ftscale"),
    ("foreign db export", _foreign, EXPORT, r"not a study store of this ftscale"),
    ("foreign db report", _foreign, REPORT, r"not a study store of this ftscale"),
    ("no finished run report", None, REPORT, r"no finished run yet \(\d+ planned\)"),
    ("no finished run recommend", None, RECOMMEND, r"no finished run yet"),
    ("schema too new", _sql("PRAGMA user_version = 99"), STATUS, r"schema 99"),
]


@pytest.mark.parametrize(("name", "spoil", "args", "match"), STORES, ids=[s[0] for s in STORES])
def test_read_only_commands_on_bad_stores(hostile, planned_store, name, spoil, args, match):
    target = hostile.root / "s"
    shutil.copytree(planned_store, target)
    if spoil is not None:
        spoil(target / "study.sqlite")
    hostile.paths["store"] = target
    hostile(args, match=match)


def test_status_opens_a_good_store_read_only(hostile, planned_store):
    """A good store: status answers (exit 0) and the folder is byte for byte unchanged."""
    from ftscale.cli import app

    target = hostile.root / "s"
    shutil.copytree(planned_store, target)
    before = _files(hostile.root)
    result = hostile.runner.invoke(app, ["study", "status", str(target), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["counts"]["pending"] > 0
    assert _files(hostile.root) == before


def _files(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every path under ``root`` with its size, modification time and (files) content."""
    return {
        str(p.relative_to(root)): (
            p.stat().st_size,
            p.stat().st_mtime_ns,
            p.read_bytes() if p.is_file() else b"",
        )
        for p in sorted(root.rglob("*"))
    }


#: `study run` killed inside the first transaction of its new store (the schema), as
#: :class:`ftscale.study.store.Store` makes it: the store is left with no table.
KILLED_CREATING = (
    "import os, sys, sqlite3; from ftscale.study.store import SCHEMA; "
    "db = sqlite3.connect(sys.argv[1], isolation_level=None); "
    "db.execute('PRAGMA journal_mode=WAL'); db.execute('BEGIN IMMEDIATE'); "
    "db.execute(SCHEMA.split(';')[0]); os.kill(os.getpid(), 9)"
)


@pytest.mark.parametrize("left", ["killed while made", "empty file"])
def test_a_store_without_tables_does_not_block_the_run(tmp_path, left):
    """A store with no table holds nothing: `study run` accepts its folder and makes the
    schema in it (a store killed while it was made must not block every resume)."""
    from ftscale.study.config import load_study
    from ftscale.study.store import Store
    from ftscale.study.validate import check_study_dir

    (tmp_path / "s.toml").write_text(study(), encoding="utf-8")
    (tmp_path / "s").mkdir()
    store = tmp_path / "s" / "study.sqlite"
    if left == "empty file":
        store.touch()
    else:
        _killed(KILLED_CREATING, store)
    check_study_dir(tmp_path / "s", load_study(tmp_path / "s.toml"))
    with Store(store, create=True) as made:
        assert made.counts() == dict.fromkeys(("pending", "running", "ok", "failed"), 0)


@pytest.mark.parametrize(("spoil", "match"), [(_foreign, "schema 0"), (_garbage, "not a study")])
def test_run_refuses_a_store_of_another_program(hostile, planned_store, spoil, match):
    """A file named like the store that holds another program's tables, or no database at all,
    is not taken over."""
    hostile.file("study", study(), filename="s.toml")
    shutil.copytree(planned_store, hostile.root / "s")
    spoil(hostile.root / "s" / "study.sqlite")
    args = ["study", "run", "{study}", "--dir", "{tmp}/s", "-q"]
    hostile(args, match=r"s/study\.sqlite: .*" + match)


def test_cache_that_is_a_file(hostile):
    hostile.file("study", study(), filename="s.toml")
    hostile.file("cachefile", "not a folder", filename="cachefile")
    hostile(
        ["study", "run", "{study}", "--cache", "{cachefile}", "--dir", "{tmp}/new"],
        match=r"--cache .*cachefile: is a file, expected a folder$",
    )


# -- `expr:` formulas: bounded, still arithmetic only ----------------------------------------------

RUNS = "examples,test_nll\n" + "".join(f"{d},{2 + 9 / d**0.3:.6f}\n" for d in (10, 20, 40, 80, 160))

EXPRS = [
    ("tower of powers", "A*9**9**9 + D", r"'9\*\*9' is 3\.8742e\+08"),
    ("power overflow", "A*10.0**400 + D", r"exponent 400 is larger than 16"),
    ("big exponent on D", "A/D^400 + E", r"exponent 400 is larger than 16"),
    ("negative exponent", "A*D^-(2*20) + E", r"exponent -40 is larger than 16"),
    ("huge constant", "A/D^beta + 1e300", r"'1e300' is 1e\+300"),
    ("constant product", "A/D^beta + 1000*1000*10", r"is 1e\+07"),
    ("divide by zero", "A*D**(1/0)", r"'1/0' is inf"),
    ("nested calls", "A*" + "log(" * 20 + "D" + ")" * 20 + "+E", r"nested deeper than 16"),
    ("dunder call", "__import__('os')", r"unknown function '__import__'"),
    ("attribute", "A*D.real", r"is not allowed"),
    ("lambda", "(lambda: 1)()", r"is not allowed|unknown function"),
    ("string", "A*'x' + D", r"is not allowed"),
]


@pytest.mark.parametrize(("name", "formula", "match"), EXPRS, ids=[e[0] for e in EXPRS])
def test_expr_forms_bounded(hostile, name, formula, match):
    hostile.file("runs", RUNS, filename="runs.csv")
    hostile(["fit", "{runs}", "--form", "expr:" + formula], match=match)


def test_expr_overflow_at_fit_time_is_not_a_traceback(hostile):
    """exp(exp(exp(D))) overflows for every D here: one line, not an OverflowError."""
    hostile.file("runs", RUNS, filename="runs.csv")
    hostile(["fit", "{runs}", "--form", "expr:A*exp(exp(exp(D)))+E"], match=r"undefined|cannot")


def test_duplicate_columns_in_fit_table(hostile):
    hostile.file("runs", "examples,test_nll,test_nll\n1,2,3\n2,3,4\n3,4,5\n", filename="r.csv")
    hostile(["fit", "{runs}"], match=r"r\.csv: column 'test_nll' appears twice")


def test_duplicate_size_columns_in_fit_table(hostile):
    text = "nonembedding_params,examples,test_nll,nonembedding_params\n1,2,3,4\n"
    hostile.file("runs", text, filename="r.csv")
    hostile(["fit", "{runs}"], match=r"column 'nonembedding_params' appears twice")


# -- folders that cannot be written: a read-only mount and a full disk (a real tmpfs) -------------


def _in_mount(tmp_path: Path, options: str, command: str) -> subprocess.CompletedProcess:
    """``command`` (a shell line; ``$F`` is ftscale, ``$M`` the mount) with a tmpfs mounted with
    ``options`` at ``tmp_path/mnt`` in a private mount namespace; lists the mount afterwards."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    script = (
        f"mount -t tmpfs -o {options} none {mount} && F='{sys.executable} -m ftscale' M={mount} "
        f"&& {command}; rc=$?; echo LISTING; ls -A {mount}; exit $rc"
    )
    env_path = f"PYTHONPATH={ROOT / 'src'}"
    return subprocess.run(
        ["unshare", "-r", "-m", "sh", "-c", f"export {env_path}; {script}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )


@pytest.mark.usefixtures("user_mounts")
@pytest.mark.parametrize(
    ("options", "args", "match"),
    [
        ("size=1m,ro", "study run s.toml --dir $M/x -q", r"cannot write in .*mnt \(permission"),
        (
            "size=32k",
            "study run s.toml --dir $M/x -q",
            r"x: cannot write: .*bytes free on its disk",
        ),
        ("size=1m,ro", "report {store} --output $M", r"mnt: cannot write in it"),
    ],
    ids=["dir in read-only folder", "full disk", "report into read-only folder"],
)
def test_unwritable_places(tmp_path, monkeypatch, planned_store, options, args, match):
    (tmp_path / "s.toml").write_text(study(), encoding="utf-8")
    shutil.copytree(planned_store, tmp_path / "store")
    args = args.replace("{store}", str(tmp_path / "store"))
    monkeypatch.setenv("FTSCALE_CACHE", str(tmp_path / "cache"))
    result = _in_mount(tmp_path, options, f"$F {args}")
    err = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(err) == 1 and err[0].startswith("ftscale: error: "), result.stderr
    assert __import__("re").search(match, err[0]), err[0]
    assert result.stdout.split("LISTING")[-1].strip() == "", "left files on the mount"
    assert not (tmp_path / "cache").exists()


# -- stores left with their logs (a killed writer, an older ftscale) on read-only opens ----------

#: A real ftscale writer (the store in WAL mode) that marks the first pending run `running` in one
#: committed transaction and is killed (SIGKILL) before it closes: the store keeps -wal and -shm.
KILLED_WRITER = (
    "import os, sys; from ftscale.study.store import Store; s = Store(sys.argv[1]); "
    "s.mark_running(s.to_run()[0]); os.kill(os.getpid(), 9)"
)
#: A writer in rollback-journal mode killed inside a transaction larger than its page cache: the
#: store keeps a hot journal that must be rolled back before the store can be read.
KILLED_JOURNAL = (
    "import os, sys, sqlite3; db = sqlite3.connect(sys.argv[1], isolation_level=None); "
    "db.execute('PRAGMA cache_size=1'); db.execute('BEGIN IMMEDIATE'); "
    "db.execute(\"UPDATE runs SET status = 'running', spec = spec || printf('%.9000c', 'x')\"); "
    "os.kill(os.getpid(), 9)"
)


def _killed(code: str, path: Path) -> None:
    """Run ``code`` on the store at ``path`` in a Python process that SIGKILLs itself."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", code, str(path)], env=env, timeout=60)
    assert done.returncode == -9, done


def _older_ftscale(path: Path) -> None:
    """What an older ftscale left: a store in WAL mode, its last write checkpointed and its -wal
    and -shm removed on close."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"UPDATE runs SET status = 'running' WHERE key = {FIRST}")
    db.close()


def _suffix(name: str, spoil):
    def apply(path: Path) -> None:
        spoil(path.with_name(path.name + name))

    return apply


#: (id, how the store is left after the killed writer (None: as it is), runs `running` that a
#: reader must see: 1 when the writer's committed transaction is readable, 0 when SQLite drops it)
LEFT = [
    ("killed writer", None, 1),
    ("no shm", _suffix("-shm", Path.unlink), 1),
    ("empty shm", _suffix("-shm", lambda p: p.write_bytes(b"")), 1),
    ("torn wal frame", _suffix("-wal", lambda p: _truncate(p.stat().st_size - 100)(p)), 0),
    ("garbage wal", _suffix("-wal", lambda p: p.write_bytes(b"\x5a" * p.stat().st_size)), 0),
    ("older ftscale", _older_ftscale, 1),
    ("hot journal", "journal", 0),
]


@pytest.fixture(scope="session")
def left_stores(tmp_path_factory, planned_store) -> dict[str, Path]:
    """The planned store as each case of :data:`LEFT` leaves it, one folder per case."""
    root = tmp_path_factory.mktemp("left")
    out = {}
    for name, spoil, _ in LEFT:
        target = root / name.replace(" ", "-")
        shutil.copytree(planned_store, target)
        path = target / "study.sqlite"
        if spoil == "journal":
            _killed(KILLED_JOURNAL, path)
            assert path.with_name("study.sqlite-journal").stat().st_size > 0
        elif spoil is _older_ftscale:
            spoil(path)
        else:
            _killed(KILLED_WRITER, path)
            assert path.with_name("study.sqlite-wal").stat().st_size > 0
            if spoil is not None:
                spoil(path)
        out[name] = target
    return out


def _store_bytes(folder: Path) -> dict[str, bytes]:
    """The folder's files and their bytes, SQLite's shared-memory index (-shm) by name only: any
    reader of a store in WAL mode rewrites it, as the protocol asks."""
    return {p.name: b"" if p.name.endswith("-shm") else p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize(
    ("name", "running"), [(c[0], c[2]) for c in LEFT], ids=[c[0] for c in LEFT]
)
def test_read_only_commands_read_a_left_store_and_write_nothing(
    hostile, left_stores, name, running
):
    """status and export read what the store's valid log holds (a killed writer's committed
    run is `running`; a torn or foreign log, or an unfinished transaction, is not), without a
    traceback, and leave the store, its logs and its folder as they were."""
    from ftscale.cli import app

    target = hostile.root / "s"
    shutil.copytree(left_stores[name], target)
    before = _store_bytes(target)
    status = hostile.runner.invoke(app, ["study", "status", str(target), "--json"])
    assert status.exit_code == 0, status.output
    counts = json.loads(status.stdout)["counts"]
    assert counts["running"] == running and counts["running"] + counts["pending"] > 1, counts
    out = hostile.root / "runs.csv"
    export = hostile.runner.invoke(app, ["study", "export", str(target), "-o", str(out)])
    assert export.exit_code == 0 and out.is_file(), export.output
    assert _store_bytes(target) == before


# (id, case of LEFT, command ({dir}: the store's folder on a read-only mount), runs `running` the
# answer shows, or a regex of the one error line). A garbage -wal is left out: beside a stale -shm
# that nobody may rewrite, SQLite retries for about 10 s before it reads the store without it.
READ_ONLY = [
    *[
        (f"status, {name}", name, "study status {dir} --json", running)
        for name, _, running in LEFT
        if name != "garbage wal"
    ],
    ("report into its folder", "older ftscale", "report {dir}", r"mnt/s: cannot write in it"),
    ("export into its folder", "no shm", "study export {dir}", r"runs\.csv: cannot write: "),
    ("run on it", "killed writer", "study run s.toml --dir {dir} -q", r"cannot write in .*mnt/s "),
]


@pytest.mark.usefixtures("user_mounts")
@pytest.mark.parametrize(
    ("name", "left", "args", "expect"), READ_ONLY, ids=[c[0] for c in READ_ONLY]
)
def test_left_store_in_a_read_only_folder(
    tmp_path, monkeypatch, left_stores, name, left, args, expect
):
    """A store left with (or without) its logs in a folder nobody can write: the read-only
    commands answer (from a private copy where SQLite would have to create a file beside the
    store; the copy is removed), and a command that must write there says so in one line."""
    (tmp_path / "s.toml").write_text(study(), encoding="utf-8")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setenv("FTSCALE_CACHE", str(tmp_path / "cache"))
    shutil.copytree(left_stores[left], tmp_path / "store")
    command = "cp -a {src} $M/s && mount -o remount,ro $M && $F " + args.format(dir="$M/s")
    result = _in_mount(tmp_path, "size=4m", command.format(src=tmp_path / "store"))
    assert "Traceback" not in result.stderr, result.stderr
    if isinstance(expect, int):
        assert result.returncode == 0, result.stderr
        counts = json.loads(result.stdout.split("LISTING")[0])["counts"]
        assert counts["running"] == expect, counts
    else:
        err = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(err) == 1, result.stderr
        assert __import__("re").search("ftscale: error: .*" + expect, err[0]), err[0]
    assert not list((tmp_path / "tmp").iterdir()), "a private copy of the store was left"
