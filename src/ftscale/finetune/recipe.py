"""One finetuning run as short named steps: setup, train, evaluate, cleanup.

The entry points build the run's inputs once (the D_f subset drawn once, the eval sets resolved),
load the base model once (:func:`ftscale.models.loading.load_model`), turn ``learning_rate =
"auto"`` into a rate (:func:`resolve_learning_rate`, the one place that does) and run the steps:

* :func:`setup`: encode the data to fit the model's context, score the base model on the extra
  eval sets, apply the method, start the record;
* :func:`choose_kernels`: compiled layers and their attention kernel where they pay
  (:mod:`ftscale.finetune.kernels`);
* :func:`plan_memory`: the memory policy (:mod:`ftscale.finetune.memory`): estimate the peak,
  checkpoint only as many layers as the budget needs, the plan in one line;
* :func:`compile_run`: compile the layers and warm them up before the clock starts;
* :func:`train`: the loop, written out plainly (no Trainer): length-grouped batches padded to
  their own longest sequence, loss on target tokens only, warmup then cosine learning rate
  (:func:`ftscale.schedules.warmup_cosine`), dev loss every ``eval_every`` steps, the best state
  kept in memory, early stopping after ``patience`` checks without improvement;
* :func:`evaluate`: best state restored, test NLL, greedy generation, the eval sets again;
* :func:`cleanup`: the model's own kernels and weights back, wall time and peak memory into
  the record.

Entry points: :func:`finetune` (Python: in-memory pairs or models), :func:`run_job` (a saved
:class:`~ftscale.finetune.spec.FinetuneJob`: the CLI and the study's workers) and
:func:`search_job` (a study's learning-rate search on one representative job).

One failure path: a NaN/inf loss raises :class:`RunFailed` and out-of-memory raises torch's own
error, in any step after setup; :func:`_execute` catches both in one place and the record says
``status="failed"`` with the reason and step. Bad input raises :class:`~ftscale.errors.UserError`
before anything trains.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import resource
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ftscale.data.pairs import Pair, nested_subset
from ftscale.errors import UserError
from ftscale.finetune import kernels
from ftscale.finetune.evaluate import (
    HEAD_ROWS,
    autocast,
    fast_path_ok,
    final_hidden_states,
    greedy_generate,
    mean_nll,
    perplexity,
    score_generations,
    target_nll,
)
from ftscale.finetune.lr_search import (
    LearningRateSearch,
    candidate_config,
    choose,
    search_steps,
    walk,
)
from ftscale.finetune.memory import (
    PROBE_TOKENS,
    Footprint,
    checkpoint_layers,
    choose_plan,
    decoder_layers,
    default_budget,
    held_memory,
    saved_per_token,
    set_allocator,
    state_bytes,
    weight_bytes,
)
from ftscale.finetune.methods import (
    MethodConfig,
    apply_method,
    base_parameter_counts,
    count_parameters,
    make_method,
)
from ftscale.finetune.precision import (
    autocast_dtype,
    precision_name,
    restore_frozen,
    store_frozen_in,
)
from ftscale.finetune.record import RunRecord, library_versions
from ftscale.finetune.spec import FinetuneJob, TaskConfig, TrainConfig, steps_per_epoch
from ftscale.finetune.tasks import (
    DeviceSplit,
    Encoded,
    check_pairs,
    collate,
    encode_pairs,
    length_grouped_batches,
    special_ids,
)
from ftscale.models.loading import load_model, resolve_device
from ftscale.schedules import warmup_cosine, warmup_stable_decay
from ftscale.sizes import context_length

#: Evaluation's transient activations per token, as a share of what a training step saves per
#: token and layer: without autograd only a layer's live intermediates exist (an upper bound).
EVAL_SHARE = 0.5
#: Bytes per logit and copies of a head chunk in training: float32 logits, probabilities, gradient.
LOGIT_BYTES, LOGIT_COPIES = 4, 3
#: Examples in the probe batches (the fast head's check, the compile warm-up): two, the fewest
#: that compiled code does not specialise on. Both answers hold for any batch; a probe of a whole
#: batch of 16 cost 12 s per run on SmolLM2-135M (its full-logit pass).
PROBE_ROWS = 2


@dataclass
class FinetuneResult:
    """What ``finetune(..., return_model=True)`` returns: the record, and the trained model (best
    dev state restored) with its tokenizer, for callers that want to inspect or save it."""

    record: RunRecord
    model: torch.nn.Module
    tokenizer: Any


class RunFailed(Exception):
    """A run that cannot go on (a NaN/inf loss): ``reason`` and the optimizer ``step`` it was at.
    Raised inside a run's steps and turned into a failed record in one place (:func:`_execute`)."""

    def __init__(self, reason: str, step: int) -> None:
        super().__init__(reason)
        self.reason, self.step = reason, step


@dataclass(frozen=True)
class EvalData:
    """An extra eval set, resolved: its name, scored pairs and few-shot demonstrations."""

    name: str
    pairs: Sequence[Pair]
    demos: Sequence[Pair] = ()


@dataclass(frozen=True)
class RunInputs:
    """What one run needs besides the model: method, pairs (``train`` already the D_f subset),
    settings, task and resolved eval sets. Built once per run by :func:`make_inputs`.
    ``initial_dev``: the dev NLL before training when it is already known (a learning-rate
    search's candidates all start from the same seeded state: the first measures it)."""

    method: MethodConfig
    train: Sequence[Pair]
    dev: Sequence[Pair]
    test: Sequence[Pair]
    config: TrainConfig
    task: TaskConfig
    evals: Sequence[EvalData] = ()
    initial_dev: float | None = None

    def with_config(self, config: TrainConfig, **changes: Any) -> RunInputs:
        return dataclasses.replace(self, config=config, **changes)


