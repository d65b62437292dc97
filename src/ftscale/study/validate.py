"""Checks of a whole study before anything is written or trained.

``ftscale study run`` and ``ftscale study plan`` call :func:`preflight` first. It reads (never
writes) everything a study will need and refuses, with one :class:`~ftscale.errors.UserError`
line naming the file, the field and the value, what cannot work:

* the device (``[train] device``: a name torch knows, and present on this machine);
* the executor and its package (``ray`` installed), ``--address`` only with ``ray``;
* the model cache (a folder, writable when the ladder still has to be built) and the rungs to
  pretrain (their training memory must fit this machine);
* the task and the extra eval sets: each file a regular file (not ``/dev/zero``, not a folder),
  readable, with the named columns and a template that formats; each split loaded once;
* the sizes against the data: every D_f at most the training pairs the task has;
* the plan: at least one run, and a cost (estimated hours, or optimizer steps when the model
  sizes are not known yet) under :data:`COST_LIMIT_H` / :data:`STEPS_LIMIT` unless ``yes``.

The study directory itself (a folder that can hold this study, in a writable place, not locked
by another run) is checked by :func:`check_study_dir`.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from ftscale.common import first_line
from ftscale.errors import UserError
from ftscale.study.config import Study
from ftscale.study.plan import Plan, estimate_steps, estimate_total, make_plan
from ftscale.study.store import STORE_FILE, BlankStore, Store

#: Estimated hours of runs above which a study needs ``--yes`` (``study run`` and ``plan``).
COST_LIMIT_H = 24.0
#: Optimizer steps of one run above which a study needs ``--yes`` when its time is unknown.
STEPS_LIMIT = 1_000_000
#: Bytes per parameter to pretrain a rung: fp32 weights, gradients and two AdamW moments.
TRAIN_BYTES_PER_PARAM = 16
#: Devices a study may name.
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
#: File held locked while a study directory is being run (one driver per directory).
LOCK_FILE = ".lock"


@dataclass
class Checked:
    """What :func:`preflight` found: the plan (before the ladder is built) and the training
    pairs of the task."""

    plan: Plan
    train_pairs: int


def preflight(
    study: Study,
    study_dir: Path,
    *,
    cache: str | Path | None = None,
    executor: str | None = None,
    workers: int = 1,
    yes: bool = False,
) -> Checked:
    """Every check of the module docs except the study directory's; writes nothing."""
    check_device(study)
    if executor is not None:
        check_executor(executor)
    check_models(study, cache)
    train_pairs = check_data(study)
    plan = make_plan(study, study_dir, cache)
    check_plan(study, plan, train_pairs, workers=workers, yes=yes)
    return Checked(plan=plan, train_pairs=train_pairs)


def _fail(study: Study, field: str, message: str) -> UserError:
    return UserError(f"{study.origin}: {field}: {message}")


def check_device(study: Study) -> None:
    """``[train] device``: a device name, and present here (CUDA index, MPS)."""
    device = study.config.train.device
    if not DEVICE_PATTERN.match(device):
        known = "auto, cpu, cuda, cuda:N, mps"
        raise _fail(study, "train.device", f"{device!r} is not a device ({known})")
    if device.startswith("cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            raise _fail(
                study, "train.device", f"{device!r}: this machine has {count} CUDA device(s)"
            )
    if device == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise _fail(study, "train.device", "'mps': not available on this machine")


def check_executor(name: str) -> None:
    """A registered executor whose package is installed (``ray``)."""
    from ftscale.study.executors import ExecutorOptions, make_executor

    make_executor(name, ExecutorOptions())
    if name == "ray" and importlib.util.find_spec("ray") is None:
        raise UserError(
            "executor 'ray': Ray is not installed (pip install 'ftscale[ray]' or ray[default])"
        )


def check_models(study: Study, cache: str | Path | None) -> None:
    """The cache can hold a ladder still to be built, and each rung to pretrain fits memory."""
    from ftscale.models.ladder import check_cache, entry_path, is_complete

    if cache is not None and Path(cache).exists() and not Path(cache).is_dir():
        raise UserError(f"--cache {cache}: is a file, expected a folder")
    if is_complete(entry_path(study.ladder, cache)):
        return
    check_cache(cache)
    if study.ladder.kind != "pretrain":
        return
    from ftscale.models.pretrain import Shape, shape_parameter_counts

    memory = _machine_memory()
    ladder = study.ladder
    for i, rung in enumerate(ladder.rungs):
        shape = Shape(rung.width, rung.layers, rung.heads, rung.ffn)
        total = shape_parameter_counts(shape, ladder.tokenizer.vocab_size, ladder.recipe.seq_len)
        need = total.total * TRAIN_BYTES_PER_PARAM
        if memory and need > memory:
            raise _fail(
                study,
                f"ladder.rungs.{i}",
                f"rung {rung.name!r} (width {rung.width}, {rung.layers} layers) has "
                f"{total.total:.3g} parameters; pretraining it needs about {_gib(need)} of "
                f"memory, this machine has {_gib(memory)}",
            )


def _machine_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:,.0f} GiB" if n < 2**50 else f"{n / 2**40:,.0f} TiB"


