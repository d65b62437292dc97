"""One finetuning run as short named steps: prepare, train, evaluate.

:func:`finetune` is the one keyword-only entry point (:func:`ftscale.finetune.job.run_job` runs a
saved spec through it). A run is *prepared* (model loaded once, data encoded to fit the model's
context, the base model scored on the extra eval sets, the method applied), *trained* (written out
plainly, no Trainer: length-grouped batches padded to their own longest sequence, loss on target
tokens only, warmup then cosine learning rate, dev loss every ``eval_every`` steps, the best state
kept in memory, early stopping after ``patience`` checks without improvement) and *evaluated* (best
state restored, test NLL, greedy generation, the eval sets again).

One failure path: a NaN/inf loss raises :class:`RunFailed` and out-of-memory raises torch's own
error, in any step after preparation; :func:`_execute` catches both in one place and the record
says ``status="failed"`` with the reason and step. Bad input raises
:class:`~ftscale.errors.UserError` before anything trains.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import resource
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ftscale.common import first_line
from ftscale.data.pairs import Pair
from ftscale.errors import UserError
from ftscale.finetune.evaluate import (
    fast_path_ok,
    greedy_generate,
    mean_nll,
    perplexity,
    score_generations,
    target_nll,
)
from ftscale.finetune.methods import (
    MethodConfig,
    apply_method,
    base_parameter_counts,
    count_parameters,
    make_method,
)
from ftscale.finetune.record import RunRecord, library_versions
from ftscale.finetune.tasks import (
    Encoded,
    TaskConfig,
    check_pairs,
    collate,
    encode_pairs,
    length_grouped_batches,
    nested_subset,
    special_ids,
    steps_per_epoch,
)
from ftscale.sizes import context_length

OPTIMIZERS = ("adamw", "adafactor")
#: Base models this large (parameters) train with activation checkpointing unless told otherwise:
#: SmolLM2-135M LoRA at batch 8 kept ~0.8 GB of activations per step without it (measured).
CHECKPOINTING_PARAMS = 50_000_000


@dataclass(frozen=True)
class TrainConfig:
    """How one run trains and evaluates. Plain data (picklable).

    Data: ``examples`` (D_f, examples; ``None`` = all training pairs) drawn with
    :func:`~ftscale.finetune.tasks.nested_subset` under ``subset_seed``.
    Budget: ``max_steps`` optimizer steps if given, else ``max(min_steps, ceil(epochs * D_f /
    batch_size))``. ``batch_size`` is in examples.
    Optimisation: ``optimizer`` (``adamw`` or ``adafactor``), ``learning_rate`` (``None`` = the
    method's default; ``"auto"`` = a short search on dev, :mod:`ftscale.finetune.lr_search`; else
    the peak rate), ``weight_decay``, linear warmup over ``warmup_fraction`` of the steps then
    cosine decay to ``final_lr_fraction`` of the peak, gradient clipping at ``max_grad_norm``.
    Dev checks: every ``eval_every`` steps (``None`` = about ``evals`` checks per run) and at the
    end; stop after ``patience`` checks without improvement (``None`` = never stop early).
    Evaluation: dev checks use at most ``dev_examples`` dev pairs (a fixed sample, the same for
    every run; ``None`` = all) to make them cheaper; the test split is always used whole. Greedy
    generation on ``gen_examples`` test sources (0 = none), at most
    ``max_new_tokens`` new tokens each (fewer where the model's context ends);
    ``eval_tokens_per_batch`` caps padded tokens per evaluation batch. Extra eval sets score at
    most ``eval_examples`` pairs each.
    Hardware: ``device`` (``auto``, ``cpu``, ``cuda``, ...), ``threads`` (CPU threads for this run,
    restored afterwards; ``None`` = leave torch's setting), ``bf16`` autocast on GPUs that support
    it. ``fast_head`` computes the output head on target positions only (checked per run).
    ``checkpointing`` recomputes each layer's activations during the backward pass instead of
    keeping them (activation checkpointing: about a third more compute, a fraction of the
    memory); ``None`` turns it on for base models of :data:`CHECKPOINTING_PARAMS` parameters or
    more. It changes memory and speed, never the numbers, so it is not part of a job's key.
    """

    examples: int | None = None
    subset_seed: int = 0
    seed: int = 0
    learning_rate: float | str | None = None
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    batch_size: int = 16
    max_steps: int | None = None
    epochs: float = 5.0
    min_steps: int = 50
    warmup_fraction: float = 0.05
    final_lr_fraction: float = 0.1
    max_grad_norm: float | None = 1.0
    eval_every: int | None = None
    evals: int = 10
    patience: int | None = 3
    dev_examples: int | None = None
    gen_examples: int = 64
    eval_examples: int = 64
    max_new_tokens: int = 64
    gen_batch_size: int = 32
    eval_tokens_per_batch: int = 8192
    device: str = "auto"
    threads: int | None = None
    bf16: bool = True
    fast_head: bool = True
    checkpointing: bool | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"optimizer {self.optimizer!r} unknown (known: adamw, adafactor)")
        positive = (
            "batch_size",
            "min_steps",
            "evals",
            "max_new_tokens",
            "gen_batch_size",
            "eval_tokens_per_batch",
            "eval_examples",
        )
        for name in positive:
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("max_steps", "eval_every", "patience", "threads", "examples", "dev_examples"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)
        for name in ("gen_examples", "seed", "subset_seed"):
            _check_int(name, getattr(self, name), minimum=0)
        rate = self.learning_rate
        if (
            rate is not None
            and rate != "auto"
            and not (isinstance(rate, int | float) and math.isfinite(rate) and rate > 0)
        ):
            raise UserError(f"learning_rate must be a positive number or 'auto', got {rate!r}")
        if not (
            isinstance(self.epochs, int | float) and math.isfinite(self.epochs) and self.epochs > 0
        ):
            raise UserError(f"epochs must be a positive number, got {self.epochs!r}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise UserError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        if not 0.0 <= self.final_lr_fraction <= 1.0:
            raise UserError(f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UserError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        if self.max_grad_norm is not None and not (
            math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0
        ):
            raise UserError(f"max_grad_norm must be a positive number, got {self.max_grad_norm!r}")

    def total_steps(self, examples: int) -> int:
        """Optimizer steps for a run on ``examples`` training examples."""
        if self.max_steps is not None:
            return self.max_steps
        per_epoch = steps_per_epoch(examples, self.batch_size)
        return max(self.min_steps, math.ceil(self.epochs * per_epoch))


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass
class FinetuneResult:
    """What ``finetune(..., return_model=True)`` returns: the record, and the trained model (best
    dev state restored) with its tokenizer, for callers that want to inspect or save it."""

    record: RunRecord
    model: torch.nn.Module
    tokenizer: Any


def learning_rate_at(
    step: int, total: int, peak: float, warmup_fraction: float, final_fraction: float
) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total``: linear warmup over
    ``ceil(warmup_fraction * total)`` steps, then cosine from ``peak`` down to
    ``final_fraction * peak``."""
    warmup = math.ceil(warmup_fraction * total)
    if step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    floor = final_fraction * peak
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def load_model(
    model: Any,
    tokenizer: Any = None,
    gguf_file: str | None = None,
    revision: str | None = None,
    copy_model: bool = True,
):
    """``(model, tokenizer, name)`` ready to finetune, the model in float32.

    ``model`` is an in-memory ``PreTrainedModel`` (deep-copied unless ``copy_model=False``, so the
    caller's stays untouched; ``tokenizer`` is then required), a local directory, a ``.gguf``
    file, or a hub id (passed to ``from_pretrained``; needs network). ``gguf_file`` names a GGUF
    file inside a directory or repo; ``revision`` a hub branch, tag or commit. GGUF weights are
    dequantised to plain tensors so every method can train them. Raises a one-line
    :class:`~ftscale.errors.UserError` for anything that is not a loadable causal LM.
    """
    if isinstance(model, torch.nn.Module):
        if tokenizer is None:
            raise UserError("an in-memory model needs its tokenizer (tokenizer=None given)")
        name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        loaded = copy.deepcopy(model) if copy_model else model
        return loaded.float(), tokenizer, str(name)
    source, shown, kwargs = _model_source(str(model), gguf_file, revision)
    loaded = _from_pretrained(source, shown, kwargs)
    tokenizer = _load_tokenizer(tokenizer, source, shown, kwargs)
    if "gguf_file" in kwargs:
        loaded = _plain_model(loaded)
    return loaded.float(), tokenizer, shown


def _model_source(
    source: str, gguf_file: str | None, revision: str | None
) -> tuple[str, str, dict[str, Any]]:
    """``(what from_pretrained loads, the name errors and records show, its keywords)``; a
    one-line :class:`UserError` for a path that cannot be a model."""
    path = Path(source)
    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    shown = source + (f"/{gguf_file}" if gguf_file else "")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UserError(f"{source}: a file that is not a .gguf model (give a model folder)")
        gguf_file, source, shown = path.name, str(path.parent), source
    elif path.suffix.lower() == ".gguf":
        raise UserError(f"{source}: no such GGUF file")
    if gguf_file is not None:
        if not _gguf_available():
            raise UserError(f"{gguf_file}: loading GGUF needs the gguf package: pip install gguf")
        if path.is_dir() and not (path / gguf_file).is_file():
            raise UserError(f"{shown}: no such GGUF file")
        kwargs["gguf_file"] = gguf_file
    elif path.is_dir() and not (path / "config.json").exists():
        raise UserError(f"{source}: not a model directory (no config.json)")
    if not path.exists() and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise UserError(f"{source}: no such model directory")
    return source, shown, kwargs


def _from_pretrained(source: str, shown: str, kwargs: dict[str, Any]):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
    except (ValueError, KeyError, TypeError) as exc:
        first = first_line(exc)
        raise UserError(f"{shown}: not a loadable causal language model: {first}") from None
    except OSError as exc:  # missing files, no network for a hub id, unreadable weights
        raise UserError(f"{shown}: cannot load the model: {first_line(exc)}") from None


def _load_tokenizer(tokenizer: Any, source: str, shown: str, kwargs: dict[str, Any]):
    from transformers import AutoTokenizer

    if tokenizer is not None and not isinstance(tokenizer, str | Path):
        return tokenizer
    where, named = (source, shown) if tokenizer is None else (str(tokenizer), str(tokenizer))
    try:
        return AutoTokenizer.from_pretrained(where, **(kwargs if tokenizer is None else {}))
    except (ValueError, OSError, KeyError, TypeError) as exc:
        raise UserError(f"{named}: cannot load its tokenizer: {first_line(exc)}") from None


def _gguf_available() -> bool:
    """Whether the optional ``gguf`` package (needed to read GGUF files) is installed."""
    import importlib.util

    return importlib.util.find_spec("gguf") is not None


def _plain_model(model: torch.nn.Module) -> torch.nn.Module:
    """The same weights in a model transformers does not mark as quantised.

    A GGUF checkpoint is dequantised on load, but the model keeps its GGUF quantiser, which makes
    transformers refuse ``.float()`` and training. Rebuilding from the config without the
    quantisation entry and loading the (already float) weights gives an ordinary model.
    """
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # assign=True hands the loaded tensors over instead of copying them: one copy of the weights.
    state = {k: v.float() for k, v in model.state_dict().items()}
    plain.load_state_dict(state, strict=False, assign=True)
    plain.tie_weights()
    # Non-persistent buffers and plain tensor attributes (rotary frequencies) are not in the
    # state dict: take them from the loaded model.
    old = dict(model.named_modules())
    for path, module in plain.named_modules():
        for leaf, buffer in list(module._buffers.items()):
            if buffer is not None and buffer.is_meta:
                module._buffers[leaf] = old[path]._buffers[leaf]
        for attr, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and value.is_meta:
                setattr(module, attr, getattr(old[path], attr))
    missing = [n for n, p in plain.named_parameters() if p.is_meta]
    if missing:
        raise UserError(f"GGUF model: no weights for {missing[0]}")
    return plain


def resolve_device(name: str) -> torch.device:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``; other names must be torch
    devices this torch can use (a one-line :class:`UserError` otherwise)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device {name!r} is not a torch device") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r}: this torch sees no CUDA GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device {name!r}: only {torch.cuda.device_count()} GPU(s) visible")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {name!r}: MPS is not available")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"device {name!r}: use auto, cpu, cuda or cuda:N")
    return device


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
    (source, target) pairs; the run trains on ``nested_subset(train, train_config.examples,
    train_config.subset_seed)``, picks the best state by mean dev NLL per target token and reports
    test NLL per target token, perplexity and generation scores. ``evals``:
    :class:`~ftscale.finetune.job.EvalSet` values (or :class:`EvalData`) scored before and after
    training with ``shots`` demonstrations each. ``progress``: a
    :class:`~ftscale.finetune.progress.Progress` (``None``: silent). Same seed and inputs give the
    same record on CPU, timings and memory aside. Bad input raises
    :class:`~ftscale.errors.UserError` before any training; a NaN/inf loss or out-of-memory gives
    ``status="failed"``.
    """
    config = train_config or TrainConfig()
    task = task or TaskConfig()
    method = make_method(method) if isinstance(method, str) else method
    if not isinstance(method, MethodConfig):
        raise UserError(f"method must be a MethodConfig or a name, got {method!r}")
    for split, pairs in (("train", train), ("dev", dev), ("test", test)):
        check_pairs(pairs, split)
    examples = config.examples if config.examples is not None else len(train)
    subset = nested_subset(train, examples, config.subset_seed)
    eval_data = _resolve_evals(evals, shots, config)
    resolve_device(config.device)  # a device this torch cannot use fails before loading
    started = time.perf_counter()
    with _run_context(config):
        base, tokenizer, name = load_model(model, tokenizer, gguf_file, revision, copy_model=True)
        search = None
        if config.learning_rate == "auto":
            from ftscale.finetune.lr_search import search_learning_rate

            search = search_learning_rate(
                base, tokenizer, RunInputs(method, subset, dev, test, config, task), progress
            )
            config = dataclasses.replace(config, learning_rate=search.chosen)
        inputs = RunInputs(method, subset, dev, test, config, task, eval_data)
        result = run_loaded(base, tokenizer, name, inputs, progress=progress, started=started)
    result.record.lr_search = search.to_dict() if search else None
    return result if return_model else result.record


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


@dataclass(frozen=True)
class RunInputs:
    """What one run on a loaded model needs besides the model: method, pairs (train already the
    D_f subset), configs and resolved eval sets."""

    method: MethodConfig
    train: Sequence[Pair]
    dev: Sequence[Pair]
    test: Sequence[Pair]
    config: TrainConfig
    task: TaskConfig
    evals: Sequence[EvalData] = ()


@dataclass
class Run:
    """The state one run's steps share."""

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

    @property
    def config(self) -> TrainConfig:
        return self.inputs.config

    def nll(self, encoded: Encoded) -> tuple[float, int]:
        """Mean NLL per target token of the model on ``encoded`` (timed into ``eval_time``)."""
        began = time.perf_counter()
        value = mean_nll(
            self.model,
            encoded,
            self.pad,
            self.device,
            self.fast,
            self.config.eval_tokens_per_batch,
            autocast_dtype=self.autocast,
        )
        self.eval_time += time.perf_counter() - began
        return value


def run_loaded(
    base: torch.nn.Module,
    tokenizer: Any,
    name: str,
    inputs: RunInputs,
    progress: Any = None,
    started: float | None = None,
) -> FinetuneResult:
    """One run on an already loaded base model, which it changes (pass a copy to keep it):
    :func:`prepare`, then :func:`_execute` (train and evaluate, one failure path)."""
    started = time.perf_counter() if started is None else started
    torch.manual_seed(inputs.config.seed)
    run = prepare(base, tokenizer, name, inputs)
    _execute(run, progress)
    _finish(run.record, started, run.device)
    return FinetuneResult(run.record, run.model, run.tokenizer)


def prepare(base: torch.nn.Module, tokenizer: Any, name: str, inputs: RunInputs) -> Run:
    """Step 1: encode the data to fit the model's context, score the base model on the eval
    sets, apply the method, and start the record."""
    config, method = inputs.config, inputs.method
    device = resolve_device(config.device)
    context = context_length(base, tokenizer)
    limit = None if context is None else context - method.virtual_tokens
    total_params, nonembedding = base_parameter_counts(base)
    _, eos, pad = special_ids(tokenizer)
    dev_pairs = inputs.dev
    if config.dev_examples is not None and config.dev_examples < len(dev_pairs):
        keep = np.random.default_rng(0).permutation(len(dev_pairs))[: config.dev_examples]
        dev_pairs = [dev_pairs[i] for i in sorted(keep.tolist())]
    encoded = [
        encode_pairs(pairs, tokenizer, inputs.task, split, limit)
        for pairs, split in ((inputs.train, "train"), (dev_pairs, "dev"), (inputs.test, "test"))
    ]
    autocast = None
    if device.type == "cuda" and config.bf16 and torch.cuda.is_bf16_supported():
        autocast = torch.bfloat16
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    record = _new_record(
        inputs,
        encoded,
        model_name=name,
        total_params=total_params,
        nonembedding=nonembedding,
        device=device,
        autocast=autocast,
    )
    record.context_length = context
    base = base.to(device)
    checkpointing = config.checkpointing
    if checkpointing is None:
        checkpointing = total_params >= CHECKPOINTING_PARAMS
    if checkpointing and hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable({"use_reentrant": False})
    record.checkpointing = bool(checkpointing)
    run = Run(inputs, base, tokenizer, record, *encoded, device, autocast, pad, eos, context)
    if inputs.evals:
        record.evals = {
            e.name: {"shots": len(e.demos), "base": _score_eval(run, e)} for e in inputs.evals
        }
    torch.manual_seed(config.seed)
    run.model = apply_method(base, method, seed=config.seed).to(device)
    run.params = [p for p in run.model.parameters() if p.requires_grad]
    record.trainable_params, _ = count_parameters(run.model)
    probe = collate(run.train, list(range(min(len(run.train), config.batch_size))), pad)
    run.fast = config.fast_head and fast_path_ok(
        run.model, probe[0].to(device), probe[1].to(device)
    )
    record.fast_head = run.fast
    return run


def _new_record(
    inputs, encoded, *, model_name: str, total_params: int, nonembedding, device, autocast
) -> RunRecord:
    """The run's record before training: its design, data, recipe and environment."""
    config, method = inputs.config, inputs.method
    train, dev, test = encoded
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
        dtype="bfloat16-autocast" if autocast is not None else "float32",
        threads=torch.get_num_threads(),
        versions=library_versions(),
    )