def make_inputs(
    *,
    method: MethodConfig | str,
    train: Sequence[Pair],
    dev: Sequence[Pair],
    test: Sequence[Pair],
    config: TrainConfig | None = None,
    task: TaskConfig | None = None,
    evals: Sequence[Any] = (),
    shots: int = 0,
) -> RunInputs:
    """A run's inputs, checked: the pairs of every split, the D_f subset (drawn here, once:
    ``nested_subset(train, config.examples, config.subset_seed)``) and the eval sets
    (:class:`~ftscale.finetune.spec.EvalSet` values are loaded, :class:`EvalData` kept)."""
    config = config or TrainConfig()
    method = make_method(method) if isinstance(method, str) else method
    if not isinstance(method, MethodConfig):
        raise UserError(f"method must be a MethodConfig or a name, got {method!r}")
    for split, pairs in (("train", train), ("dev", dev), ("test", test)):
        check_pairs(pairs, split)
    examples = config.examples if config.examples is not None else len(train)
    subset = nested_subset(train, examples, config.subset_seed)
    resolved = _resolve_evals(evals, shots, config)
    return RunInputs(method, subset, dev, test, config, task or TaskConfig(), resolved)


def job_inputs(job: FinetuneJob, *, evals: bool = True) -> RunInputs:
    """The inputs of a saved job: its splits read from their sources, then :func:`make_inputs`
    (``evals=False`` leaves its extra eval sets unread, as a learning-rate search needs)."""
    train, dev, test = job.splits()
    return make_inputs(
        method=job.method,
        train=train,
        dev=dev,
        test=test,
        config=job.train_config,
        task=job.task,
        evals=job.evals if evals else (),
        shots=job.shots,
    )


def _resolve_evals(evals: Sequence[Any], shots: int, config: TrainConfig) -> list[EvalData]:
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
        raise UserError(f"shots must be an integer >= 0, got {shots!r}")
    out = []
    for item in evals:
        if isinstance(item, EvalData):
            out.append(item)
            continue
        scored, demos = item.load(config.eval_examples, shots, seed=config.seed)
        check_pairs(scored, f"eval set {item.name!r}")
        out.append(EvalData(item.name, scored, demos))
    return out


# -- entry points ----------------------------------------------------------------------------------


def finetune(
    *,
    model: Any,
    method: MethodConfig | str,
    train: Sequence[Pair],
    dev: Sequence[Pair],
    test: Sequence[Pair],
    train_config: TrainConfig | None = None,
    task: TaskConfig | None = None,
    tokenizer: Any = None,
    gguf_file: str | None = None,
    revision: str | None = None,
    evals: Sequence[Any] = (),
    shots: int = 0,
    return_model: bool = False,
    progress: Any = None,
) -> RunRecord | FinetuneResult:
    """One finetuning run, end to end; returns its :class:`~ftscale.finetune.record.RunRecord`
    (or, with ``return_model=True``, a :class:`FinetuneResult` with the trained model).

    ``model``: in-memory causal LM (copied, never modified), local directory, ``.gguf`` file or hub
    id (``gguf_file`` names a GGUF file inside a directory or hub repo, ``revision`` a hub
    revision); ``tokenizer``: its tokenizer (``None`` loads it from the model's path).
    ``method``: a :class:`MethodConfig` or a registered method name. ``train``/``dev``/``test``:
    (source, target) pairs (see :func:`make_inputs`); the best state is picked by mean dev NLL per
    target token, and the record reports test NLL per target token, perplexity and generation
    scores. ``evals``: :class:`~ftscale.finetune.spec.EvalSet` values (or :class:`EvalData`)
    scored before and after training with ``shots`` demonstrations each. ``progress``: a
    :class:`~ftscale.finetune.progress.Progress` (``None``: silent). Same seed and inputs give the
    same record on CPU, timings and memory aside. Bad input raises
    :class:`~ftscale.errors.UserError` before any training; a NaN/inf loss or out-of-memory gives
    ``status="failed"``.
    """
    inputs = make_inputs(
        method=method,
        train=train,
        dev=dev,
        test=test,
        config=train_config,
        task=task,
        evals=evals,
        shots=shots,
    )
    result = _run(lambda: load_model(model, tokenizer, gguf_file, revision), inputs, progress)
    return result if return_model else result.record


def run_job(job: FinetuneJob, progress: Any = None) -> RunRecord:
    """Run one job and return its record (with ``key`` and ``job`` filled in). Bad input raises
    a one-line :class:`~ftscale.errors.UserError` before any training; a run that fails (NaN/inf
    loss, out of memory) returns a record with ``status="failed"``."""
    inputs = job_inputs(job)
    record = _run(lambda: _load_job_model(job), inputs, progress).record
    record.model = job.model + (f"/{job.gguf_file}" if job.gguf_file else "")
    record.revision = job.revision
    record.key = job.key
    record.job = job.to_dict()
    return record


def search_job(job: FinetuneJob, progress: Any = None) -> LearningRateSearch:
    """The learning-rate search of a job (its data, D_f subset, model and settings), as a study
    runs it once per method and base model on a representative job."""
    inputs = job_inputs(job, evals=False)
    resolve_device(inputs.config.device)
    with _run_context(inputs.config):
        base, tokenizer, _ = _load_job_model(job, copy_model=False)
        return search_learning_rate(base, tokenizer, inputs, progress)


def _load_job_model(job: FinetuneJob, copy_model: bool = True):
    return load_model(job.model, None, job.gguf_file, job.revision, copy_model=copy_model)


