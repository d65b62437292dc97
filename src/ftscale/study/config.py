"""The study file: one TOML file that declares a whole finetuning-scaling study.

A study names its base models (an inline ``[ladder]`` table with the ladder schema of
:mod:`ftscale.models.ladder`, or ``ladder = "path/to/ladder.toml"``, pretrained here or an external
family with revisions), the task and extra eval sets, the methods and their default options, the
sweeps of the study's design (model size, pretraining data, PET size) with their held-out values,
the finetuning-data sizes D_f per method and subset seeds, the training settings (``lr = "auto"``
searches one rate per method and base model), the analysis (law forms, fitting space, bootstrap
replicates) and how to run it (executor, workers, threads). ``docs/study.md`` lists every field.

Validation is pydantic with unknown keys forbidden; every problem is reported on one line that
names the file, the field and the bad value, misspelt keys first.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ftscale.errors import UserError

#: Prefix of the study files shipped inside the package (``builtin:quickstart``).
BUILTIN_PREFIX = "builtin:"
#: Study run by ``ftscale study run`` with no file.
DEFAULT_STUDY = "builtin:quickstart"
#: Name pattern shared with ladder and rung names (also used as a folder name).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

PositiveInt = Annotated[int, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskSection(_Strict):
    """The finetuning task: a task spec (``builtin:en-de``, a JSONL/CSV/Parquet file, ``hf:NAME``)
    split into train/dev/test by :func:`ftscale.data.tasks.load_task`, the prompt template, a
    cap on test pairs (a fixed seeded sample, the same for every run; ``None`` = all), and for the
    extra eval sets the demonstrations per prompt (``shots``, 0 = zero-shot) and the pairs scored
    (``eval_examples``)."""

    spec: str = "builtin:en-de"
    source_column: str = "source"
    target_column: str = "target"
    group: str | None = None
    template: str = "{src} ="
    max_source_tokens: PositiveInt = 256
    max_target_tokens: PositiveInt = 256
    test_examples: PositiveInt | None = None
    shots: Annotated[int, Field(ge=0)] = 0
    eval_examples: PositiveInt = 64


class EvalSection(_Strict):
    """An extra evaluation set (zero/few-shot generalisation), scored for the base model and for
    every finetuned one (see :class:`ftscale.finetune.job.EvalSet`): a task such as
    ``builtin:fr-de`` is scored on its test split, a file on a seeded sample of its rows. How
    many pairs are scored and how many demonstrations precede each are ``[task] eval_examples``
    and ``[task] shots``."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    spec: str
    source_column: str = "source"
    target_column: str = "target"


class ModelSizeSweep(_Strict):
    """Model size: every rung at its final checkpoint. ``holdout``: ``"max"`` (the largest rung,
    as the study), ``"none"`` or a list of rung names."""

    enabled: bool = True
    methods: list[str] | None = None
    holdout: Literal["max", "none"] | list[str] = "max"


class PretrainingSweep(_Strict):
    """Pretraining data: every checkpoint of one rung (default: the first, smallest, rung).
    ``holdout``: ``"middle"`` (a middle checkpoint, as the study; none with fewer than three),
    ``"none"`` or a list of token counts."""

    enabled: bool = True
    rung: str | None = None
    methods: list[str] | None = None
    holdout: Literal["middle", "none"] | list[PositiveInt] = "middle"


class PetSizeSweep(_Strict):
    """PET size on the smallest rung's final checkpoint: ``sizes`` maps a method to its sizes
    (prompt length for ``prompt``, rank for ``lora``). ``holdout``: ``"max"`` or ``"none"``."""

    enabled: bool = True
    sizes: dict[str, list[PositiveInt]] = Field(default_factory=dict)
    holdout: Literal["max", "none"] = "max"


