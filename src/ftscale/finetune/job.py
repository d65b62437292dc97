"""The run spec: one finetuning run as a value that can be saved, keyed, shipped and rerun.

A :class:`FinetuneJob` holds everything a run depends on: the base model (path, hub id, revision,
GGUF file), the method and its options, where the train/dev/test pairs come from, the prompt
template, and the training settings (D_f, subset seed, seed, schedule, evaluation). It is frozen
and picklable, round-trips through JSON (:meth:`FinetuneJob.to_json` /
:meth:`FinetuneJob.from_json`), and has a stable :attr:`FinetuneJob.key`: the SHA-256 of its
canonical JSON with the run-time settings that do not change the result (CPU threads) left out,
and with local data files named by their content, not their path. :func:`run_job` runs one and
returns its :class:`~ftscale.finetune.record.RunRecord`, which carries the key and the spec.

This is the unit the study runner plans, stores and ships to worker processes or Ray tasks.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftscale.common import first_line
from ftscale.data.pairs import Pair, read_pairs
from ftscale.errors import UserError
from ftscale.finetune.methods import MethodConfig, make_method
from ftscale.finetune.tasks import TaskConfig

#: Version of the spec's JSON layout; part of every key.
JOB_FORMAT = 1
#: Training settings that change how fast a run goes, never what it computes: left out of the key.
RUNTIME_FIELDS = frozenset({"threads", "checkpointing"})


@dataclass(frozen=True)
class DataSource:
    """Where one split's (source, target) pairs come from.

    ``spec`` is a task spec (``builtin:en-de``, ``hf:NAME``, or a JSONL/CSV/Parquet path). With
    ``split`` (``train``, ``dev`` or ``test``) the task's split is taken (see
    :func:`ftscale.data.tasks.load_task`); without it the file is read whole as this split's pairs.
    ``source_column``/``target_column`` name the text columns of user files, ``group`` a column of
    group ids kept within one split.
    """

    spec: str
    split: str | None = None
    source_column: str = "source"
    target_column: str = "target"
    group: str | None = None

    def load(self) -> list[Pair]:
        """The pairs (a one-line :class:`~ftscale.errors.UserError` when they cannot be read)."""
        if self.split is None:
            return read_pairs(self.spec, self.source_column, self.target_column)
        from ftscale.data.tasks import load_task

        return load_task(
            self.spec,
            self.split,
            source=self.source_column,
            target=self.target_column,
            group=self.group,
        )

    def identity(self) -> dict[str, Any]:
        """What names this source in a key: the spec, or a local file's content digest."""
        out = dataclasses.asdict(self)
        path = Path(self.spec)
        if not self.spec.startswith(("builtin:", "hf:")) and path.is_file():
            out["spec"] = "sha256:" + _file_digest(str(path.resolve()), path.stat().st_mtime_ns)
        return out