def _run(load: Callable[[], tuple], inputs: RunInputs, progress: Any) -> FinetuneResult:
    """Load the model, resolve the learning rate, run the steps; thread count and RNG restored."""
    started = time.perf_counter()
    resolve_device(inputs.config.device)  # a device this torch cannot use fails before loading
    with _run_context(inputs.config):
        base, tokenizer, name = load()
        inputs, search = resolve_learning_rate(base, tokenizer, inputs, progress)
        result = run_loaded(base, tokenizer, name, inputs, progress=progress, started=started)
    result.record.lr_search = search.to_dict() if search else None
    return result


@contextlib.contextmanager
def _run_context(config: TrainConfig) -> Iterator[None]:
    """Thread count (restored afterwards), a forked torch RNG, and library chatter silenced:
    PEFT's use of a deprecated transformers name, prompt tuning ignoring position ids."""
    previous = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            warnings.filterwarnings("ignore", message="Position ids are not supported.*")
            yield
    finally:
        if config.threads is not None:
            torch.set_num_threads(previous)


# -- learning rate ---------------------------------------------------------------------------------


def resolve_learning_rate(
    base: torch.nn.Module, tokenizer: Any, inputs: RunInputs, progress: Any = None
) -> tuple[RunInputs, LearningRateSearch | None]:
    """The one place ``learning_rate = "auto"`` becomes a rate: the inputs with the searched rate
    and the search (unchanged inputs and ``None`` for any other setting)."""
    if inputs.config.learning_rate != "auto":
        return inputs, None
    search_inputs = dataclasses.replace(inputs, evals=())
    search = search_learning_rate(base, tokenizer, search_inputs, progress)
    # The run starts from the model every candidate started from: their dev NLL before training.
    chosen = inputs.config.replace(learning_rate=search.chosen)
    return inputs.with_config(chosen, initial_dev=search.base_dev_nll), search


def search_learning_rate(
    base: torch.nn.Module, tokenizer: Any, inputs: RunInputs, progress: Any = None
) -> LearningRateSearch:
    """Train candidates of the method's grid briefly, as far as :func:`~ftscale.finetune.
    lr_search.walk` goes (see :mod:`ftscale.finetune.lr_search`); each trains a copy, so ``base``
    is left as it was. The memory plan is said once, for the first candidate."""
    config = inputs.config
    steps = search_steps(config.total_steps(len(inputs.train)))
    grid = inputs.method.entry.search_grid
    scores: dict[float, float | None] = {}
    base_nll: float | None = None  # measured by the first candidate; every candidate starts alike

    def score(rate: float) -> float | None:
        nonlocal base_nll
        short = inputs.with_config(
            candidate_config(config, rate, steps),
            test=inputs.dev[:1],
            evals=(),
            initial_dev=base_nll,
        )
        shown = progress if progress is None or not scores else _PlanSaidOnce(progress)
        record = run_loaded(copy.deepcopy(base), tokenizer, "", short, progress=shown).record
        base_nll = record.initial_dev_nll if base_nll is None else base_nll
        ok = record.status == "ok" and record.best_dev_nll is not None
        scores[rate] = record.best_dev_nll if ok and math.isfinite(record.best_dev_nll) else None
        return scores[rate]

    tried = [grid[i] for i in walk(grid, score)]
    return choose(grid, [scores.get(r) for r in grid], steps, base_nll, tried)


class _PlanSaidOnce:
    """The progress reporter of a search's later candidates: everything but the memory plan's
    note, which the first candidate said."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress

    def __getattr__(self, name: str) -> Any:
        return getattr(self.progress, name)

    def note(self, _line: str) -> None:
        pass


# -- the steps -------------------------------------------------------------------------------------


@dataclass(eq=False)
class Run:
    """The state one run's steps share (compared and hashed by identity)."""

    inputs: RunInputs
    model: torch.nn.Module
    tokenizer: Any
    record: RunRecord
    train: Encoded
    dev: Encoded
    test: Encoded
    device: torch.device
    autocast: torch.dtype | None
    pad: int
    eos: int | None
    context: int | None
    fast: bool = True
    params: list[torch.nn.Parameter] = dataclasses.field(default_factory=list)
    best_state: list[torch.Tensor] = dataclasses.field(default_factory=list)
    padded_tokens: int = 0
    epoch_batches: int = 0
    eval_time: float = 0.0
    phase: str = "preparing"
    loop: Any = None  # the training loop's state (Loop), from start_loop
    splits: dict[int, DeviceSplit] = dataclasses.field(default_factory=dict)
    frozen: list = dataclasses.field(default_factory=list)  # weights held in bf16, to put back
    compiled: list[torch.nn.Module] = dataclasses.field(default_factory=list)  # compiled layers
    attention: str | None = None  # the model's own attention implementation, to put back
    plan: Any = None  # the memory plan (MemoryPlan), from plan_memory

    @property
    def config(self) -> TrainConfig:
        return self.inputs.config

    @property
    def limit(self) -> int | None:
        """Tokens an example may have: the model's context less the method's prepended
        positions."""
        return None if self.context is None else self.context - self.inputs.method.virtual_tokens

    def on_device(self, encoded: Encoded) -> DeviceSplit:
        """``encoded`` (one of the run's splits) on the run's device, put there once."""
        if id(encoded) not in self.splits:
            self.splits[id(encoded)] = DeviceSplit(encoded, self.pad, self.device)
        return self.splits[id(encoded)]

    def nll(self, encoded: Encoded, keep: bool = True) -> tuple[float, int]:
        """Mean NLL per target token of the model on ``encoded`` (timed into ``eval_time``);
        ``keep``: keep the split on the device for the next call (dev, test)."""
        began = time.perf_counter()
        value = mean_nll(
            self.model,
            encoded,
            self.pad,
            device=self.device,
            fast=self.fast,
            tokens_per_batch=self.config.eval_tokens_per_batch,
            autocast_dtype=self.autocast,
            split=self.on_device(encoded) if keep else None,
        )
        self.eval_time += time.perf_counter() - began
        return value