def _execute(run: Run, progress: Any) -> None:
    """Steps 2 and 3 (train, evaluate) with the run's one failure path: a :class:`RunFailed` or
    an out-of-memory error in either becomes ``status="failed"`` with the reason and step."""
    try:
        train_model(run, progress)
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
    _training_summary(run)
    record.improved = record.undertrained = None


def train_model(run: Run, progress: Any) -> None:
    """Step 2: the training loop with dev checks; the best trainable state is kept in memory."""
    config, record = run.config, run.record
    run.phase = "checking dev before training"
    best = _dev_check(run, 0)
    run.best_state = _snapshot(run.params, _snapshot_to_cpu(run))
    total = record.max_steps
    every = config.eval_every or max(1, math.ceil(total / config.evals))
    optimizer = _make_optimizer(config, run.params, record.learning_rate)
    rng = np.random.default_rng(config.seed)
    batches: list[list[int]] = []
    stale = 0
    if progress is not None:
        progress.start(total, _progress_label(run))
    run.model.train()
    began, eval_before = time.perf_counter(), run.eval_time
    while record.steps < total:
        run.phase = "training"
        if not batches:
            batches = length_grouped_batches(run.train.lengths, config.batch_size, rng)
        loss = _train_step(run, optimizer, batches.pop())
        if progress is not None:
            progress.step(record.steps, loss)
        if record.steps % every and record.steps != total:
            continue
        value = _dev_check(run, record.steps)
        if progress is not None:
            progress.dev(record.steps, value, min(best, value))
        if value < best:
            best, stale = value, 0
            run.best_state = _snapshot(run.params, _snapshot_to_cpu(run))
        else:
            stale += 1
            if config.patience is not None and stale >= config.patience:
                record.stopped_early = record.steps < total
                break
    record.train_s = time.perf_counter() - began - (run.eval_time - eval_before)
    _training_summary(run)


