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

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from ftscale.common import read_toml, validation_problems
from ftscale.errors import UserError
from ftscale.finetune.methods import canonical_name, get_method
from ftscale.finetune.spec import TASK_DEFAULTS, TrainConfig, study_train_fields

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
    template: str = TASK_DEFAULTS.template
    max_source_tokens: PositiveInt = TASK_DEFAULTS.max_source_tokens
    max_target_tokens: PositiveInt = TASK_DEFAULTS.max_target_tokens
    test_examples: PositiveInt | None = None
    shots: Annotated[int, Field(ge=0)] = 0
    eval_examples: PositiveInt = TrainConfig.model_fields["eval_examples"].default


class EvalSection(_Strict):
    """An extra evaluation set (zero/few-shot generalisation), scored for the base model and for
    every finetuned one (see :class:`ftscale.finetune.spec.EvalSet`): a task such as
    ``builtin:fr-de`` is scored on its test split, a file on a seeded sample of its rows. How
    many pairs are scored and how many demonstrations precede each are ``[task] eval_examples``
    and ``[task] shots``."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    spec: str
    source_column: str = "source"
    target_column: str = "target"


Seeds = list[Annotated[int, Field(ge=0)]]


class _Sweep(_Strict):
    """What every sweep has: ``enabled``, and ``subset_seeds`` (the random D_f subsets each
    point averages; omitted: ``[examples] subset_seeds``), so one sweep can measure the
    run-to-run noise with more seeds than the others."""

    enabled: bool = True
    subset_seeds: Seeds | None = None

    @field_validator("subset_seeds")
    @classmethod
    def _distinct_seeds(cls, values):
        if values is not None and (not values or len(set(values)) != len(values)):
            raise ValueError(f"must be distinct seeds, at least one, got {values}")
        return values


def _distinct_values(values: list | None, what: str = "values") -> list | None:
    """A list of sweep values: not empty, no value twice (it would plan its runs twice)."""
    if values is None:
        return values
    if not values:
        raise ValueError(f"must name at least one of the {what} (or leave it out)")
    twice = sorted({str(v) for v in values if values.count(v) > 1})
    if twice:
        raise ValueError(f"{twice[0]} appears twice")
    return values


class ModelSizeSweep(_Sweep):
    """Model size: every rung at its final checkpoint. ``holdout``: ``"max"`` (the largest rung,
    as the study), ``"none"`` or a list of rung names."""

    methods: list[str] | None = None
    holdout: Literal["max", "none"] | list[str] = "max"

    @field_validator("methods")
    @classmethod
    def _distinct_methods(cls, values):
        return _distinct_values(values, "methods")


class PretrainingSweep(_Sweep):
    """Pretraining data: every checkpoint of one rung (default: the first, smallest, rung).
    ``holdout``: ``"middle"`` (a middle checkpoint, as the study; none with fewer than three),
    ``"max"`` (the last checkpoint), ``"none"`` or a list of token counts."""

    rung: str | None = None
    methods: list[str] | None = None
    holdout: Literal["middle", "max", "none"] | list[PositiveInt] = "middle"

    @field_validator("methods")
    @classmethod
    def _distinct_methods(cls, values):
        return _distinct_values(values, "methods")


class PetSizeSweep(_Sweep):
    """PET size on the smallest rung's final checkpoint: ``sizes`` maps a method to its sizes
    (prompt length for ``prompt``, rank for ``lora``). ``holdout``: ``"max"`` or ``"none"``."""

    sizes: dict[str, list[PositiveInt]] = Field(default_factory=dict)
    holdout: Literal["max", "none"] = "max"

    @field_validator("sizes")
    @classmethod
    def _distinct_sizes(cls, sizes: dict) -> dict:
        for method, values in sizes.items():
            try:
                _distinct_values(values, "sizes")
            except ValueError as exc:
                raise ValueError(f"{method}: {exc}") from None
        return sizes


class SweepsSection(_Strict):
    """The study's three sweeps; each may be turned off with ``enabled = false``."""

    model_size: ModelSizeSweep = ModelSizeSweep()
    pretraining: PretrainingSweep = PretrainingSweep()
    pet_size: PetSizeSweep = PetSizeSweep()

    @model_validator(mode="after")
    def _some_sweep(self) -> SweepsSection:
        pet = self.pet_size.enabled and bool(self.pet_size.sizes)
        if not (self.model_size.enabled or self.pretraining.enabled or pet):
            raise ValueError(
                "every sweep is disabled (or the PET-size sweep has no sizes): the study plans "
                "no runs"
            )
        return self


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

    @field_validator("per_method")
    @classmethod
    def _distinct_per_method(cls, table: dict) -> dict:
        for method, values in table.items():
            if not values:
                raise ValueError(f"{method}: must not be empty")
            if len(set(values)) != len(values):
                raise ValueError(f"{method}: values are not distinct: {values}")
        return table

    def for_method(self, method: str) -> list[int]:
        """D_f values of ``method``, ascending."""
        return sorted(self.per_method.get(method, self.sizes))


