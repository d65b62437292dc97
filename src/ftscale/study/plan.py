"""The plan: every finetuning run a study asks for, as run specs with their place in the design.

Runs come from the study's sweeps (Zhang et al., ICLR 2024, Table 1b):

* ``model_size``: every rung at its final checkpoint, each method at its default size;
* ``pretraining``: every checkpoint of one rung (the smallest by default), default sizes;
* ``pet_size``: the smallest rung's final checkpoint, each PET method at each of its sizes;

each crossed with the method's D_f values and subset seeds. A run that two sweeps share (the
smallest rung's final checkpoint at default sizes) is planned once and tagged with both.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ftscale.errors import UserError
from ftscale.study.config import Study, rung_names, size_option

#: Sweep names, in report order.
SWEEPS = ("model_size", "pretraining", "pet_size")
#: Folder of the study directory holding the capped test and eval sets the runs read.
DATA_FOLDER = "data"


@dataclass(frozen=True)
class Checkpoint:
    """One base model: rung, pretraining tokens it saw, non-embedding parameters (None when not
    known before the ladder is built), and what ``from_pretrained`` needs (path or id, revision)."""

    rung: str
    tokens_seen: int | None
    nonembedding_params: int | None
    path: str
    revision: str | None = None


@dataclass
class PlannedRun:
    """One run of the plan: its spec, its base model, the study's name of its method (its
    ``[methods]`` key: ``dora`` runs a LoRA config), and the sweeps it belongs to. D_f, subset
    seed and method size are the spec's own."""

    job: Any  # FinetuneJob
    checkpoint: Checkpoint
    method: str
    sweeps: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.job.key

    @property
    def method_size(self) -> int | None:
        return self.job.method.size

    @property
    def examples(self) -> int:
        return self.job.train_config.examples

    @property
    def subset_seed(self) -> int:
        return self.job.train_config.subset_seed

    def meta(self) -> dict[str, Any]:
        """The run's coordinates as stored beside its spec."""
        return {
            "rung": self.checkpoint.rung,
            "tokens_seen": self.checkpoint.tokens_seen,
            "nonembedding_params": self.checkpoint.nonembedding_params,
            "method": self.method,
            "method_size": self.method_size,
            "examples": self.examples,
            "subset_seed": self.subset_seed,
            "sweeps": list(self.sweeps),
            "model": self.job.model,
            "revision": self.job.revision,
        }


@dataclass
class Plan:
    """Every run of a study, in execution order (cheap runs first), and the lr-search groups."""

    runs: list[PlannedRun]
    checkpoints: list[Checkpoint]
    data_ready: bool

    def __len__(self) -> int:
        return len(self.runs)

    def by_key(self) -> dict[str, PlannedRun]:
        return {r.key: r for r in self.runs}


# -- base models -------------------------------------------------------------------------------


def checkpoints(study: Study, cache: str | Path | None = None) -> list[Checkpoint]:
    """The study's base models: from the built ladder when it is in the cache, else from the
    config alone (paths where the build will put them, sizes from ``[sizes]`` or unknown)."""
    from ftscale.models import ladder as ladders

    entry = ladders.entry_path(study.ladder, cache)
    if ladders.is_complete(entry):
        return [
            Checkpoint(
                rung=row["rung"],
                tokens_seen=row.get("tokens_seen"),
                nonembedding_params=row.get("nonembedding_params"),
                path=str(row["path"]),
                revision=row.get("revision"),
            )
            for row in ladders.read_ladder(entry)
        ]
    return _unbuilt_checkpoints(study, entry)


def _unbuilt_checkpoints(study: Study, entry: Path) -> list[Checkpoint]:
    ladder, sizes = study.ladder, study.config.sizes
    out = []
    if ladder.kind == "pretrain":
        tokens = sorted(set(ladder.recipe.checkpoints) | {ladder.recipe.tokens})
        for rung in ladder.rungs:
            params = sizes.get(rung.name) or rung_nonembedding_params(ladder, rung)
            for n in tokens:
                path = str(entry / rung.name / f"tokens-{n:09d}")
                out.append(Checkpoint(rung.name, n, params, path))
        return out
    for rung in ladder.external:
        revisions = rung.revisions or [None]
        for rev in revisions:
            tokens = (rev.tokens if rev is not None else None) or rung.tokens
            name = rev.revision if rev is not None else None
            out.append(Checkpoint(rung.name, tokens, sizes.get(rung.name), rung.model, name))
    return out


def rung_nonembedding_params(ladder, rung) -> int:
    """Non-embedding parameters of a ladder rung before it is built, counted on the model the
    build will make (:func:`ftscale.models.pretrain.shape_parameter_counts`)."""
    from ftscale.models.pretrain import Shape, shape_parameter_counts

    shape = Shape(rung.width, rung.layers, rung.heads, rung.ffn)
    counts = shape_parameter_counts(shape, ladder.tokenizer.vocab_size, ladder.recipe.seq_len)
    return counts.nonembedding