def _progress_label(run: Run) -> str:
    return f"{run.inputs.method.name} lr {run.record.learning_rate:g}"


def _train_step(run: Run, optimizer, indices: list[int]) -> float:
    """One optimizer step on one batch; returns its loss (nats per target token)."""
    config, record = run.config, run.record
    input_ids, labels, real = collate(run.train, indices, run.pad)
    input_ids, labels = input_ids.to(run.device), labels.to(run.device)
    rate = learning_rate_at(
        record.steps,
        record.max_steps,
        record.learning_rate,
        config.warmup_fraction,
        config.final_lr_fraction,
    )
    for group in optimizer.param_groups:
        group["lr"] = rate
    with _autocast(run.device, run.autocast):
        nll_sum, count = target_nll(run.model, input_ids, labels, fast=run.fast)
    loss = nll_sum / count
    if not torch.isfinite(loss):
        raise RunFailed(
            f"non-finite training loss ({loss.item()}) at step {record.steps + 1}",
            record.steps + 1,
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(run.params, config.max_grad_norm)
    optimizer.step()
    record.steps += 1
    run.epoch_batches += 1
    record.tokens_seen += real
    record.target_tokens_seen += count
    run.padded_tokens += input_ids.numel()
    return float(loss.detach())


def _dev_check(run: Run, step: int) -> float:
    """Dev NLL at ``step`` into the record's history and best; :class:`RunFailed` when it is not
    finite."""
    record = run.record
    phase, run.phase = run.phase, f"checking dev at step {step}"
    value, _ = run.nll(run.dev)
    run.phase = phase
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
    per_epoch = max(1, steps_per_epoch(len(run.train), run.config.batch_size))
    record.epochs = run.epoch_batches / per_epoch
    if run.padded_tokens:
        record.padding_fraction = 1.0 - record.tokens_seen / run.padded_tokens
    if record.best_step is not None:
        record.improved = record.best_step > 0
        record.undertrained = record.best_step > 0 and record.best_step == record.steps


def evaluate(run: Run) -> None:
    """Step 3: restore the best state, score the test split, generate, score the eval sets."""
    record, config = run.record, run.config
    _restore(run.params, run.best_state)
    run.phase = "evaluating the test split"
    value, tokens = run.nll(run.test)
    record.test_nll, record.test_ppl, record.test_tokens = value, perplexity(value), tokens
    if not math.isfinite(value):
        raise RunFailed("non-finite test loss", record.steps)
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
        context=_limit(run),
    )
    references = [encoded.targets[i] for i in order]
    return score_generations(outputs, references, run.inputs.task.bleu_tokenize)