@dataclass(frozen=True)
class EvalSet:
    """An extra evaluation set for the study's zero-shot/few-shot axis (``--eval NAME=SOURCE``).

    ``spec`` is a task spec or a file. A task (``builtin:fr-de``, ``hf:NAME``) is scored on its
    test split, and few-shot demonstrations come from its train split, or its dev split when it
    has no train split (``builtin:fr-de`` has dev and test only). A file is read whole: the scored
    examples are a seeded sample and the demonstrations come from the rest of the file.
    """

    name: str
    spec: str
    source_column: str = "source"
    target_column: str = "target"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not isinstance(self.spec, str):
            raise UserError(f"eval set {self.name!r}={self.spec!r}: expected NAME=SOURCE")
        if not str(self.name).strip() or not str(self.spec).strip():
            raise UserError(f"eval set {self.name!r}={self.spec!r}: expected NAME=SOURCE")

    def is_file(self) -> bool:
        """Whether ``spec`` is a plain data file (read whole) rather than a task with splits."""
        return not self.spec.startswith(("builtin:", "hf:"))

    def load(self, examples: int, shots: int, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
        """``(scored pairs, demonstrations)``: at most ``examples`` scored pairs (a seeded sample
        fixed by ``seed``) and ``shots`` demonstrations (seeded), none of them scored."""
        import numpy as np

        rng = np.random.default_rng(seed)
        if self.is_file():
            pairs = read_pairs(self.spec, self.source_column, self.target_column)
            if shots >= len(pairs):
                raise UserError(
                    f"eval set {self.name!r}: {shots} shots need more than the "
                    f"{len(pairs)} pairs of {self.spec}"
                )
            order = rng.permutation(len(pairs)).tolist()
            count = min(examples, len(pairs) - shots)
            scored = [pairs[i] for i in sorted(order[:count])]
            pool = [pairs[i] for i in sorted(order[count:])]
        else:
            test = self._split("test")
            keep = sorted(rng.permutation(len(test))[:examples].tolist())
            scored = [test[i] for i in keep]
            pool = self._split("train", "dev") if shots else []
        if not scored:
            raise UserError(f"eval set {self.name!r}: {self.spec} has no pairs left to score")
        if shots > len(pool):
            raise UserError(
                f"eval set {self.name!r}: {shots} shots but only {len(pool)} demonstration pairs"
            )
        demos = [pool[i] for i in sorted(rng.permutation(len(pool))[:shots].tolist())]
        return scored, demos

    def _split(self, *names: str) -> list[Pair]:
        from ftscale.data.tasks import load_task

        last: UserError | None = None
        for split in names:
            try:
                return load_task(
                    self.spec, split, source=self.source_column, target=self.target_column
                )
            except UserError as exc:
                last = exc
        raise UserError(f"eval set {self.name!r}: {first_line(last)}")

    def identity(self) -> dict[str, Any]:
        """What names this set in a key (a local file by its content digest)."""
        out = dataclasses.asdict(self)
        out["spec"] = DataSource(self.spec).identity()["spec"]
        return out

    @classmethod
    def parse(cls, text: str, **columns: str) -> EvalSet:
        """``NAME=SOURCE`` (the ``--eval`` option)."""
        name, sep, spec = str(text).partition("=")
        if not sep or not name.strip() or not spec.strip():
            raise UserError(f"--eval {text!r}: expected NAME=SOURCE, e.g. fr-de=builtin:fr-de")
        return cls(name.strip(), spec.strip(), **columns)


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, mtime_ns: int) -> str:
    """SHA-256 of a file's bytes (cached per path and modification time)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class FinetuneJob:
    """One finetuning run, fully specified (see the module docs).

    ``model`` is a local model directory, a ``.gguf`` file or a hub id; ``revision`` a hub branch,
    tag or commit (the pretraining-data axis of external families); ``gguf_file`` a GGUF file
    inside ``model``. ``method`` is a :class:`~ftscale.finetune.methods.MethodConfig`. ``train``,
    ``dev`` and ``test`` are :class:`DataSource` values; ``task`` the template and length caps;
    ``train_config`` the :class:`~ftscale.finetune.train.TrainConfig` (D_f is its ``examples``).
    """

    model: str
    method: MethodConfig
    train: DataSource
    dev: DataSource
    test: DataSource
    revision: str | None = None
    gguf_file: str | None = None
    task: TaskConfig = field(default_factory=TaskConfig)
    train_config: Any = None  # TrainConfig; Any keeps this module free of train.py at import
    evals: tuple[EvalSet, ...] = ()
    shots: int = 0

    def __post_init__(self) -> None:
        from ftscale.finetune.train import TrainConfig

        if self.train_config is None:
            object.__setattr__(self, "train_config", TrainConfig())
        if not isinstance(self.train_config, TrainConfig):
            raise UserError(f"train_config must be a TrainConfig, got {self.train_config!r}")
        if not isinstance(self.method, MethodConfig):
            raise UserError(f"method must be a MethodConfig, got {self.method!r}")
        if not str(self.model).strip():
            raise UserError("model: empty")
        object.__setattr__(self, "evals", tuple(self.evals))
        if any(not isinstance(e, EvalSet) for e in self.evals):
            raise UserError("evals must be EvalSet values")
        names = [e.name for e in self.evals]
        if len(set(names)) != len(names):
            raise UserError(f"eval set names must differ (got {', '.join(names)})")
        if isinstance(self.shots, bool) or not isinstance(self.shots, int) or self.shots < 0:
            raise UserError(f"shots must be an integer >= 0, got {self.shots!r}")

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return {
            "format": JOB_FORMAT,
            "model": self.model,
            "revision": self.revision,
            "gguf_file": self.gguf_file,
            "method": self.method.to_dict(),
            "train": dataclasses.asdict(self.train),
            "dev": dataclasses.asdict(self.dev),
            "test": dataclasses.asdict(self.test),
            "task": dataclasses.asdict(self.task),
            "train_config": dataclasses.asdict(self.train_config),
            "evals": [dataclasses.asdict(e) for e in self.evals],
            "shots": self.shots,
        }

    def to_json(self, indent: int | None = None) -> str:
        """The spec as JSON (keys sorted: the canonical form the key hashes)."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "job") -> FinetuneJob:
        """A job from :meth:`to_dict` output; a one-line :class:`UserError` naming ``origin`` and
        the field when something is missing or wrong."""
        from ftscale.finetune.train import TrainConfig

        if not isinstance(data, dict):
            raise UserError(f"{origin}: expected a JSON object, got {type(data).__name__}")
        if data.get("format", JOB_FORMAT) != JOB_FORMAT:
            raise UserError(f"{origin}: job format {data.get('format')!r} (this ftscale reads 1)")
        known = {"format", "model", "revision", "gguf_file", "method", "train", "dev", "test"}
        known |= {"evals", "shots"}
        unknown = sorted(set(data) - known - {"task", "train_config"})
        if unknown:
            raise UserError(f"{origin}: unknown field {unknown[0]!r}")
        try:
            method = data["method"]
            return cls(
                model=data["model"],
                revision=data.get("revision"),
                gguf_file=data.get("gguf_file"),
                method=make_method(method["name"], **method.get("options", {})),
                train=DataSource(**data["train"]),
                dev=DataSource(**data["dev"]),
                test=DataSource(**data["test"]),
                task=TaskConfig(**data.get("task", {})),
                train_config=TrainConfig(**data.get("train_config", {})),
                evals=tuple(EvalSet(**e) for e in data.get("evals", [])),
                shots=data.get("shots", 0),
            )
        except UserError as exc:
            raise UserError(f"{origin}: {first_line(exc)}") from None
        except KeyError as exc:
            raise UserError(f"{origin}: missing field {exc.args[0]!r}") from None
        except TypeError as exc:
            raise UserError(f"{origin}: {first_line(exc)}") from None

    @classmethod
    def from_json(cls, text: str, origin: str = "job") -> FinetuneJob:
        """A job from :meth:`to_json` text."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{origin}: not JSON: {first_line(exc)}") from None
        return cls.from_dict(data, origin)

    @classmethod
    def read(cls, path: str | Path) -> FinetuneJob:
        """A job saved as JSON (e.g. by ``ftscale finetune --print-job``)."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such job file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: cannot read: {first_line(exc)}") from None
        return cls.from_json(text, str(path))

    # -- identity --------------------------------------------------------------------------------
    @property
    def key(self) -> str:
        """Stable 16-hex-digit key: SHA-256 of the canonical JSON of what decides the result."""
        data = self.to_dict()
        for name in ("train", "dev", "test"):
            data[name] = getattr(self, name).identity()
        data["evals"] = [e.identity() for e in self.evals]
        if not self.evals:  # settings that change nothing without eval sets stay out of the key
            del data["evals"], data["shots"], data["train_config"]["eval_examples"]
        data["train_config"] = {
            k: v for k, v in data["train_config"].items() if k not in RUNTIME_FIELDS
        }
        canonical = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def replace(self, **changes: Any) -> FinetuneJob:
        """A copy with fields changed; ``train_config``/``task`` fields may be given by name (a
        name the job itself has, e.g. ``evals``, is the job's)."""
        from ftscale.finetune.train import TrainConfig

        own_names = {f.name for f in dataclasses.fields(FinetuneJob)}
        train_names = {f.name for f in dataclasses.fields(TrainConfig)} - own_names
        task_names = {f.name for f in dataclasses.fields(TaskConfig)} - own_names
        own = {k: v for k, v in changes.items() if k not in train_names | task_names}
        train = {k: v for k, v in changes.items() if k in train_names}
        task = {k: v for k, v in changes.items() if k in task_names and k not in train_names}
        if train:
            own["train_config"] = dataclasses.replace(self.train_config, **train)
        if task:
            own["task"] = dataclasses.replace(self.task, **task)
        return dataclasses.replace(self, **own)