def check_data(study: Study) -> int:
    """Load the task's splits and the eval sets once (nothing written); the training pairs."""
    from ftscale.finetune.spec import DataSource, EvalSet, TaskConfig

    task = study.config.task
    try:
        TaskConfig(
            template=task.template,
            max_source_tokens=task.max_source_tokens,
            max_target_tokens=task.max_target_tokens,
        )
    except UserError as exc:
        raise _fail(study, "task.template", first_line(exc)) from None
    check_file(study, "task.spec", task.spec)
    columns = dict(source_column=task.source_column, target_column=task.target_column)
    sizes = {}
    for split in ("train", "dev", "test"):
        source = DataSource(task.spec, split, group=task.group, **columns)
        sizes[split] = len(_load(study, "task.spec", source.load))
    for i, item in enumerate(study.config.evals):
        where = f"evals.{i}.spec"
        check_file(study, where, item.spec)
        eval_set = EvalSet(item.name, item.spec, item.source_column, item.target_column)
        _load(study, where, lambda e=eval_set: e.load(task.eval_examples, task.shots))
    return sizes["train"]


def check_file(study: Study, field: str, spec: str) -> None:
    """A data file named by ``spec`` (not a ``builtin:``/``hf:`` task) must be a regular file."""
    if spec.startswith(("builtin:", "hf:")):
        return
    path = Path(spec)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise _fail(study, field, f"{spec!r}: no such file") from None
    except OSError as exc:
        raise _fail(study, field, f"{spec!r}: cannot read ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise _fail(study, field, f"{spec!r}: is a folder, expected a data file")
    if not stat.S_ISREG(mode):
        raise _fail(study, field, f"{spec!r}: not a regular file (a device or pipe)")
    if not os.access(path, os.R_OK):
        raise _fail(study, field, f"{spec!r}: not readable")


def _load(study: Study, field: str, load):
    try:
        return load()
    except UserError as exc:
        raise _fail(study, field, first_line(exc)) from None
    except (OSError, ValueError) as exc:
        raise _fail(study, field, f"cannot read: {first_line(exc)}") from None


def check_plan(study: Study, plan: Plan, train_pairs: int, *, workers: int, yes: bool) -> None:
    """At least one run; every D_f within the training pairs; the cost within the limits."""
    if not plan.runs:
        raise _fail(
            study, "sweeps", "the study plans no runs (every sweep is disabled or empty)"
        )
    largest = max(plan.runs, key=lambda r: r.examples)
    if largest.examples > train_pairs:
        field = "examples.per_method" if largest.method in study.config.examples.per_method else (
            "examples.sizes"
        )
        raise _fail(
            study,
            field,
            f"D_f {largest.examples:,} ({largest.method}) is more than the {train_pairs:,} "
            f"training pairs of task {study.config.task.spec}",
        )
    if not yes:
        check_cost(study, plan, workers)


def check_cost(study: Study, plan: Plan, workers: int) -> None:
    """Refuse a plan estimated above :data:`COST_LIMIT_H` hours (or, when the model sizes are
    unknown, a run above :data:`STEPS_LIMIT` steps); ``--yes`` accepts it."""
    longest = max(plan.runs, key=estimate_steps)
    steps = estimate_steps(longest)
    cause = _steps_cause(study)
    total = estimate_total(plan, workers)
    if total is not None and total > COST_LIMIT_H * 3600:
        raise _fail(
            study,
            cause,
            f"the {len(plan)} runs would take about {total / 3600:,.3g} h on this machine "
            f"(longest: {steps:,} steps); more than {COST_LIMIT_H:g} h: pass --yes to go ahead",
        )
    if total is None and steps > STEPS_LIMIT:
        raise _fail(
            study,
            cause,
            f"a run would take {steps:,} optimizer steps (more than {STEPS_LIMIT:,}); "
            "pass --yes to go ahead",
        )


def _steps_cause(study: Study) -> str:
    """The ``[train]`` field (with its value) that sets the runs' budget, for a cost message."""
    train = study.config.train
    if train.max_steps is not None:
        return f"train.max_steps = {train.max_steps:,}"
    return f"train.min_steps = {train.min_steps:,}, train.epochs = {train.epochs:g}"


def check_study_dir(study_dir: Path, study: Study) -> None:
    """Fail before writing anything if ``study_dir`` cannot hold this study: not a folder, in a
    missing or unwritable folder, holding another study or other files, or being run now."""
    if study_dir.exists() and not study_dir.is_dir():
        raise UserError(f"{study_dir}: exists and is not a directory")
    if not study_dir.parent.is_dir():
        raise UserError(f"{study_dir}: folder {study_dir.parent} does not exist")
    writable = study_dir if study_dir.is_dir() else study_dir.parent
    if not os.access(writable, os.W_OK | os.X_OK):
        raise UserError(f"{study_dir}: cannot write in {writable} (permission denied or read-only)")
    store = study_dir / STORE_FILE
    if store.exists():
        check_unlocked(study_dir)
        try:
            with Store(store, readonly=True) as existing:
                name = existing.meta_value("study")
        except BlankStore:
            name = None  # a run killed while it made the store: this run makes the schema
        if name is not None and name != study.name:
            raise UserError(
                f"{study_dir}: holds study {name!r}, not {study.name!r} (use another --dir)"
            )
    elif study_dir.is_dir() and any(study_dir.iterdir()):
        raise UserError(f"{study_dir}: not empty and not a study directory (use another --dir)")


def check_unlocked(study_dir: Path) -> None:
    """A one-line error naming the holder when another ``study run`` holds the directory's lock
    (the lock file is opened read-only: nothing is created)."""
    path = study_dir / LOCK_FILE
    try:
        handle = open(path)  # noqa: SIM115 (closed below)
    except OSError:
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise locked_error(study_dir, handle.read()) from None


def locked_error(study_dir: Path, holder: str) -> UserError:
    """The error of a second driver on one directory, naming the first (its lock file's text)."""
    who = holder.strip() or "another process"
    return UserError(
        f"{study_dir}: another `ftscale study run` is running this study ({who}); "
        "wait for it to end or stop it"
    )