def run_loaded(
    base: torch.nn.Module,
    tokenizer: Any,
    name: str,
    inputs: RunInputs,
    *,
    progress: Any = None,
    started: float | None = None,
) -> FinetuneResult:
    """One run on an already loaded base model, which it changes (pass a copy to keep it):
    :func:`setup`, :func:`choose_kernels`, :func:`plan_memory`, :func:`compile_run`, then
    :func:`_execute` (train and evaluate, one failure path), then :func:`cleanup`."""
    started = time.perf_counter() if started is None else started
    torch.manual_seed(inputs.config.seed)
    run = setup(base, tokenizer, name, inputs)
    choose_kernels(run)
    plan_memory(run, progress)
    compile_run(run, progress)
    _execute(run, progress)
    cleanup(run, started)
    return FinetuneResult(run.record, run.model, run.tokenizer)


def setup(base: torch.nn.Module, tokenizer: Any, name: str, inputs: RunInputs) -> Run:
    """Step 1: encode the data to fit the model's context, score the base model on the eval
    sets, apply the method, and start the record."""
    config = inputs.config
    device = resolve_device(config.device)
    context = context_length(base, tokenizer)
    encoded = _encode_splits(inputs, tokenizer, context)
    dtype = autocast_dtype(device, config.bf16, base)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    record = _new_record(inputs, encoded, base=base, model_name=name, device=device, dtype=dtype)
    record.context_length = context
    set_allocator(weight_bytes(base))
    base = base.to(device)
    _, eos, pad = special_ids(tokenizer)
    run = Run(inputs, base, tokenizer, record, *encoded, device, dtype, pad, eos, context)
    if inputs.evals:
        record.evals = {
            e.name: {"shots": len(e.demos), "base": _score_eval(run, e)} for e in inputs.evals
        }
    _apply(run)
    return run


def _encode_splits(inputs: RunInputs, tokenizer: Any, context: int | None) -> list[Encoded]:
    """Train, dev (the fixed ``dev_examples`` sample) and test, encoded to fit the context less
    the method's prepended positions."""
    config = inputs.config
    limit = None if context is None else context - inputs.method.virtual_tokens
    dev_pairs = inputs.dev
    if config.dev_examples is not None and config.dev_examples < len(dev_pairs):
        keep = np.random.default_rng(0).permutation(len(dev_pairs))[: config.dev_examples]
        dev_pairs = [dev_pairs[i] for i in sorted(keep.tolist())]
    return [
        encode_pairs(pairs, tokenizer, inputs.task, split, limit)
        for pairs, split in ((inputs.train, "train"), (dev_pairs, "dev"), (inputs.test, "test"))
    ]


def _apply(run: Run) -> None:
    """The method on the base model (seeded), its trainable parameters, and whether the fast
    output head gives the same loss on a probe batch."""
    config, record = run.config, run.record
    torch.manual_seed(config.seed)
    run.model = apply_method(run.model, run.inputs.method, seed=config.seed).to(run.device)
    run.params = [p for p in run.model.parameters() if p.requires_grad]
    record.trainable_params, _ = count_parameters(run.model)
    run.fast = config.fast_head and fast_path_ok(run.model, *_probe_batch(run))
    record.fast_head = run.fast
    if run.autocast is not None and not run.inputs.method.trains_base:
        run.frozen = store_frozen_in(run.model, run.autocast)


def plan_memory(run: Run, progress: Any = None) -> None:
    """Step 1b: the run's memory plan (:func:`ftscale.finetune.memory.choose_plan`) from its
    estimated footprint and budget (``max_memory``, else the default share of what is free):
    the layers it names checkpointed, the plan's line into the record and onto ``progress``."""
    config, record = run.config, run.record
    layers = decoder_layers(run.model)
    if config.max_memory is not None:
        budget, source = config.max_memory, "max_memory"
    else:
        budget, source = default_budget(run.device)
    eager = _footprint(run, layers)  # the model's own kernels
    run.plan = _compiled_plan(run, layers, eager.base, budget, source)
    if run.plan is None:
        run.plan = choose_plan(eager, config, budget, source, _compute(run))
    checkpoint_layers(run.model, layers, run.plan.checkpointed)
    record.checkpointing = run.plan.checkpointed > 0
    record.checkpointed_layers, record.memory_plan = run.plan.checkpointed, run.plan.line()
    if progress is not None:
        progress.note(run.plan.line())


def _compiled_plan(run: Run, layers: list[torch.nn.Module], base: int, budget: int, source: str):
    """The plan of a run that compiles: its attention kernel switched and measured, the memory
    held before training (``base``, measured before any probe) and the compiler's counted.
    ``None`` after switching the run back to eager kernels when the compiler was chosen by
    default and the plan would checkpoint layers or not fit: under a tight budget eager layers
    are faster and smaller (SmolLM2-135M LoRA within 2 GB: 236 tokens/s and 1,901 MiB eager, 210
    tokens/s and 2,006 MiB compiled, recomputing one layer more)."""
    record = run.record
    if not record.compiled:
        return None
    own = kernels.attention_of(run.model)
    if record.attention != own:
        run.attention = own
        kernels.set_attention(run.model, record.attention)
    measured = _footprint(run, layers)
    footprint = dataclasses.replace(measured, base=base + kernels.COMPILER_BYTES)
    try:
        plan = choose_plan(footprint, run.config, budget, source, _compute(run))
    except UserError:
        if run.config.compile:
            raise
        plan = None
    if plan is not None and (plan.checkpointed == 0 or run.config.compile):
        return plan
    _eager_kernels(run)
    return None