def load_splits(job: FinetuneJob) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """The job's (train, dev, test) pairs, read from its sources."""
    return job.train.load(), job.dev.load(), job.test.load()


def run_job(job: FinetuneJob, progress: Any = None):
    """Run one job and return its :class:`~ftscale.finetune.record.RunRecord` (with ``key`` and
    ``job`` filled in). Bad input raises a one-line :class:`~ftscale.errors.UserError` before any
    training; a run that fails (NaN/inf loss, out of memory) returns a record with
    ``status="failed"``. ``progress`` receives training progress (see
    :mod:`ftscale.finetune.progress`; ``None``: silent)."""
    from ftscale.finetune.train import finetune

    train, dev, test = load_splits(job)
    examples = job.train_config.examples
    if examples is not None and examples > len(train):
        raise UserError(
            f"examples {examples} is larger than the training data {job.train.spec} "
            f"({len(train)} pairs)"
        )
    record = finetune(
        model=job.model,
        method=job.method,
        train=train,
        dev=dev,
        test=test,
        train_config=job.train_config,
        task=job.task,
        gguf_file=job.gguf_file,
        revision=job.revision,
        evals=job.evals,
        shots=job.shots,
        progress=progress,
    )
    record.model = job.model + (f"/{job.gguf_file}" if job.gguf_file else "")
    record.revision = job.revision
    record.key = job.key
    record.job = job.to_dict()
    return record