class SweepsSection(_Strict):
    """The study's three sweeps; each may be turned off with ``enabled = false``."""

    model_size: ModelSizeSweep = ModelSizeSweep()
    pretraining: PretrainingSweep = PretrainingSweep()
    pet_size: PetSizeSweep = PetSizeSweep()


class ExamplesSection(_Strict):
    """Finetuning-data sizes D_f (examples): ``sizes`` for every method, ``per_method`` overrides,
    ``holdout`` ``"max"`` (the largest D_f, as the study) or ``"none"``, and ``subset_seeds``
    (each point is the mean over these random subsets)."""

    sizes: list[PositiveInt] = Field(default_factory=lambda: [250, 500, 1000])
    per_method: dict[str, list[PositiveInt]] = Field(default_factory=dict)
    holdout: Literal["max", "none"] = "max"
    subset_seeds: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [0])

    @field_validator("sizes", "subset_seeds")
    @classmethod
    def _distinct(cls, values: list) -> list:
        if not values:
            raise ValueError("must not be empty")
        if len(set(values)) != len(values):
            raise ValueError(f"values are not distinct: {values}")
        return values

    def for_method(self, method: str) -> list[int]:
        """D_f values of ``method``, ascending."""
        return sorted(self.per_method.get(method, self.sizes))


class TrainSection(_Strict):
    """Training settings of every run (:class:`ftscale.finetune.train.TrainConfig` fields).
    ``lr`` is a rate, ``"auto"`` (one search per method and base model, reused for its sweep), or
    a table per method; omitted = each method's default rate."""

    lr: float | Literal["auto"] | dict[str, float | Literal["auto"]] | None = None
    optimizer: Literal["adamw", "adafactor"] = "adamw"
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    batch_size: PositiveInt = 16
    epochs: Annotated[float, Field(gt=0)] = 5.0
    min_steps: PositiveInt = 50
    max_steps: PositiveInt | None = None
    warmup_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.05
    final_lr_fraction: Annotated[float, Field(ge=0, le=1)] = 0.1
    evals: PositiveInt = 10
    eval_every: PositiveInt | None = None
    patience: PositiveInt | None = 3
    dev_examples: PositiveInt | None = 150
    gen_examples: Annotated[int, Field(ge=0)] = 32
    max_new_tokens: PositiveInt = 64
    seed: int = 0
    device: str = "auto"
    bf16: bool = True

    @field_validator("lr")
    @classmethod
    def _positive_rate(cls, value):
        rates = value.values() if isinstance(value, dict) else [value]
        for rate in rates:
            if isinstance(rate, float) and not rate > 0:
                raise ValueError(f"learning rate must be positive, got {rate}")
        return value

    def rate_for(self, method: str) -> float | str | None:
        """The learning rate setting of ``method``."""
        if isinstance(self.lr, dict):
            return self.lr.get(method)
        return self.lr


class AnalysisSection(_Strict):
    """How the runs are fitted: law ``forms`` (registered two-variable forms), residual
    ``space``, bootstrap replicates (0: no intervals), ``refine`` (best grid starts refined by
    L-BFGS in each fit), the bootstrap ``seed`` and the interval ``level``."""

    forms: list[str] = Field(default_factory=lambda: ["multiplicative", "additive"])
    space: Literal["log", "linear"] = "log"
    bootstrap: Annotated[int, Field(ge=0, le=100_000)] = 200
    refine: Annotated[int, Field(ge=1, le=4096)] = 16
    seed: int = 0
    level: Annotated[float, Field(gt=0, lt=1)] = 0.95

    @field_validator("forms")
    @classmethod
    def _known_forms(cls, forms: list[str]) -> list[str]:
        from ftscale.laws import available_forms, get_form

        if not forms:
            raise ValueError("must name at least one law form")
        for name in forms:
            if name not in available_forms():
                raise ValueError(
                    f"unknown law form {name!r} (known: {', '.join(available_forms())})"
                )
            if get_form(name).variables != ("x", "d"):
                raise ValueError(f"law form {name!r} is not a law of (X, D_f)")
        return forms