def _eager_kernels(run: Run) -> None:
    """Back to eager layers and the model's own attention, in the run and its record."""
    run.record.attention = run.attention or run.record.attention
    restore_kernels(run)
    run.record.compiled = False


def _compute(run: Run) -> str:
    """How the run computes, as its plan's line ends: the precision, then the kernels."""
    parts = (
        precision_name(run.autocast),
        kernels.describe(run.record.compiled, run.record.attention),
    )
    return ", ".join(p for p in parts if p)


def choose_kernels(run: Run) -> None:
    """Step 1a: whether the run compiles its decoder layers, and the attention kernel that goes
    with them (see :mod:`ftscale.finetune.kernels`); :func:`plan_memory` switches to them if
    they fit the budget."""
    record, model = run.record, run.model
    wanted = kernels.compile_wanted(run.config.compile, run.device, record.nonembedding_params)
    record.compiled = wanted and bool(decoder_layers(model))
    longest = max(run.train.lengths) + run.inputs.method.virtual_tokens
    record.attention = kernels.attention_for(model, record.compiled, run.device, longest)


def compile_run(run: Run, progress: Any = None) -> None:
    """Step 1c: compile the decoder layers and warm them up on the probe batch (a training
    forward and backward, an evaluation forward; the RNG forked, the gradients dropped), timed
    as ``compile_s`` outside ``train_s``. A compiler that fails leaves the run
    eager, and says so."""
    record = run.record
    if not record.compiled:
        return
    began = time.perf_counter()
    run.compiled = decoder_layers(run.model)
    kernels.compile_layers(run.compiled)
    try:
        _warm_up(run)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # whatever the compiler raises (BackendCompilerFailed, ...)
        _eager_kernels(run)
        run.plan = dataclasses.replace(run.plan, precision=_compute(run))
        record.memory_plan = run.plan.line()
        if progress is not None:
            progress.note(
                f"compiling failed, the run goes on eager ({kernels.compile_problem(exc)})"
            )
    record.compile_s = time.perf_counter() - began


def restore_kernels(run: Run) -> None:
    """The model's own kernels back: eager layers, its attention implementation."""
    kernels.uncompile_layers(run.compiled)
    if run.attention is not None:
        kernels.set_attention(run.model, run.attention)
    run.compiled, run.attention = [], None


def _probe_batch(run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, labels)`` on the device: the first :data:`PROBE_ROWS` training examples."""
    input_ids, labels, _ = collate(run.train, list(range(min(len(run.train), PROBE_ROWS))), run.pad)
    return input_ids.to(run.device), labels.to(run.device)


def _warm_up(run: Run) -> None:
    input_ids, labels = _probe_batch(run)
    devices = [run.device.index or 0] if run.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        run.model.train()
        with autocast(run.device, run.autocast):
            nll, _ = target_nll(run.model, input_ids, labels, fast=run.fast)
        nll.backward()
        for parameter in run.params:
            parameter.grad = None
        run.model.eval()
        with torch.no_grad(), autocast(run.device, run.autocast):
            target_nll(run.model, input_ids, labels, fast=run.fast)
        run.model.train()


def _footprint(run: Run, layers: list[torch.nn.Module]) -> Footprint:
    """What the run holds and will add, in bytes (see :class:`~ftscale.finetune.memory.
    Footprint`): activations per token and fixed saved bytes measured on probes of the first
    training example's first :data:`~ftscale.finetune.memory.PROBE_TOKENS` tokens (and half as
    many), in training mode and precision."""
    config, model = run.config, run.model
    ids = torch.tensor([run.train.ids[0][:PROBE_TOKENS]], device=run.device)
    was_training = model.training
    model.train()
    try:
        with autocast(run.device, run.autocast):
            saved = saved_per_token(
                model, layers, lambda n: final_hidden_states(model, ids[:, :n]), ids.numel()
            )
    finally:
        model.train(was_training)
    per_layer, outside = saved.per_token[:-1], saved.per_token[-1]
    gradients, optimizer = state_bytes(run.params, config.optimizer)
    host_copy = run.device.type != "cpu" and run.inputs.method.trains_base
    virtual = run.inputs.method.virtual_tokens
    largest = sorted(run.train.lengths, reverse=True)[: config.batch_size]
    targets = sorted(
        (n - p for n, p in zip(run.train.lengths, run.train.prompt_lengths, strict=True)),
        reverse=True,
    )[: config.batch_size]
    vocab = model.get_output_embeddings().weight.shape[0]
    chunk = LOGIT_BYTES * vocab * min(sum(targets), HEAD_ROWS)
    return Footprint(
        base=held_memory(run.device),
        weights=weight_bytes(model),
        gradients=gradients,
        optimizer=optimizer,
        best_state=0 if host_copy else gradients,
        per_layer=per_layer,
        outside=outside,
        carry=saved.carry,
        fixed=saved.fixed,
        tokens=config.batch_size * (max(largest) + virtual),
        logits=LOGIT_COPIES * chunk,
        eval=int(config.eval_tokens_per_batch * max(per_layer, default=outside) * EVAL_SHARE)
        + 2 * LOGIT_BYTES * vocab * HEAD_ROWS,
    )


def _new_record(
    inputs: RunInputs, encoded: list[Encoded], *, base, model_name: str, device, dtype
) -> RunRecord:
    """The run's record before training: its design, data, recipe and environment."""
    config, method = inputs.config, inputs.method
    train, dev, test = encoded
    total_params, nonembedding = base_parameter_counts(base)
    rate = (
        config.learning_rate if config.learning_rate is not None else method.default_learning_rate
    )
    return RunRecord(
        method=method.name,
        method_size=method.size,
        method_options=dict(method.options),
        trainable_params=0,
        total_params=total_params,
        nonembedding_params=nonembedding,
        examples=len(train),
        subset_seed=config.subset_seed,
        seed=config.seed,
        model=model_name,
        max_steps=config.total_steps(len(train)),
        dev_examples=len(dev),
        test_examples=len(test),
        dev_tokens=dev.target_tokens,
        truncated_sources=sum(e.truncated_sources for e in encoded),
        truncated_targets=sum(e.truncated_targets for e in encoded),
        truncated_context=sum(e.truncated_context for e in encoded),
        learning_rate=rate,
        optimizer=config.optimizer,
        batch_size=config.batch_size,
        device=str(device),
        dtype=precision_name(dtype),
        threads=torch.get_num_threads(),
        versions=library_versions(),
    )


