"""The run spec: one finetuning run as a value that can be saved, keyed, shipped and rerun.

Everything a run depends on lives here, and nothing here imports torch:

* :class:`TrainConfig`, how the run trains and evaluates. Its fields are the ONE definition of the
  training settings: their defaults, ranges and help. The CLI's options
  (:mod:`ftscale.commands.finetune`) and the study file's ``[train]`` table
  (:func:`study_train_fields`) are generated from them, and Python builds it directly.
* :class:`TaskConfig`, how pairs become prompts and targets.
* :class:`DataSource` and :class:`EvalSet`, where the pairs come from.
* :class:`FinetuneJob`, all of the above with the base model and the method: frozen, picklable,
  JSON round trip (:meth:`FinetuneJob.to_json` / :meth:`FinetuneJob.from_json`), and a stable
  :attr:`FinetuneJob.key`: the SHA-256 of its canonical JSON with the settings that change speed,
  not numbers, left out, and local data files named by their content, not their path.

:mod:`ftscale.finetune.recipe` runs a job; the study runner plans, stores and ships jobs.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import hashlib
import json
import math
import operator
import re
import string
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from ftscale.common import first_line, validation_problems
from ftscale.data.pairs import Pair, read_pairs
from ftscale.errors import UserError
from ftscale.finetune.methods import MethodConfig, make_method

#: Version of the spec's JSON layout; part of every key.
JOB_FORMAT = 1

# -- training settings -----------------------------------------------------------------------------


def _plain_int(value: Any) -> Any:
    """numpy integers (and other exact integer types) as ``int``; bools stay bools, so the strict
    integer check refuses them."""
    if not isinstance(value, bool | int) and hasattr(type(value), "__index__"):
        return operator.index(value)
    return value


def _rate(value: Any) -> Any:
    """A learning rate: ``None``, ``"auto"`` (any case), or a positive finite number, also given
    as text (the CLI's ``--lr 1e-3``)."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise ValueError("must be a positive number or 'auto'")
    if not (math.isfinite(number) and number > 0):
        raise ValueError("must be a positive number or 'auto'")
    return float(number)


#: Bytes per unit of a memory size: decimal (GB = 10^9 bytes) and binary (GiB = 2^30 bytes).
MEMORY_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
MEMORY_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)(?:e([+-]?\d+))?\s*([a-z]*)\s*")
_SIZE_PROBLEM = "must be a positive memory size such as 2GB, 1500MB or 1.5GiB"