class RunSection(_Strict):
    """Defaults of ``ftscale study run``: ``executor`` (``local``, ``process``, ``ray``), worker
    processes (0: automatic), torch threads per run (0: automatic), and the Ray resources of one
    run (``num_cpus``, ``num_gpus``)."""

    executor: str = "local"
    workers: Annotated[int, Field(ge=0)] = 0
    threads: Annotated[int, Field(ge=0)] = 0
    num_cpus: Annotated[float, Field(gt=0)] = 1.0
    num_gpus: Annotated[float, Field(ge=0)] = 0.0


class StudyConfig(_Strict):
    """A study file (see the module docs and ``docs/study.md``)."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    description: str = ""
    ladder: dict[str, Any] | str
    sizes: dict[str, PositiveInt] = Field(default_factory=dict)
    task: TaskSection = TaskSection()
    evals: list[EvalSection] = Field(default_factory=list)
    methods: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"fmt": {}, "lora": {"rank": 4}, "prompt": {"prompt_length": 16}}
    )
    sweeps: SweepsSection = SweepsSection()
    examples: ExamplesSection = ExamplesSection()
    train: TrainSection = TrainSection()
    analysis: AnalysisSection = AnalysisSection()
    run: RunSection = RunSection()

    @field_validator("methods")
    @classmethod
    def _some_methods(cls, methods: dict) -> dict:
        if not methods:
            raise ValueError("a study needs at least one method")
        return methods

    @model_validator(mode="after")
    def _methods_known(self) -> StudyConfig:
        names = set(self.methods)
        used = [
            ("sweeps.model_size.methods", self.sweeps.model_size.methods or []),
            ("sweeps.pretraining.methods", self.sweeps.pretraining.methods or []),
            ("sweeps.pet_size.sizes", list(self.sweeps.pet_size.sizes)),
            ("examples.per_method", list(self.examples.per_method)),
        ]
        if isinstance(self.train.lr, dict):
            used.append(("train.lr", list(self.train.lr)))
        for where, methods in used:
            for name in methods:
                if name not in names:
                    raise ValueError(f"{where}: method {name!r} is not in [methods]")
        names_seen = [e.name for e in self.evals]
        dup = sorted({n for n in names_seen if names_seen.count(n) > 1})
        if dup:
            raise ValueError(f"evals: name {dup[0]!r} used twice")
        return self


def _problems(exc: ValidationError) -> str:
    """Every validation problem on one line, unknown keys first (a misspelt key also makes the
    real one look missing, and the typo is the cause worth reading)."""
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    out = []
    for err in errors:
        where = (
            ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "literal[")))
            or "(top level)"
        )
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        shown = (
            f" (got {value!r})"
            if err["type"] not in ("missing", "extra_forbidden") and not isinstance(value, dict)
            else ""
        )
        line = f"{where}: {msg}{shown}"
        if line not in out:
            out.append(line)
    return "; ".join(out)


class Study:
    """A validated study file: its config, where it came from, and the ladder config it uses."""

    def __init__(self, config: StudyConfig, origin: str, base_dir: Path, ladder) -> None:
        self.config = config
        self.origin = origin
        self.base_dir = base_dir
        self.ladder = ladder  # ftscale.models.ladder.LadderConfig

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def builtin(self) -> bool:
        return self.origin.startswith(BUILTIN_PREFIX)

    def default_dir(self) -> Path:
        """Where results go without ``--dir``: beside the study file, named after it; for a
        built-in study, a folder of its name in the working directory."""
        if self.builtin:
            return Path.cwd() / self.origin.removeprefix(BUILTIN_PREFIX)
        path = Path(self.origin)
        return path.with_suffix("") if path.suffix else path.with_name(path.name + "-study")


def builtin_studies() -> list[str]:
    """Names of the study files shipped with ftscale (``builtin:NAME``)."""
    folder = resources.files("ftscale.study") / "configs"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def read_text(source: str | Path) -> tuple[str, str, Path]:
    """``(text, origin, base folder)`` of a study file path or ``builtin:NAME``."""
    source = str(source)
    if source.startswith(BUILTIN_PREFIX):
        name = source.removeprefix(BUILTIN_PREFIX)
        if name not in builtin_studies():
            known = ", ".join(BUILTIN_PREFIX + n for n in builtin_studies())
            raise UserError(f"{source}: no such built-in study (known: {known})")
        text = (resources.files("ftscale.study") / "configs" / f"{name}.toml").read_text("utf-8")
        return text, source, Path.cwd()
    path = Path(source)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a study file")
    if not path.is_file():
        raise UserError(f"{path}: no such study file")
    try:
        return path.read_text(encoding="utf-8"), str(path), path.resolve().parent
    except (OSError, UnicodeDecodeError) as exc:
        from ftscale.common import first_line

        raise UserError(f"{path}: cannot read: {first_line(exc)}") from None


def load_study(source: str | Path) -> Study:
    """Read and validate a study file (a path or ``builtin:NAME``); one-line errors."""
    text, origin, base = read_text(source)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{origin}: not valid TOML: {exc}") from None
    return parse_study(raw, origin, base)


def parse_study(raw: dict, origin: str = "study", base_dir: Path | None = None) -> Study:
    """Validate a parsed study file; relative ladder paths are read from ``base_dir``."""
    from ftscale.models import ladder as ladders

    base_dir = base_dir or Path.cwd()
    try:
        config = StudyConfig.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{origin}: {_problems(exc)}") from None
    if isinstance(config.ladder, str):
        path = Path(config.ladder)
        path = path if path.is_absolute() else base_dir / path
        try:
            ladder = ladders.load_config(path)
        except UserError as exc:
            raise UserError(f"{origin}: ladder: {exc}") from None
    else:
        ladder = ladders.parse_config(config.ladder, f"{origin}: ladder")
    _check_against_ladder(config, ladder, origin)
    _check_methods(config, origin)
    return Study(config, origin, base_dir, ladder)


def rung_names(ladder) -> list[str]:
    """Rung names of a ladder config, in config order (smallest first by convention)."""
    return [r.name for r in (ladder.rungs if ladder.kind == "pretrain" else ladder.external)]


def _check_against_ladder(config: StudyConfig, ladder, origin: str) -> None:
    names = rung_names(ladder)
    rung = config.sweeps.pretraining.rung
    if rung is not None and rung not in names:
        raise UserError(
            f"{origin}: sweeps.pretraining.rung: no rung {rung!r} in the ladder "
            f"(rungs: {', '.join(names)})"
        )
    held = config.sweeps.model_size.holdout
    if isinstance(held, list):
        for name in held:
            if name not in names:
                raise UserError(f"{origin}: sweeps.model_size.holdout: no rung {name!r}")
    for name in config.sizes:
        if name not in names:
            raise UserError(f"{origin}: sizes: no rung {name!r} in the ladder")


def _check_methods(config: StudyConfig, origin: str) -> None:
    """Each method and its options must build (the finetuning factory validates them)."""
    from ftscale.finetune.methods import make_method

    for name, options in config.methods.items():
        try:
            make_method(name, **options)
        except UserError as exc:
            raise UserError(f"{origin}: methods.{name}: {exc}") from None
        except TypeError as exc:
            raise UserError(f"{origin}: methods.{name}: {exc}") from None
    for name in config.sweeps.pet_size.sizes:
        option = size_option(name)
        if option is None:
            raise UserError(
                f"{origin}: sweeps.pet_size.sizes: method {name!r} has no size option "
                "(prompt and lora do)"
            )


def size_option(method: str) -> str | None:
    """The option that sets a PET method's size (prompt length, LoRA rank)."""
    return {"prompt": "prompt_length", "lora": "rank"}.get(method)