def _execute(run: Run, progress: Any) -> None:
    """Steps 2 and 3 (train, evaluate) with the run's one failure path: a :class:`RunFailed` or
    an out-of-memory error in either becomes ``status="failed"`` with the reason and step."""
    try:
        train(run, progress)
        evaluate(run)
    except RunFailed as failure:
        _fail(run, failure.reason, failure.step)
    except torch.OutOfMemoryError:
        step = run.record.steps + 1 if run.phase == "training" else run.record.steps
        _fail(run, f"out of memory while {run.phase} (step {step})", step)
    finally:
        if progress is not None:
            progress.close()


def _fail(run: Run, reason: str, step: int) -> None:
    record = run.record
    record.status, record.reason, record.failed_step = "failed", reason, step
    record.stop_reason = "diverged" if reason.startswith("non-finite") else "failed"
    record.converged = False
    _training_summary(run)
    record.improved = record.undertrained = None


def train(run: Run, progress: Any) -> None:
    """Step 2: the training loop with dev checks; the best trainable state is kept in memory.
    Written as the loop's named pieces (:func:`start_loop`, :func:`next_batch`,
    :func:`after_dev`, ...) that :mod:`ftscale.finetune.packing` drives for many runs at once."""
    run.phase = "checking dev before training"
    known = run.inputs.initial_dev
    start_loop(run, _dev_check(run, 0) if known is None else record_dev(run, 0, known), progress)
    while run.record.steps < run.record.max_steps:
        run.phase = "training"
        loss = _train_step(run, next_batch(run))
        if progress is not None:
            progress.step(run.record.steps, loss)
        if dev_due(run) and after_dev(run, _dev_check(run, run.record.steps), progress):
            break
    end_loop(run)


@dataclass
class Loop:
    """The state of one run's training loop: its optimizer, batch order (seeded by the run's
    seed; ``order`` the epoch's on the device, ``cursor`` how far it is taken), dev-check spacing
    (steps), best dev NLL so far, the reference a check must beat to count as a gain and the
    checks without one, the decay of a ``wsd`` schedule once started (``(first step, steps)``),
    why the loop stopped, and the losses whose finiteness is not yet checked."""

    optimizer: Any
    rng: np.random.Generator
    every: int
    best: float
    reference: float
    batches: list[list[int]] = dataclasses.field(default_factory=list)
    order: torch.Tensor | None = None
    cursor: int = 0
    unchecked: list[tuple[int, torch.Tensor]] = dataclasses.field(default_factory=list)
    stale: int = 0
    decay: tuple[int, int] | None = None
    stop_reason: str | None = None
    began: float = 0.0
    eval_before: float = 0.0


def start_loop(run: Run, initial_dev: float, progress: Any = None) -> None:
    """Keep the state before training as the best, make the optimizer, start the clock."""
    config, record = run.config, run.record
    _keep_best(run)
    optimizer = _make_optimizer(config, run.params, record.learning_rate)
    every = dev_spacing(config, record.max_steps, len(run.train))
    run.loop = Loop(optimizer, np.random.default_rng(config.seed), every, initial_dev, initial_dev)
    if progress is not None:
        progress.start(record.max_steps, f"{run.inputs.method.name} lr {record.learning_rate:g}")
    run.model.train()
    run.loop.began, run.loop.eval_before = time.perf_counter(), run.eval_time


def dev_spacing(config: TrainConfig, budget: int, examples: int) -> int:
    """Steps between dev checks: ``eval_every``; else ``dev_every_examples`` examples (at
    least one check an epoch of ``examples``); else about ``evals`` checks over ``budget``."""
    if config.eval_every is not None:
        return config.eval_every
    if config.dev_every_examples is not None:
        return max(1, math.ceil(min(config.dev_every_examples, examples) / config.batch_size))
    return max(1, math.ceil(budget / config.evals))


def next_batch(run: Run) -> list[int]:
    """The next batch of the run's own order (a new length-grouped epoch when one ends)."""
    loop = run.loop
    if not loop.batches:
        loop.batches = length_grouped_batches(run.train.lengths, run.config.batch_size, loop.rng)
        loop.order, loop.cursor = None, 0
    return loop.batches.pop()


def device_rows(run: Run, rows: list[int]) -> torch.Tensor:
    """The device index of ``rows``, the batch :func:`next_batch` just gave: a view into the
    epoch's order, which goes to the device once an epoch (batches are taken from the end)."""
    loop = run.loop
    if loop.order is None:
        epoch = [i for batch in (*loop.batches, rows)[::-1] for i in batch]
        loop.order = run.on_device(run.train).index(epoch)
    index = loop.order[loop.cursor : loop.cursor + len(rows)]
    loop.cursor += len(rows)
    return index