class _TrainBase(_Strict):
    """Training settings of every run: the fields of :class:`ftscale.finetune.spec.TrainConfig`
    (generated from it, :func:`~ftscale.finetune.spec.study_train_fields`) that a study sets for
    all its runs. ``lr`` is a rate, ``"auto"`` (one search per method and base model, reused for
    its sweep), or a table per method; omitted = each method's default rate."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    def rate_for(self, method: str) -> float | str | None:
        """The learning rate setting of ``method``."""
        if isinstance(self.lr, dict):
            return self.lr.get(method)
        return self.lr

    def settings_for(
        self, method: str, *, examples: int, subset_seed: int, eval_examples: int
    ) -> TrainConfig:
        """The :class:`~ftscale.finetune.spec.TrainConfig` of one run of ``method``."""
        values = self.model_dump(exclude={"lr"})
        return TrainConfig(
            **values,
            learning_rate=self.rate_for(method),
            examples=examples,
            subset_seed=subset_seed,
            eval_examples=eval_examples,
        )


TrainSection = create_model("TrainSection", __base__=_TrainBase, **study_train_fields())


class AnalysisSection(_Strict):
    """How the runs are fitted: law ``forms`` (registered two-variable forms), residual
    ``space``, bootstrap replicates (0: no intervals), ``refine`` (best grid starts refined by
    L-BFGS in each fit), the bootstrap ``seed`` and the interval ``level``; how a replicate is
    drawn (``resample``: ``parametric``, the fitted curve plus the measured run-to-run noise, or
    ``runs``, the fitted points resampled with replacement) and whether only runs whose dev loss
    plateaued are fitted (``converged_only``)."""

    forms: list[str] = Field(default_factory=lambda: ["multiplicative", "additive"])
    space: Literal["log", "linear"] = "log"
    bootstrap: Annotated[int, Field(ge=0, le=100_000)] = 200
    refine: Annotated[int, Field(ge=1, le=4096)] = 16
    seed: int = 0
    level: Annotated[float, Field(gt=0, lt=1)] = 0.95
    resample: Literal["parametric", "runs"] = "parametric"
    converged_only: bool = True

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
    processes (0: automatic), torch threads per run (0: automatic), runs trained as one pack
    (``pack``: a number, or ``"auto"``: one on a CPU, several on a GPU; see
    :func:`ftscale.study.plan.pack_size`), and the Ray resources of one task (``num_cpus``,
    ``num_gpus``)."""

    executor: str = "local"
    workers: Annotated[int, Field(ge=0)] = 0
    threads: Annotated[int, Field(ge=0)] = 0
    pack: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = "auto"
    num_cpus: Annotated[float, Field(gt=0)] = 1.0
    num_gpus: Annotated[float, Field(ge=0)] = 0.0

    @field_validator("executor")
    @classmethod
    def _known_executor(cls, name: str) -> str:
        from ftscale.study.executors import available_executors

        if name not in available_executors():
            raise ValueError(f"unknown (known: {', '.join(available_executors())})")
        return name


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

    @model_validator(mode="before")
    @classmethod
    def _canonical_method_names(cls, raw: Any) -> Any:
        """Every method name in the file as the registry spells it (``full`` -> ``fmt``,
        ``prompt-tuning`` -> ``prompt``), so the analysis, the store and the findings see one
        name per method."""
        return canonical_methods(raw) if isinstance(raw, dict) else raw

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


def read_study(source: str | Path) -> tuple[dict, str, Path]:
    """``(parsed TOML, origin, base folder)`` of a study file path or ``builtin:NAME``."""
    source = str(source)
    if not source.startswith(BUILTIN_PREFIX):
        path = Path(source)
        raw = read_toml(path, "study")
        return raw, str(path), path.resolve().parent
    name = source.removeprefix(BUILTIN_PREFIX)
    if name not in builtin_studies():
        known = ", ".join(BUILTIN_PREFIX + n for n in builtin_studies())
        raise UserError(f"{source}: no such built-in study (known: {known})")
    text = (resources.files("ftscale.study") / "configs" / f"{name}.toml").read_text("utf-8")
    return tomllib.loads(text), source, Path.cwd()


def load_study(source: str | Path) -> Study:
    """Read and validate a study file (a path or ``builtin:NAME``); one-line errors."""
    raw, origin, base = read_study(source)
    return parse_study(raw, origin, base)