def _score_eval(run: Run, data: EvalData) -> dict[str, Any]:
    """NLL, perplexity and generation scores of the current model on one eval set, with its
    demonstrations in every prompt."""
    task = few_shot_task(run.inputs.task, data.demos)
    encoded = encode_pairs(data.pairs, run.tokenizer, task, f"eval set {data.name!r}", _limit(run))
    value, tokens = run.nll(encoded)
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


def _limit(run: Run) -> int | None:
    """Tokens an example may have: the model's context less the method's prepended positions."""
    return None if run.context is None else run.context - run.inputs.method.virtual_tokens


def few_shot_task(task: TaskConfig, demos: Sequence[Pair]) -> TaskConfig:
    """``task`` with the demonstrations (each filled in as an example, then a newline) before
    every prompt; ``task`` itself when there are none."""
    if not demos:
        return task
    shown = "".join(task.prompt(d.source) + task.target_prefix + d.target + "\n" for d in demos)
    escaped = shown.replace("{", "{{").replace("}", "}}")
    budget = task.max_source_tokens + 4096  # demonstrations are never cut as a source would be
    return dataclasses.replace(task, template=escaped + task.template, max_source_tokens=budget)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)


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
    return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)


def _snapshot_to_cpu(run: Run) -> bool:
    """Full-model tuning on a GPU keeps its best state in host memory (a GPU copy would double
    the model's GPU memory)."""
    return run.device.type != "cpu" and run.inputs.method.name == "fmt"


def _snapshot(params: list[torch.nn.Parameter], to_cpu: bool = False) -> list[torch.Tensor]:
    """Copies of the trainable tensors (the state that training changes)."""
    if to_cpu:
        return [p.detach().to("cpu", copy=True) for p in params]
    return [p.detach().clone() for p in params]


def _restore(params: list[torch.nn.Parameter], state: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for parameter, saved in zip(params, state, strict=True):
            parameter.copy_(saved.to(parameter.device))


def _finish(record: RunRecord, started: float, device: torch.device) -> None:
    record.wall_s = time.perf_counter() - started
    if device.type == "cuda":
        record.peak_mem_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        record.peak_mem_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