def set_rate(run: Run) -> None:
    """The schedule's rate for the coming step into the run's optimizer."""
    config, record = run.config, run.record
    warmup = math.ceil(config.warmup_fraction * record.max_steps)
    peak, floor = record.learning_rate, config.final_lr_fraction
    if config.schedule == "wsd":
        rate = warmup_stable_decay(record.steps, peak, warmup, run.loop.decay, floor)
    else:
        rate = warmup_cosine(record.steps, record.max_steps, peak, warmup, floor)
    for group in run.loop.optimizer.param_groups:
        group["lr"] = rate


#: Steps whose training loss an accelerator may leave unchecked before the loop asks (each
#: question waits for the queued work); every dev check asks too. On the CPU every step asks.
CHECK_EVERY = 32


def check_loss(run: Run, loss: torch.Tensor) -> None:
    """:class:`RunFailed` when the step's training loss is NaN or infinite: at once on the CPU,
    within :data:`CHECK_EVERY` steps or at the next dev check on an accelerator, naming the first
    step whose loss was not finite."""
    loop = run.loop
    loop.unchecked.append((run.record.steps + 1, loss.detach()))
    if run.device.type == "cpu" or len(loop.unchecked) >= CHECK_EVERY:
        flush_checks(run)


def flush_checks(run: Run) -> None:
    """Check the losses not yet checked (one wait for the device); :class:`RunFailed` at the
    first that is NaN or infinite."""
    loop = run.loop
    if not loop.unchecked:
        return
    steps, losses = zip(*loop.unchecked, strict=True)
    loop.unchecked = []
    finite = torch.isfinite(torch.stack(losses)).tolist()
    if all(finite):
        return
    first = finite.index(False)
    step = steps[first]
    raise RunFailed(f"non-finite training loss ({losses[first].item()}) at step {step}", step)


def update(run: Run, *, real: int, count: int, padded: int) -> None:
    """After the backward pass: clip, step the optimizer, count the step's tokens (``real``
    tokens, ``count`` target tokens, ``padded`` positions of the run's own batch)."""
    if run.config.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(run.params, run.config.max_grad_norm)
    run.loop.optimizer.step()
    record = run.record
    record.steps += 1
    run.epoch_batches += 1
    record.tokens_seen += real
    record.target_tokens_seen += count
    run.padded_tokens += padded


def dev_due(run: Run) -> bool:
    """Whether a dev check follows the step just taken: every ``every`` steps, at the end of
    the budget and at the end of a ``wsd`` decay."""
    steps, loop = run.record.steps, run.loop
    at_decay_end = loop.decay is not None and steps == sum(loop.decay)
    return steps % loop.every == 0 or steps == run.record.max_steps or at_decay_end


def after_dev(run: Run, value: float, progress: Any = None) -> bool:
    """After a dev check (``value``, already recorded): keep the state when it is the best, count
    checks without a gain, and decide whether the run stops: at ``patience`` checks without a
    gain a ``cosine`` run stops and a ``wsd`` run starts its decay; a ``wsd`` run stops when
    its decay ends."""
    loop, record, config = run.loop, run.record, run.config
    if progress is not None:
        progress.dev(record.steps, value, min(loop.best, value))
    if value < loop.best:
        loop.best = value
        _keep_best(run)
    if value < loop.reference * (1.0 - config.min_improvement):
        loop.reference, loop.stale = value, 0
    else:
        loop.stale += 1
    if loop.decay is not None:
        return _stop(run, "plateau") if record.steps >= sum(loop.decay) else False
    if config.patience is None or loop.stale < config.patience:
        return False
    if config.schedule == "cosine":
        return _stop(run, "plateau")
    steps = min(math.ceil(config.decay_fraction * record.steps), record.max_steps - record.steps)
    if steps < 1:
        return _stop(run, "plateau")
    loop.decay = (record.steps, steps)
    return False


def _stop(run: Run, reason: str) -> bool:
    run.loop.stop_reason = reason
    run.record.stopped_early = run.record.steps < run.record.max_steps
    return True


def end_loop(run: Run) -> None:
    """Training time (dev checks excluded), why the loop stopped (``cap``: it used its whole
    budget), and the counts that follow from the steps."""
    loop, record = run.loop, run.record
    flush_checks(run)
    record.train_s = time.perf_counter() - loop.began - (run.eval_time - loop.eval_before)
    record.stop_reason = loop.stop_reason or "cap"
    record.converged = record.stop_reason == "plateau"
    _training_summary(run)


def _train_step(run: Run, rows: list[int]) -> torch.Tensor:
    """One optimizer step on one batch; returns its loss (nats per target token, a tensor on
    the device: reading it waits for the device, so the loop reads it at dev checks only). The
    batch is cut on the device and its token counts come from the host: the step queues its work
    without waiting for the device."""
    split = run.on_device(run.train)
    input_ids, labels, real, count = split.batch(device_rows(run, rows), rows)
    set_rate(run)
    with autocast(run.device, run.autocast):
        nll_sum, _ = target_nll(run.model, input_ids, labels, fast=run.fast, count=count)
    loss = nll_sum / count
    check_loss(run, loss)
    run.loop.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    update(run, real=real, count=count, padded=input_ids.numel())
    return loss.detach()


def _dev_check(run: Run, step: int) -> float:
    """Dev NLL at ``step``, measured and recorded (:func:`record_dev`), after the training
    losses not yet checked are (:func:`flush_checks`)."""
    if run.loop is not None:
        flush_checks(run)
    phase, run.phase = run.phase, f"checking dev at step {step}"
    value, _ = run.nll(run.dev)
    run.phase = phase
    return record_dev(run, step, value)


def record_dev(run: Run, step: int, value: float) -> float:
    """A dev NLL into the record's history and best; :class:`RunFailed` when it is not finite."""
    record = run.record
    record.dev_history.append([step, value])
    if step == 0:
        record.initial_dev_nll = value
    if not math.isfinite(value):
        where = "before training" if step == 0 else f"at step {step}"
        raise RunFailed(f"non-finite dev loss {where}", step)
    if record.best_dev_nll is None or value < record.best_dev_nll:
        record.best_dev_nll, record.best_step = value, step
    return value