def parse_study(raw: dict, origin: str = "study", base_dir: Path | None = None) -> Study:
    """Validate a parsed study file; relative ladder paths are read from ``base_dir``."""
    from ftscale.models import ladder as ladders

    base_dir = base_dir or Path.cwd()
    try:
        config = StudyConfig.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{origin}: {validation_problems(exc.errors())}") from None
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
    _check_pretraining_holdout(config, ladder, origin)
    for name in config.sizes:
        if name not in names:
            raise UserError(f"{origin}: sizes: no rung {name!r} in the ladder")


def checkpoint_tokens(ladder, rung: str | None = None) -> list[int] | None:
    """Pretraining tokens of ``rung``'s checkpoints (default: the first rung) as the ladder config
    declares them; None when the config does not say (an external model without revisions)."""
    if ladder.kind == "pretrain":
        return sorted(set(ladder.recipe.checkpoints) | {ladder.recipe.tokens})
    rungs = [r for r in ladder.external if rung is None or r.name == rung][:1]
    if not rungs:
        return None
    found = [rev.tokens for rev in rungs[0].revisions or [] if rev.tokens is not None]
    return sorted(found) or ([rungs[0].tokens] if rungs[0].tokens else None)


def _check_pretraining_holdout(config: StudyConfig, ladder, origin: str) -> None:
    """A list of held-out token counts must name checkpoints the pretraining sweep has."""
    held = config.sweeps.pretraining.holdout
    if not isinstance(held, list):
        return
    tokens = checkpoint_tokens(ladder, config.sweeps.pretraining.rung)
    if tokens is None:
        return
    for value in held:
        if value not in tokens:
            shown = ", ".join(f"{t:,}" for t in tokens)
            raise UserError(
                f"{origin}: sweeps.pretraining.holdout: no checkpoint at {value:,} tokens "
                f"(checkpoints: {shown})"
            )


def _check_methods(config: StudyConfig, origin: str) -> None:
    """Each method and its options must build (the finetuning factory validates them); each
    method of the PET-size sweep must have a size."""
    from ftscale.finetune.methods import make_method

    for name, options in config.methods.items():
        try:
            make_method(name, **options)
        except UserError as exc:
            raise UserError(f"{origin}: methods.{name}: {exc}") from None
        except TypeError as exc:
            raise UserError(f"{origin}: methods.{name}: {exc}") from None
    for name in config.sweeps.pet_size.sizes:
        if size_option(name) is None:
            raise UserError(
                f"{origin}: sweeps.pet_size.sizes: method {name!r} has no size option "
                "(prompt, lora, dora and PEFT methods with a rank or virtual tokens do)"
            )


def size_option(method: str) -> str | None:
    """The option that sets a PET method's size (prompt length, LoRA rank), from the method
    registry."""
    return get_method(method).size_option


def canonical_methods(raw: dict) -> dict:
    """A parsed study file with every method name made canonical (see
    :func:`ftscale.finetune.methods.canonical_name`): the ``[methods]`` keys, the sweeps' method
    lists and size tables, ``examples.per_method`` and a per-method ``train.lr``. Two names of one
    method in one table are an error. Values of the wrong shape are left for validation."""
    out = dict(raw)
    out["methods"] = _canonical_keys(raw.get("methods"), "methods")
    sweeps = raw.get("sweeps")
    if isinstance(sweeps, dict):
        sweeps = {k: dict(v) if isinstance(v, dict) else v for k, v in sweeps.items()}
        for sweep in ("model_size", "pretraining"):
            table = sweeps.get(sweep)
            if isinstance(table, dict) and isinstance(table.get("methods"), list):
                table["methods"] = [_canonical(m) for m in table["methods"]]
        pet = sweeps.get("pet_size")
        if isinstance(pet, dict) and "sizes" in pet:
            pet["sizes"] = _canonical_keys(pet.get("sizes"), "sweeps.pet_size.sizes")
        out["sweeps"] = sweeps
    for section, key in (("examples", "per_method"), ("train", "lr")):
        table = raw.get(section)
        if isinstance(table, dict) and isinstance(table.get(key), dict):
            out[section] = {**table, key: _canonical_keys(table[key], f"{section}.{key}")}
    return {k: v for k, v in out.items() if v is not None or k in raw}


def _canonical(name: Any) -> Any:
    return canonical_name(name) if isinstance(name, str) else name


def _canonical_keys(table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        return table
    out: dict = {}
    spelled: dict[str, str] = {}
    for name, value in table.items():
        key = _canonical(name)
        if key in out:
            raise ValueError(f"{where}: {spelled[key]!r} and {name!r} name the same method {key!r}")
        out[key], spelled[key] = value, name
    return out