def _final(rows: list[Checkpoint]) -> Checkpoint:
    """The last checkpoint of a rung (most tokens; config order when tokens are unknown)."""
    known = [r for r in rows if r.tokens_seen is not None]
    return max(known, key=lambda r: r.tokens_seen) if known else rows[-1]


# -- data ----------------------------------------------------------------------------------------


def data_sources(study: Study, data_dir: Path):
    """(train, dev, test) :class:`DataSource` values of the study's task. The test set, when
    capped, is a fixed sample written to ``data_dir`` by :func:`materialise_data`."""
    from ftscale.finetune.spec import DataSource

    task = study.config.task
    common = dict(
        source_column=task.source_column, target_column=task.target_column, group=task.group
    )
    train = DataSource(task.spec, "train", **common)
    dev = DataSource(task.spec, "dev", **common)
    test = DataSource(task.spec, "test", **common)
    if task.test_examples is not None:
        test = DataSource(str(data_dir / "test.jsonl"))
    return train, dev, test


def materialise_data(study: Study, data_dir: Path) -> None:
    """Write the capped test set (a seeded sample of ``task.test_examples`` pairs) atomically."""
    from ftscale.data.pairs import nested_subset
    from ftscale.data.tasks import load_task, write_pairs_jsonl

    task = study.config.task
    if task.test_examples is None:
        return
    target = data_dir / "test.jsonl"
    if target.is_file():
        return
    pairs = load_task(
        task.spec, "test", source=task.source_column, target=task.target_column, group=task.group
    )
    sample = nested_subset(pairs, min(task.test_examples, len(pairs)), 0)
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / ".test.jsonl.part"
    write_pairs_jsonl(sample, tmp)
    tmp.replace(target)


# -- the plan -----------------------------------------------------------------------------------


def make_plan(study: Study, study_dir: Path, cache: str | Path | None = None) -> Plan:
    """Every run of ``study`` (see the module docs); nothing is written."""
    config = study.config
    data_dir = Path(study_dir) / DATA_FOLDER
    shared = _shared_job_fields(study, data_dir)
    rows = checkpoints(study, cache)
    planned: dict[str, PlannedRun] = {}
    for cell in _sweep_cells(study, rows):
        _add_runs(planned, cell, config, shared)
    runs = sorted(planned.values(), key=_cost_order)
    ready = config.task.test_examples is None or (data_dir / "test.jsonl").is_file()
    return Plan(runs=runs, checkpoints=rows, data_ready=ready)


class _Cell(NamedTuple):
    """One (sweep, base model, method with options) of the design, before D_f and seeds."""

    sweep: str
    checkpoint: Checkpoint
    method: str
    options: dict


def _shared_job_fields(study: Study, data_dir: Path) -> dict[str, Any]:
    """The :class:`~ftscale.finetune.job.FinetuneJob` fields every run of the study shares."""
    from ftscale.finetune.spec import EvalSet, TaskConfig

    config = study.config
    train, dev, test = data_sources(study, data_dir)
    task = TaskConfig(
        template=config.task.template,
        max_source_tokens=config.task.max_source_tokens,
        max_target_tokens=config.task.max_target_tokens,
    )
    evals = tuple(EvalSet(e.name, e.spec, e.source_column, e.target_column) for e in config.evals)
    return {
        "train": train,
        "dev": dev,
        "test": test,
        "task": task,
        "evals": evals,
        "shots": config.task.shots,
    }


def _sweep_cells(study: Study, rows: list[Checkpoint]) -> Iterator[_Cell]:
    """The cells of the enabled sweeps, in plan order (model size, pretraining, PET size);
    lazily, so a cell's method errors surface in the same order as its runs are planned."""
    config = study.config
    by_rung: dict[str, list[Checkpoint]] = {}
    for row in rows:
        by_rung.setdefault(row.rung, []).append(row)
    order = [n for n in rung_names(study.ladder) if n in by_rung]
    if not order:
        raise UserError(f"{study.origin}: the ladder has no checkpoints")
    smallest = config.sweeps.pretraining.rung or order[0]
    sweeps = config.sweeps
    if sweeps.model_size.enabled:
        for rung in order:
            for method in sweeps.model_size.methods or list(config.methods):
                yield _Cell("model_size", _final(by_rung[rung]), method, config.methods[method])
    if sweeps.pretraining.enabled:
        for ckpt in by_rung[smallest]:
            for method in sweeps.pretraining.methods or list(config.methods):
                yield _Cell("pretraining", ckpt, method, config.methods[method])
    if sweeps.pet_size.enabled:
        for method, sizes in sweeps.pet_size.sizes.items():
            for size in sizes:
                options = {**config.methods[method], size_option(method): size}
                yield _Cell("pet_size", _final(by_rung[smallest]), method, options)