def _memory_size(value: Any) -> Any:
    """A memory budget as whole bytes: ``None``, a positive number of bytes, or text with a unit
    (``2GB``, ``1500 MB``, ``1.5GiB``; GB = 10^9 bytes, GiB = 2^30, no unit: bytes)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(_SIZE_PROBLEM)
    number, unit = (value, "") if not isinstance(value, str) else _split_size(value)
    size = number * MEMORY_UNITS[unit]
    if not (math.isfinite(size) and size >= 1):
        raise ValueError(_SIZE_PROBLEM)
    return int(size)


def _split_size(text: str) -> tuple[float, str]:
    match = _SIZE.fullmatch(text.lower())
    if match is None or match.group(3) not in MEMORY_UNITS:
        raise ValueError(_SIZE_PROBLEM)
    digits, exponent, unit = match.groups()
    return float(digits) * 10.0 ** int(exponent or 0), unit


def _off_when_zero(value: Any) -> Any:
    """``0`` means "never" (``--patience 0``); stored as ``None``."""
    return None if value == 0 and not isinstance(value, bool) else value


#: How a validation error names a setting (pydantic calls ``__init__`` for ``model_validate`` too,
#: so :meth:`TrainConfig.from_dict` says how through this variable): ``None`` is the field name.
_NAMING: contextvars.ContextVar[Callable[[str], str] | None] = contextvars.ContextVar(
    "ftscale_setting_names", default=None
)

Count = Annotated[int, BeforeValidator(_plain_int), Field(strict=True, ge=1)]
Index = Annotated[int, BeforeValidator(_plain_int), Field(strict=True, ge=0)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Rate = Annotated[float | Literal["auto"] | None, BeforeValidator(_rate)]
#: Whole bytes once validated; ``str`` is in the type only because that is what a command line
#: hands over (``--max-memory 2GB``), and the validator turns it into bytes first.
MemorySize = Annotated[int | str | None, BeforeValidator(_memory_size)]

#: Scopes of a setting: where it may be set, and whether it is part of a job's key.
#: ``run``: a coordinate of the study's design (the sweeps choose it per run, not ``[train]``);
#: ``study``: set per study in ``[train]``; ``runtime``: changes speed or memory, never the
#: numbers, so it is left out of the key; ``task``: set in the study's ``[task]`` table.
SCOPES = ("run", "study", "runtime", "task")


def setting(default: Any, help: str, *, flag: str | None = None, scope: str = "study") -> Any:
    """A :class:`TrainConfig` field: its default, one line of help (the CLI's and the docs'), the
    short name used on the command line and in study files when it differs from the field's
    (``lr``), and its scope (see :data:`SCOPES`)."""
    assert scope in SCOPES, scope
    return Field(default, description=help, json_schema_extra={"flag": flag, "scope": scope})


class TrainConfig(BaseModel):
    """How one run trains and evaluates (see each field's help; units in brackets).

    Budget: ``max_steps`` optimizer steps if given, else ``max(min_steps, ceil(epochs * D_f /
    batch_size))``; with ``schedule = "wsd"`` that budget is only a cap (a safety net).
    Schedules: ``cosine``, linear warmup over ``warmup_fraction`` of the budget, then cosine decay
    to ``final_lr_fraction`` of the peak (:func:`ftscale.schedules.warmup_cosine`); ``wsd``, the
    same warmup, then the peak rate until the dev loss plateaus (``patience`` checks without a
    relative gain of ``min_improvement``), then a linear decay over ``decay_fraction`` of the
    steps so far (:func:`ftscale.schedules.warmup_stable_decay`), after which the run stops: it
    needs no length in advance, and the record says ``stop_reason = "plateau"`` and
    ``converged = true``.
    ``learning_rate``: ``None`` is the method's default, ``"auto"`` a short search on dev
    (:func:`ftscale.finetune.recipe.search_learning_rate`). Dev checks every ``eval_every`` steps
    (``None``: about ``evals`` per run) and at the end; early stop after ``patience`` checks
    without improvement. The test split is always scored whole.

    Frozen and validated: bad values raise a one-line :class:`~ftscale.errors.UserError` naming
    the field. Build a changed copy with :meth:`replace`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    examples: Count | None = setting(
        None, "D_f: training examples, a nested subset (default all).", scope="run"
    )
    subset_seed: Index = setting(0, "Seed of the nested training subset.", scope="run")
    seed: Index = setting(0, "Seed of initialisation, batch order and dropout.")
    learning_rate: Rate = setting(
        None,
        "Peak learning rate, or 'auto' for a short search on dev (default per method).",
        flag="lr",
    )
    optimizer: Literal["adamw", "adafactor"] = setting("adamw", "adamw or adafactor.")
    weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = setting(
        0.0, "AdamW / Adafactor weight decay."
    )
    batch_size: Count = setting(16, "Examples per optimizer step.")
    max_steps: Count | None = setting(None, "Optimizer steps (default from epochs).")
    epochs: Positive = setting(5.0, "Epochs over D_f when --max-steps is not given.")
    min_steps: Count = setting(50, "Fewest optimizer steps when the budget comes from epochs.")
    warmup_fraction: Annotated[float, Field(ge=0, lt=1)] = setting(
        0.05, "Share of the steps with a linear warmup."
    )
    final_lr_fraction: Annotated[float, Field(ge=0, le=1)] = setting(
        0.1, "The cosine decay ends at this share of the peak rate."
    )
    max_grad_norm: Positive | None = setting(1.0, "Gradient clipping norm (none: no clipping).")
    schedule: Literal["cosine", "wsd"] = setting(
        "cosine",
        "cosine: warmup, then cosine decay over the budget; wsd: warmup, the peak rate until dev "
        "plateaus, then a decay (the run stops when it ends).",
    )
    decay_fraction: Annotated[float, Field(gt=0, le=1)] = setting(
        0.2, "wsd: the decay lasts this share of the steps taken before it."
    )
    eval_every: Count | None = setting(None, "Steps between dev checks (default: about --evals).")
    dev_every_examples: Count | None = setting(
        None,
        "Dev checks every N training examples seen, at least once an epoch (when --eval-every "
        "is not given; default: about --evals checks per run).",
    )
    evals: Count = setting(10, "Dev checks per run when neither spacing is given.")
    patience: Annotated[Index | None, BeforeValidator(_off_when_zero)] = setting(
        3,
        "Dev checks without gain before stopping (cosine) or decaying (wsd); 0 never stops.",
    )
    min_improvement: Annotated[float, Field(ge=0, lt=1)] = setting(
        0.0, "A dev check gains when it is below the best by more than this share."
    )
    dev_examples: Count | None = setting(None, "Dev pairs per check (a fixed sample; default all).")
    gen_examples: Index = setting(64, "Test sources to generate for (greedy); 0 none.")
    eval_examples: Count = setting(
        64, "Pairs scored per --eval set (a seeded sample).", scope="task"
    )
    max_new_tokens: Count = setting(64, "Generation cap (tokens).")
    gen_batch_size: Count = setting(32, "Sources per generation batch.")
    eval_tokens_per_batch: Count = setting(8192, "Padded tokens per evaluation batch.")
    device: str = setting("auto", "auto, cpu, cuda, cuda:1, ...")
    threads: Count | None = setting(
        None, "CPU threads for the run (default: torch's setting).", scope="runtime"
    )
    bf16: bool = setting(
        True,
        "bf16 autocast where it is fast: GPUs that support it, CPUs with bf16 instructions "
        "for models of width 256 or more (off: float32 everywhere).",
    )
    fast_head: bool = setting(True, "Output head on target positions only (checked per run).")
    checkpointing: bool | None = setting(
        None,
        "Activation checkpointing of every layer (on) or none (off); default: the memory "
        "policy checkpoints only as many layers as --max-memory needs.",
        scope="runtime",
    )
    compile: bool | None = setting(
        None,
        "torch.compile the decoder layers (on) or not (off); default: on for models of 20M+ "
        "non-embedding parameters where a compiler is found (compiling takes ~10-30 s once).",
        scope="runtime",
    )
    max_memory: MemorySize = setting(
        None,
        "Memory budget of the run, e.g. 2GB, 1500MiB (default: what the process holds plus 80% "
        "of the RAM or GPU memory available); the fastest plan that fits is used.",
        scope="runtime",
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise UserError(validation_problems(exc.errors(), _NAMING.get())) from None

    @classmethod
    def from_dict(
        cls,
        values: dict[str, Any],
        origin: str = "train_config",
        where: Callable[[str], str] | None = None,
    ) -> TrainConfig:
        """Settings from a dict (a saved job, a study table, the CLI's options); one-line errors
        name each setting as ``where(name)`` (default ``origin.name``)."""
        if not isinstance(values, dict):
            raise UserError(f"{origin}: expected a table of settings, got {values!r}")
        token = _NAMING.set(where or (lambda name: f"{origin}.{name}"))
        try:
            return cls(**values)
        finally:
            _NAMING.reset(token)

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with ``changes`` applied."""
        return TrainConfig(**{**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Every setting, JSON-ready."""
        return self.model_dump(mode="json")

    def total_steps(self, examples: int) -> int:
        """Optimizer steps for a run on ``examples`` training examples."""
        if self.max_steps is not None:
            return self.max_steps
        return max(self.min_steps, math.ceil(self.epochs * steps_per_epoch(examples, self)))


def steps_per_epoch(examples: int, config: TrainConfig) -> int:
    """Optimizer steps in one pass over ``examples`` examples (the last batch may be short)."""
    return math.ceil(examples / config.batch_size)


def settings_info() -> dict[str, FieldInfo]:
    """Every training setting's field (name -> pydantic ``FieldInfo``), in declaration order."""
    return dict(TrainConfig.model_fields)


def setting_flag(name: str) -> str:
    """The short name of a setting on the command line and in study files (``lr``)."""
    return _extra(settings_info()[name]).get("flag") or name


def setting_scope(name: str) -> str:
    return _extra(settings_info()[name])["scope"]


def _extra(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


#: Settings left out of a job's key: they change how fast a run goes, never what it computes.
RUNTIME_FIELDS = frozenset(n for n in TrainConfig.model_fields if setting_scope(n) == "runtime")

#: Settings added after the spec's first format, with the value every earlier job had: a job
#: whose setting still has it leaves it out of its key, so the keys of earlier jobs (and the
#: studies that store them) stay what they were.
LATER_SETTINGS: dict[str, Any] = {
    "schedule": "cosine",
    "decay_fraction": 0.2,
    "dev_every_examples": None,
    "min_improvement": 0.0,
}

#: Settings the members of one pack (:mod:`ftscale.finetune.packing`) must share: one batch shape,
#: one dev and test pass, one device and precision. Every other setting (D_f, seeds, rate,
#: schedule, budget, dev-check spacing, patience, generation) is each member's own.
PACK_SHARED_SETTINGS = frozenset(
    {"batch_size", "dev_examples", "eval_tokens_per_batch", "device", "bf16", "fast_head"}
    | {"checkpointing", "compile", "max_memory", "eval_examples", "threads"}
)

#: Defaults of a study's ``[train]`` table where they differ from a single run's: a study runs
#: many runs, so each checks dev on a fixed sample of 150 pairs and generates for 32 test sources.
STUDY_DEFAULTS: dict[str, Any] = {"dev_examples": 150, "gen_examples": 32}


def study_train_fields() -> dict[str, tuple[Any, Any]]:
    """The fields of a study's ``[train]`` table, generated from :class:`TrainConfig` (for
    ``pydantic.create_model``): every setting except the per-run ones, the ``[task]`` ones and
    threads (the study's ``[run]`` table sets them), under its short name, with
    :data:`STUDY_DEFAULTS`. ``lr`` also takes a table of rates per method (``lr = { fmt = 1e-3,
    lora = "auto" }``)."""
    hints = typing.get_type_hints(TrainConfig, include_extras=True)
    out: dict[str, tuple[Any, Any]] = {}
    for name, info in settings_info().items():
        if setting_scope(name) in ("run", "task") or name == "threads":
            continue
        annotation = hints[name]
        if name == "learning_rate":
            annotation = Rate | dict[str, Rate]
        default = STUDY_DEFAULTS.get(name, info.default)
        out[setting_flag(name)] = (annotation, Field(default, description=info.description))
    return out


# -- the task --------------------------------------------------------------------------------------


def bleu_tokenizers() -> list[str]:
    """sacrebleu's BLEU tokenizer names (``13a``, ``zh``, ``intl``, ...)."""
    from sacrebleu.metrics.bleu import BLEU

    return list(BLEU.TOKENIZERS)


@dataclass(frozen=True)
class TaskConfig:
    """How pairs become token sequences.

    ``template`` is a ``str.format`` pattern with ``{src}`` and optionally other fields filled from
    ``fields`` (e.g. ``{lang}``). ``target_prefix`` goes between the prompt and the target (a
    space by default, so the target starts as a new word). Sources longer than
    ``max_source_tokens`` tokens and targets longer than ``max_target_tokens`` tokens are cut
    (the end is dropped) and counted. ``add_bos``/``add_eos`` prepend the tokenizer's begin token /
    append its end token when it has one; the end token is part of the target so the model
    learns to stop. ``bleu_tokenize`` is sacrebleu's BLEU tokenizer for the target language
    (``13a``; ``zh`` for Chinese, ``ja-mecab`` needs extras).
    """

    template: str = "{src} ="
    fields: dict[str, str] = field(default_factory=dict)
    target_prefix: str = " "
    max_source_tokens: int = 256
    max_target_tokens: int = 256
    add_bos: bool = True
    add_eos: bool = True
    bleu_tokenize: str = "13a"

    def __post_init__(self) -> None:
        self._check_template()
        for name in ("max_source_tokens", "max_target_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        tokenizers = bleu_tokenizers()
        if self.bleu_tokenize not in tokenizers:
            raise UserError(
                f"bleu_tokenize {self.bleu_tokenize!r} unknown (sacrebleu has: "
                f"{', '.join(tokenizers)})"
            )

    def _check_template(self) -> None:
        try:
            parsed = list(string.Formatter().parse(self.template))
        except ValueError as exc:
            raise UserError(f"template {self.template!r}: not a format string: {exc}") from None
        names = {name for _, name, _, _ in parsed if name is not None}
        if any(not name.isidentifier() for name in names):
            bad = sorted(n for n in names if not n.isidentifier())[0]
            raise UserError(f"template {self.template!r}: {{{bad}}} is not a field name")
        if "src" not in names:
            raise UserError(f"template {self.template!r}: must contain {{src}}")
        missing = sorted(names - {"src"} - set(self.fields))
        if missing:
            raise UserError(f"template {self.template!r}: no value for field {{{missing[0]}}}")

    def __hash__(self) -> int:  # fields is a dict; hash it as sorted items
        values = [getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "fields"]
        return hash((tuple(values), tuple(sorted(self.fields.items()))))

    def prompt(self, source: str) -> str:
        """The model input for one source text (the template filled in)."""
        return self.template.format(src=source, **self.fields)

    def with_demonstrations(self, demos: list[Pair] | tuple[Pair, ...]) -> TaskConfig:
        """This task with the demonstrations (each filled in as an example, then a newline)
        before every prompt; the task itself when there are none."""
        if not demos:
            return self
        shown = "".join(self.prompt(d.source) + self.target_prefix + d.target + "\n" for d in demos)
        escaped = shown.replace("{", "{{").replace("}", "}}")
        budget = self.max_source_tokens + 4096  # demonstrations are never cut as a source would be
        return dataclasses.replace(self, template=escaped + self.template, max_source_tokens=budget)


#: The task defaults (the study's ``[task]`` table and the CLI read them from here).
TASK_DEFAULTS = TaskConfig()

# -- data ------------------------------------------------------------------------------------------


def _is_task_spec(spec: str) -> bool:
    return spec.startswith(("builtin:", "hf:"))


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
        if not _is_task_spec(self.spec) and path.is_file():
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
        return not _is_task_spec(self.spec)

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


# -- the job ---------------------------------------------------------------------------------------

#: Top-level fields of a job's JSON (see :meth:`FinetuneJob.to_dict`).
JOB_FIELDS = frozenset(
    {"format", "model", "revision", "gguf_file", "method", "train", "dev", "test", "task"}
    | {"train_config", "evals", "shots"}
)


@dataclass(frozen=True)
class FinetuneJob:
    """One finetuning run, fully specified (see the module docs).

    ``model`` is a local model directory, a ``.gguf`` file or a hub id; ``revision`` a hub branch,
    tag or commit (the pretraining-data axis of external families); ``gguf_file`` a GGUF file
    inside ``model``. ``method`` is a :class:`~ftscale.finetune.methods.MethodConfig`. ``train``,
    ``dev`` and ``test`` are :class:`DataSource` values; ``task`` the template and length caps;
    ``train_config`` the :class:`TrainConfig` (D_f is its ``examples``).
    """

    model: str
    method: MethodConfig
    train: DataSource
    dev: DataSource
    test: DataSource
    revision: str | None = None
    gguf_file: str | None = None
    task: TaskConfig = field(default_factory=TaskConfig)
    train_config: TrainConfig = field(default_factory=TrainConfig)
    evals: tuple[EvalSet, ...] = ()
    shots: int = 0

    def __post_init__(self) -> None:
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

    # -- serialisation -----------------------------------------------------------------------
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
            "train_config": self.train_config.to_dict(),
            "evals": [dataclasses.asdict(e) for e in self.evals],
            "shots": self.shots,
        }

    def to_json(self, indent: int | None = None) -> str:
        """The spec as JSON (keys sorted: the canonical form the key hashes)."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True, ensure_ascii=False)

    def printed(self) -> str:
        """What ``ftscale finetune --print-job`` prints: ``{"key": ..., "job": {...}}``;
        :meth:`from_dict` reads it back."""
        return json.dumps({"key": self.key, "job": self.to_dict()}, indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "job") -> FinetuneJob:
        """A job from :meth:`to_dict` output, or from :meth:`printed` output (``{"key", "job"}``:
        the key is derived, so an edited job simply gets its new key); a one-line
        :class:`UserError` naming ``origin`` and the field when something is missing or wrong."""
        if isinstance(data, dict) and set(data) == {"key", "job"}:
            data = data["job"]
        if not isinstance(data, dict):
            raise UserError(f"{origin}: expected a JSON object, got {type(data).__name__}")
        if data.get("format", JOB_FORMAT) != JOB_FORMAT:
            raise UserError(f"{origin}: job format {data.get('format')!r} (this ftscale reads 1)")
        unknown = sorted(set(data) - JOB_FIELDS)
        if unknown:
            raise UserError(f"{origin}: unknown field {unknown[0]!r}")
        try:
            return cls._build(data, origin)
        except UserError as exc:
            raise UserError(f"{origin}: {first_line(exc)}") from None
        except KeyError as exc:
            raise UserError(f"{origin}: missing field {exc.args[0]!r}") from None
        except TypeError as exc:
            raise UserError(f"{origin}: {first_line(exc)}") from None

    @classmethod
    def _build(cls, data: dict[str, Any], origin: str) -> FinetuneJob:
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
            train_config=TrainConfig.from_dict(data.get("train_config", {})),
            evals=tuple(EvalSet(**e) for e in data.get("evals", [])),
            shots=data.get("shots", 0),
        )

    @classmethod
    def from_json(cls, text: str, origin: str = "job") -> FinetuneJob:
        """A job from :meth:`to_json` (or :meth:`printed`) text."""
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

    # -- identity ----------------------------------------------------------------------------
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
            k: v
            for k, v in data["train_config"].items()
            if k not in RUNTIME_FIELDS and not (k in LATER_SETTINGS and v == LATER_SETTINGS[k])
        }
        canonical = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def replace(self, **changes: Any) -> FinetuneJob:
        """A copy with fields changed; ``train_config``/``task`` fields may be given by name (a
        name the job itself has, e.g. ``evals``, is the job's)."""
        own_names = {f.name for f in dataclasses.fields(FinetuneJob)}
        train_names = set(TrainConfig.model_fields) - own_names
        task_names = {f.name for f in dataclasses.fields(TaskConfig)} - own_names
        own = {k: v for k, v in changes.items() if k not in train_names | task_names}
        train = {k: v for k, v in changes.items() if k in train_names}
        task = {k: v for k, v in changes.items() if k in task_names and k not in train_names}
        if train:
            own["train_config"] = self.train_config.replace(**train)
        if task:
            own["task"] = dataclasses.replace(self.task, **task)
        return dataclasses.replace(self, **own)

    def pack_signature(self, base: str) -> str:
        """Jobs with one signature can train as one pack: the same ``base`` architecture (the
        caller names it: a ladder rung), method and options (a LoRA-like method's rank aside),
        data, task, eval sets and :data:`PACK_SHARED_SETTINGS`."""
        method = self.method.to_dict()
        entry = self.method.entry
        if entry.family == "low-rank" and entry.size_option is not None:
            method["options"] = {
                k: v for k, v in method["options"].items() if k != entry.size_option
            }
        settings = self.train_config.to_dict()
        data = {
            "base": base,
            "method": method,
            "sources": [dataclasses.asdict(s) for s in (self.train, self.dev, self.test)],
            "task": dataclasses.asdict(self.task),
            "evals": [dataclasses.asdict(e) for e in self.evals],
            "shots": self.shots,
            "settings": {k: settings[k] for k in sorted(PACK_SHARED_SETTINGS)},
        }
        return json.dumps(data, sort_keys=True, ensure_ascii=False)

    def splits(self) -> tuple[list[Pair], list[Pair], list[Pair]]:
        """The job's (train, dev, test) pairs, read from its sources; a one-line error when D_f
        is larger than the training data."""
        train, dev, test = self.train.load(), self.dev.load(), self.test.load()
        examples = self.train_config.examples
        if examples is not None and examples > len(train):
            raise UserError(
                f"examples {examples} is larger than the training data {self.train.spec} "
                f"({len(train)} pairs)"
            )
        return train, dev, test