def _training_summary(run: Run) -> None:
    """Counts that follow from the steps taken (the same for finished and failed runs)."""
    record = run.record
    per_epoch = max(1, steps_per_epoch(len(run.train), run.config))
    record.epochs = run.epoch_batches / per_epoch
    if run.padded_tokens:
        record.padding_fraction = 1.0 - record.tokens_seen / run.padded_tokens
    if record.best_step is not None:
        record.improved = record.best_step > 0
        at_end = record.best_step > 0 and record.best_step == record.steps
        record.undertrained = at_end and record.stop_reason != "plateau"


def evaluate(run: Run) -> None:
    """Step 3: restore the best state, score the test split, generate, score the eval sets."""
    restore_best(run)
    run.phase = "evaluating the test split"
    record_test(run, *run.nll(run.test))
    finish_evaluation(run)


def restore_best(run: Run) -> None:
    _restore(run.params, run.best_state)


def record_test(run: Run, value: float, tokens: int) -> None:
    """The test NLL (nats per target token) into the record; :class:`RunFailed` when it is not
    finite."""
    record = run.record
    record.test_nll, record.test_ppl, record.test_tokens = value, perplexity(value), tokens
    if not math.isfinite(value):
        raise RunFailed("non-finite test loss", record.steps)


def finish_evaluation(run: Run) -> None:
    """Greedy generation on the test sample and the extra eval sets, with the best state."""
    record, config = run.record, run.config
    if config.gen_examples > 0:
        run.phase = "generating"
        began = time.perf_counter()
        order = np.random.default_rng(0).permutation(len(run.test))[: config.gen_examples]
        scores = _generate_and_score(run, run.test, order.tolist())
        record.gen_examples = len(order)
        record.gen_bleu, record.gen_chrf, record.gen_rouge_l = (
            scores.bleu,
            scores.chrf,
            scores.rouge_l,
        )
        record.generate_s = time.perf_counter() - began
    for data in run.inputs.evals:
        run.phase = f"evaluating eval set {data.name!r}"
        record.evals[data.name]["finetuned"] = _score_eval(run, data)
    record.eval_s = run.eval_time


def _generate_and_score(run: Run, encoded: Encoded, order: list[int]):
    with kernels.eager(bool(run.compiled)):
        return _greedy(run, encoded, order)


def _greedy(run: Run, encoded: Encoded, order: list[int]):
    outputs = greedy_generate(
        run.model,
        encoded,
        order,
        tokenizer=run.tokenizer,
        pad_id=run.pad,
        eos_id=run.eos,
        max_new_tokens=run.config.max_new_tokens,
        batch_size=run.config.gen_batch_size,
        device=run.device,
        autocast_dtype=run.autocast,
        context=run.limit,
    )
    references = [encoded.targets[i] for i in order]
    return score_generations(outputs, references, run.inputs.task.bleu_tokenize)


def _score_eval(run: Run, data: EvalData) -> dict[str, Any]:
    """NLL, perplexity and generation scores of the current model on one eval set, with its
    demonstrations in every prompt."""
    task = run.inputs.task.with_demonstrations(tuple(data.demos))
    encoded = encode_pairs(data.pairs, run.tokenizer, task, f"eval set {data.name!r}", run.limit)
    value, tokens = run.nll(encoded, keep=False)
    out: dict[str, Any] = {
        "examples": len(encoded),
        "tokens": tokens,
        "nll": value,
        "ppl": perplexity(value),
        "truncated_context": encoded.truncated_context,
    }
    if run.config.gen_examples > 0:
        began = time.perf_counter()
        order = list(range(min(len(encoded), run.config.gen_examples)))
        scores = _generate_and_score(run, encoded, order)
        out.update(gen_bleu=scores.bleu, gen_chrf=scores.chrf, gen_rouge_l=scores.rouge_l)
        run.record.generate_s += time.perf_counter() - began
    return out


def cleanup(run: Run, started: float) -> None:
    """Step 4: the model's own kernels back (eager layers, its attention) and the frozen weights
    held in bf16 (float32 originals), the run's wall time and peak memory (the GPU's peak
    allocation on a GPU, the process's peak resident memory on CPU) into the record."""
    restore_kernels(run)
    restore_frozen(run.frozen)
    run.frozen = []
    record = run.record
    record.wall_s = time.perf_counter() - started
    if run.device.type == "cuda":
        record.peak_mem_mb = torch.cuda.max_memory_allocated(run.device) / 2**20
    else:
        record.peak_mem_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _make_optimizer(config: TrainConfig, params: list[torch.nn.Parameter], lr: float):
    if config.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            params,
            lr=lr,
            weight_decay=config.weight_decay,
            scale_parameter=False,
            relative_step=False,
            warmup_init=False,
        )
    # On a GPU the fused kernel updates every tensor in one launch (same arithmetic).
    fused = bool(params) and all(p.device.type == "cuda" for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay, fused=fused or None)


def _keep_best(run: Run) -> None:
    """Copy the trainable tensors (the state training changes) as the best so far. Full-model
    tuning on a GPU keeps it in host memory: a GPU copy would double the model's GPU memory."""
    to_cpu = run.device.type != "cpu" and run.inputs.method.trains_base
    if to_cpu:
        run.best_state = [p.detach().to("cpu", copy=True) for p in run.params]
    else:
        run.best_state = [p.detach().clone() for p in run.params]


def _restore(params: list[torch.nn.Parameter], state: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for parameter, saved in zip(params, state, strict=True):
            parameter.copy_(saved.to(parameter.device))