def _add_runs(planned: dict[str, PlannedRun], cell: _Cell, config, shared: dict) -> None:
    """The cell's runs (each D_f and subset seed) into ``planned``; a run already planned by
    another sweep is tagged with this one too."""
    from ftscale.finetune.methods import make_method
    from ftscale.finetune.spec import FinetuneJob

    method_config = make_method(cell.method, **cell.options)
    for examples in config.examples.for_method(cell.method):
        sweep_seeds = getattr(config.sweeps, cell.sweep).subset_seeds
        for subset_seed in sweep_seeds or config.examples.subset_seeds:
            settings = config.train.settings_for(
                cell.method,
                examples=examples,
                subset_seed=subset_seed,
                eval_examples=config.task.eval_examples,
            )
            job = FinetuneJob(
                model=cell.checkpoint.path,
                revision=cell.checkpoint.revision,
                method=method_config,
                train_config=settings,
                **shared,
            )
            run = planned.setdefault(job.key, PlannedRun(job, cell.checkpoint, cell.method))
            if cell.sweep not in run.sweeps:
                run.sweeps.append(cell.sweep)


def _cost_order(run: PlannedRun):
    """Cheap runs first (small models, few examples), so a study shows results early."""
    params = run.checkpoint.nonembedding_params or 0
    return (params, run.examples, run.method, run.method_size or 0, run.subset_seed)


# -- packs ---------------------------------------------------------------------------------------

#: Members of a pack when ``pack = "auto"`` on a GPU. On a CPU ``auto`` is 1: there a tiny rung's
#: step is compute- and memory-bound (GEMMs with thin inner dimensions, the vocabulary's
#: log-softmax, attention; per-operation overhead is about 15%), so a pack only adds the padding
#: of its longest member batch: measured 0.76-0.92x of one-run-at-a-time on the quickstart's rungs
#: (``benchmarks/bench_study.py``). On a GPU a tiny run is bound by kernel launches, which a pack
#: shares.
GPU_PACK = 8


def pack_size(setting: int | str, device: str) -> int:
    """Members per pack: ``setting`` when it is a number, else (``"auto"``) 1 on a CPU and
    :data:`GPU_PACK` on a GPU (``device`` as the study's ``[train]`` names it)."""
    if isinstance(setting, int):
        return setting
    if device.startswith("cuda"):
        return GPU_PACK
    if device == "auto":
        import torch

        return GPU_PACK if torch.cuda.is_available() else 1
    return 1


def pack_runs(runs: list[PlannedRun], size: int) -> list[list[PlannedRun]]:
    """``runs`` grouped into packs of at most ``size`` runs that can train together (one rung,
    one :meth:`~ftscale.finetune.spec.FinetuneJob.pack_signature`), in the order of each pack's
    first run; ``size`` 1 gives one run per pack."""
    groups: dict[str, list[list[PlannedRun]]] = {}
    order: list[list[PlannedRun]] = []
    for run in runs:
        chunks = groups.setdefault(run.job.pack_signature(run.checkpoint.rung), [])
        if not chunks or len(chunks[-1]) >= size:
            chunks.append([])
            order.append(chunks[-1])
        chunks[-1].append(run)
    return order


# -- cost ---------------------------------------------------------------------------------------

#: Rough CPU cost model of one run, from ftscale's measurements on a 2-core CPU (one thread):
#: a fixed per-run cost (load, test, generation) plus per-step time growing with the model; a
#: step's fixed part holds the vocabulary head, its log-softmax and the dev checks' share
#: (measured: width 32 at 20 ms a step of 16 examples, width 64 at 36 ms, with the fast head).
RUN_OVERHEAD_S = 1.5
STEP_BASE_S = 0.014
#: Effective FLOP/s of one CPU thread on small models (forward + backward = 6 FLOP/param/token):
#: about 30 GFLOP/s measured on the quickstart's rungs (a sixth of the FP32 matmul peak).
CPU_FLOPS = 3e10


#: Epochs a ``wsd`` run trains before its plateau and decay end, for the estimate: the quickstart's
#: runs took 2-9 epochs (measured; more for small D_f, fewer for PET methods on large D_f).
WSD_EPOCHS = 8


def estimate_steps(run: PlannedRun) -> int:
    """Rough optimizer steps of a run: its budget, or for a ``wsd`` run (whose budget is a cap)
    :data:`WSD_EPOCHS` epochs within the cap."""
    config = run.job.train_config
    cap = config.total_steps(run.examples)
    if config.schedule != "wsd":
        return cap
    epoch = math.ceil(run.examples / config.batch_size)
    return min(cap, max(config.min_steps, WSD_EPOCHS * epoch))


def estimate_seconds(run: PlannedRun) -> float | None:
    """Rough seconds for one run on one CPU thread; None when the model size is unknown."""
    params = run.checkpoint.nonembedding_params
    if params is None:
        return None
    config = run.job.train_config
    tokens = config.batch_size * 80  # ~80 tokens per example (source + target) in the corpus
    per_step = STEP_BASE_S + 6 * params * tokens / CPU_FLOPS
    return RUN_OVERHEAD_S + estimate_steps(run) * per_step


def estimate_total(plan: Plan, workers: int) -> float | None:
    """Estimated wall seconds of the plan with ``workers`` parallel runs; None if unknown."""
    seconds = [estimate_seconds(r) for r in plan.runs]
    if any(s is None for s in seconds):
        return None
    return math.fsum(seconds) / max(1, workers)
