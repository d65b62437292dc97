"""One finetuning run: load, apply the method, train with dev checks, evaluate, record.

The loop is written out plainly (no Trainer): length-grouped batches padded to their own longest
sequence, loss on target tokens only, warmup then cosine learning rate, dev loss every
``eval_every`` steps, the best state kept in memory and restored before testing, early stopping
after ``patience`` dev checks without improvement. A loss that turns NaN/inf ends the run with a
failed record instead of an exception.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import resource
import time
import warnings
from collections.abc import Sequence
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
    TaskConfig,
    collate,
    encode_pairs,
    length_grouped_batches,
    nested_subset,
    special_ids,
    steps_per_epoch,
)

OPTIMIZERS = ("adamw", "adafactor")


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
    ``max_new_tokens`` new tokens each; ``eval_tokens_per_batch`` caps padded tokens per
    evaluation batch.
    Hardware: ``device`` (``auto``, ``cpu``, ``cuda``, ...), ``threads`` (CPU threads for this run,
    restored afterwards; ``None`` = leave torch's setting), ``bf16`` autocast on GPUs that support
    it. ``fast_head`` computes the output head on target positions only (checked per run).
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
    max_new_tokens: int = 64
    gen_batch_size: int = 32
    eval_tokens_per_batch: int = 8192
    device: str = "auto"
    threads: int | None = None
    bf16: bool = True
    fast_head: bool = True

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
        )
        for name in positive:
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("max_steps", "eval_every", "patience", "threads", "examples", "dev_examples"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)
        _check_int("gen_examples", self.gen_examples, minimum=0)
        rate = self.learning_rate
        if (
            rate is not None
            and rate != "auto"
            and not (isinstance(rate, int | float) and math.isfinite(rate) and rate > 0)
        ):
            raise UserError(f"learning_rate must be a positive number or 'auto', got {rate!r}")
        if not (math.isfinite(self.epochs) and self.epochs > 0):
            raise UserError(f"epochs must be a positive number, got {self.epochs!r}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise UserError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        if not 0.0 <= self.final_lr_fraction <= 1.0:
            raise UserError(f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction!r}")

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
    """What :func:`run_finetune` returns: the record, and the trained model (best dev state
    restored) with its tokenizer, for callers that want to inspect or save it."""

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
    model: Any, tokenizer: Any = None, gguf_file: str | None = None, revision: str | None = None
):
    """``(model, tokenizer, name)`` ready to finetune, the model in float32.

    ``model`` is an in-memory ``PreTrainedModel`` (deep-copied, so the caller's stays untouched;
    ``tokenizer`` is then required), a local directory, a ``.gguf`` file, or a hub id (passed to
    ``from_pretrained``; needs network). ``gguf_file`` names a GGUF file inside a directory or
    repo; ``revision`` a hub branch, tag or commit. GGUF weights are dequantised to plain tensors
    so every method can train them. Raises a
    one-line :class:`~ftscale.errors.UserError` for anything that is not a loadable causal LM.
    """
    if isinstance(model, torch.nn.Module):
        if tokenizer is None:
            raise UserError("an in-memory model needs its tokenizer (tokenizer=None given)")
        name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        return copy.deepcopy(model).float(), tokenizer, str(name)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = str(model)
    path = Path(source)
    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise UserError(f"{source}: no such GGUF file")
        gguf_file, source = path.name, str(path.parent)
    if gguf_file is not None:
        if not _gguf_available():
            raise UserError(f"{gguf_file}: loading GGUF needs the gguf package: pip install gguf")
        kwargs["gguf_file"] = gguf_file
    if (
        path.exists()
        and path.is_dir()
        and gguf_file is None
        and not (path / "config.json").exists()
    ):
        raise UserError(f"{source}: not a model directory (no config.json)")
    if not path.exists() and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise UserError(f"{source}: no such model directory")
    try:
        loaded = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
    except (ValueError, KeyError) as exc:
        first = first_line(exc)
        raise UserError(f"{source}: not a loadable causal language model: {first}") from None
    except OSError as exc:  # missing files, no network for a hub id, unreadable weights
        first = first_line(exc)
        raise UserError(f"{source}: cannot load the model: {first}") from None
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        except (ValueError, OSError, KeyError, TypeError) as exc:
            first = first_line(exc)
            raise UserError(f"{source}: cannot load its tokenizer: {first}") from None
    elif isinstance(tokenizer, str | Path):
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
        except (ValueError, OSError, KeyError, TypeError) as exc:
            first = first_line(exc)
            raise UserError(f"{tokenizer}: cannot load tokenizer: {first}") from None
    if gguf_file is not None:
        loaded = _plain_model(loaded)
    return loaded.float(), tokenizer, source + (f"/{gguf_file}" if gguf_file else "")


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
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    return plain


def resolve_device(name: str) -> torch.device:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``; other names pass through."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"device {name!r} is not a torch device") from None


def finetune(
    model: Any,
    tokenizer: Any,
    method_config: MethodConfig | str,
    train_pairs: Sequence[Pair],
    dev_pairs: Sequence[Pair],
    test_pairs: Sequence[Pair],
    train_config: TrainConfig | None = None,
    task: TaskConfig | None = None,
    *,
    gguf_file: str | None = None,
    revision: str | None = None,
) -> RunRecord:
    """Finetune ``model`` with one method on (a subset of) ``train_pairs``; return its record.

    See :func:`run_finetune`, which this calls, for the arguments; this returns only the
    :class:`~ftscale.finetune.record.RunRecord` and frees the trained model.
    """
    return run_finetune(
        model,
        tokenizer,
        method_config,
        train_pairs,
        dev_pairs,
        test_pairs,
        train_config,
        task,
        gguf_file=gguf_file,
        revision=revision,
    ).record


def run_finetune(
    model: Any,
    tokenizer: Any,
    method_config: MethodConfig | str,
    train_pairs: Sequence[Pair],
    dev_pairs: Sequence[Pair],
    test_pairs: Sequence[Pair],
    train_config: TrainConfig | None = None,
    task: TaskConfig | None = None,
    *,
    gguf_file: str | None = None,
    revision: str | None = None,
) -> FinetuneResult:
    """One finetuning run, end to end.

    ``model``: in-memory causal LM (copied, never modified), local directory, ``.gguf`` file or hub
    id (``gguf_file`` names a GGUF file inside a directory or hub repo); ``tokenizer``: its
    tokenizer (``None`` loads it from the model's path).
    ``method_config``: a :class:`MethodConfig` or a method name. ``*_pairs``: (source, target)
    pairs; the run trains on ``nested_subset(train_pairs, train_config.examples,
    train_config.subset_seed)``, picks the best state by mean dev NLL per target token and reports
    test NLL per target token, perplexity and generation scores. Same seed and inputs give the same
    record on CPU, timings and memory aside. Bad input raises
    :class:`~ftscale.errors.UserError`; a NaN/inf loss gives ``status="failed"``.
    """
    config = train_config or TrainConfig()
    task = task or TaskConfig()
    method = make_method(method_config) if isinstance(method_config, str) else method_config
    if not isinstance(method, MethodConfig):
        raise UserError(f"method_config must be a MethodConfig or a name, got {method_config!r}")
    for split, pairs in (("train", train_pairs), ("dev", dev_pairs), ("test", test_pairs)):
        if len(pairs) == 0:
            raise UserError(f"{split}: no examples")
    examples = config.examples if config.examples is not None else len(train_pairs)
    subset = nested_subset(train_pairs, examples, config.subset_seed)
    search = None
    if config.learning_rate == "auto":
        from ftscale.finetune.lr_search import search_learning_rate

        search = search_learning_rate(
            model,
            tokenizer,
            method,
            subset,
            dev_pairs,
            config,
            task,
            gguf_file=gguf_file,
            revision=revision,
        )
        config = dataclasses.replace(config, learning_rate=search.chosen)

    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # Library chatter that says nothing about this run: PEFT's use of a deprecated
            # transformers name, and prompt tuning ignoring position ids during generation.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            warnings.filterwarnings("ignore", message="Position ids are not supported.*")
            result = _run(
                model,
                tokenizer,
                method,
                subset,
                dev_pairs,
                test_pairs,
                config,
                task,
                started,
                (gguf_file, revision),
            )
            result.record.lr_search = search.to_dict() if search else None
            return result
    finally:
        if config.threads is not None:
            torch.set_num_threads(previous_threads)


def _run(model, tokenizer, method, subset, dev_pairs, test_pairs, config, task, started, source):
    torch.manual_seed(config.seed)
    gguf_file, revision = source
    base, tokenizer, name = load_model(model, tokenizer, gguf_file, revision)
    total_params, nonembedding = base_parameter_counts(base)
    _, eos, pad = special_ids(tokenizer)
    train = encode_pairs(subset, tokenizer, task, "train")
    if config.dev_examples is not None and config.dev_examples < len(dev_pairs):
        keep = np.random.default_rng(0).permutation(len(dev_pairs))[: config.dev_examples]
        dev_pairs = [dev_pairs[i] for i in sorted(keep.tolist())]
    dev = encode_pairs(dev_pairs, tokenizer, task, "dev")
    test = encode_pairs(test_pairs, tokenizer, task, "test")

    device = resolve_device(config.device)
    autocast_dtype = None
    if device.type == "cuda" and config.bf16 and torch.cuda.is_bf16_supported():
        autocast_dtype = torch.bfloat16
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    torch.manual_seed(config.seed)
    trained = apply_method(base, method, seed=config.seed).to(device)
    trainable, _ = count_parameters(trained)
    params = [p for p in trained.parameters() if p.requires_grad]
    snapshot_to_cpu = device.type != "cpu" and method.name == "fmt"
    lr = config.learning_rate if config.learning_rate is not None else method.default_learning_rate
    total_steps = config.total_steps(len(train))
    eval_every = config.eval_every or max(1, math.ceil(total_steps / config.evals))

    record = RunRecord(
        method=method.name,
        method_size=method.size,
        method_options=dict(method.options),
        trainable_params=trainable,
        total_params=total_params,
        nonembedding_params=nonembedding,
        examples=len(train),
        subset_seed=config.subset_seed,
        seed=config.seed,
        model=name,
        max_steps=total_steps,
        dev_examples=len(dev),
        test_examples=len(test),
        dev_tokens=dev.target_tokens,
        truncated_sources=train.truncated_sources + dev.truncated_sources + test.truncated_sources,
        truncated_targets=train.truncated_targets + dev.truncated_targets + test.truncated_targets,
        learning_rate=lr,
        optimizer=config.optimizer,
        batch_size=config.batch_size,
        device=str(device),
        dtype="bfloat16-autocast" if autocast_dtype is not None else "float32",
        threads=torch.get_num_threads(),
        versions=library_versions(),
    )

    probe = collate(train, list(range(min(len(train), config.batch_size))), pad)
    fast = config.fast_head and fast_path_ok(trained, probe[0].to(device), probe[1].to(device))
    record.fast_head = fast

    def dev_nll() -> float:
        value, _ = mean_nll(
            trained,
            dev,
            pad,
            device,
            fast,
            config.eval_tokens_per_batch,
            autocast_dtype=autocast_dtype,
        )
        return value

    eval_started = time.perf_counter()
    best = dev_nll()
    eval_time = time.perf_counter() - eval_started
    record.initial_dev_nll = best
    record.dev_history.append([0, best])
    record.best_dev_nll, record.best_step = best, 0
    best_state = _snapshot(params, snapshot_to_cpu)
    if not math.isfinite(best):
        return _fail(
            record, trained, tokenizer, 0, "non-finite dev loss before training", started, device
        )

    optimizer = _make_optimizer(config, params, lr)
    rng = np.random.default_rng(config.seed)
    lengths = train.lengths
    batches: list[list[int]] = []
    step = epoch_batches = 0
    checks_without_gain = 0
    padded_tokens = 0
    loop_eval_time = 0.0
    trained.train()
    train_started = time.perf_counter()
    try:
        while step < total_steps:
            if not batches:
                batches = length_grouped_batches(lengths, config.batch_size, rng)
            indices = batches.pop()
            epoch_batches += 1
            input_ids, labels, real = collate(train, indices, pad)
            input_ids, labels = input_ids.to(device), labels.to(device)
            current_lr = learning_rate_at(
                step, total_steps, lr, config.warmup_fraction, config.final_lr_fraction
            )
            for group in optimizer.param_groups:
                group["lr"] = current_lr
            with _autocast(device, autocast_dtype):
                nll_sum, count = target_nll(trained, input_ids, labels, fast=fast)
            loss = nll_sum / count
            if not torch.isfinite(loss):
                return _fail(
                    record,
                    trained,
                    tokenizer,
                    step + 1,
                    f"non-finite training loss ({loss.item()}) at step {step + 1}",
                    started,
                    device,
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            step += 1
            record.steps = step
            record.tokens_seen += real
            record.target_tokens_seen += count
            padded_tokens += input_ids.numel()

            if step % eval_every == 0 or step == total_steps:
                check_started = time.perf_counter()
                value = dev_nll()
                loop_eval_time += time.perf_counter() - check_started
                record.dev_history.append([step, value])
                if not math.isfinite(value):
                    return _fail(
                        record,
                        trained,
                        tokenizer,
                        step,
                        f"non-finite dev loss at step {step}",
                        started,
                        device,
                    )
                if value < best:
                    best, record.best_dev_nll, record.best_step = value, value, step
                    best_state = _snapshot(params, snapshot_to_cpu)
                    checks_without_gain = 0
                else:
                    checks_without_gain += 1
                    if config.patience is not None and checks_without_gain >= config.patience:
                        record.stopped_early = step < total_steps
                        break
    except torch.OutOfMemoryError:
        return _fail(
            record,
            trained,
            tokenizer,
            step + 1,
            f"out of memory at step {step + 1}",
            started,
            device,
        )
    train_time = time.perf_counter() - train_started - loop_eval_time
    record.epochs = epoch_batches / max(1, steps_per_epoch(len(train), config.batch_size))
    record.padding_fraction = 1.0 - record.tokens_seen / padded_tokens if padded_tokens else 0.0

    _restore(params, best_state)
    check_started = time.perf_counter()
    test_value, test_tokens = mean_nll(
        trained,
        test,
        pad,
        device,
        fast,
        config.eval_tokens_per_batch,
        autocast_dtype=autocast_dtype,
    )
    eval_time += time.perf_counter() - check_started
    record.test_nll, record.test_ppl, record.test_tokens = (
        test_value,
        perplexity(test_value),
        test_tokens,
    )
    if not math.isfinite(test_value):
        return _fail(record, trained, tokenizer, step, "non-finite test loss", started, device)

    if config.gen_examples > 0:
        gen_started = time.perf_counter()
        order = np.random.default_rng(0).permutation(len(test))[: config.gen_examples].tolist()
        outputs = greedy_generate(
            trained,
            test,
            order,
            pad,
            eos,
            tokenizer,
            config.max_new_tokens,
            config.gen_batch_size,
            device,
            autocast_dtype,
        )
        scores = score_generations(outputs, [test.targets[i] for i in order], task.bleu_tokenize)
        record.gen_examples = len(order)
        record.gen_bleu, record.gen_chrf, record.gen_rouge_l = (
            scores.bleu,
            scores.chrf,
            scores.rouge_l,
        )
        record.generate_s = time.perf_counter() - gen_started

    record.train_s = train_time
    record.eval_s = eval_time + loop_eval_time
    _finish(record, started, device)
    return FinetuneResult(record, trained, tokenizer)


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


def _snapshot(params: list[torch.nn.Parameter], to_cpu: bool = False) -> list[torch.Tensor]:
    """Copies of the trainable tensors (the state that training changes), in host memory when
    ``to_cpu`` (full-model tuning on a GPU: the copy would double the model's GPU memory)."""
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


def _fail(
    record: RunRecord,
    model,
    tokenizer,
    step: int,
    reason: str,
    started: float,
    device: torch.device,
) -> FinetuneResult:
    record.status = "failed"
    record.reason = reason
    record.failed_step = step
    _finish(record, started, device)
    return FinetuneResult(record, model, tokenizer)
