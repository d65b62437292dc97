"""``ftscale finetune``: one finetuning run from the command line, its record as one JSON line.

Options -> one :class:`~ftscale.finetune.job.FinetuneJob` -> :func:`~ftscale.finetune.job.run_job`
-> render. Every input and output location is checked before the model loads.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from ftscale.errors import UserError
from ftscale.finetune.methods import method_help

#: Exit status when the run finished but its record could not be appended to --output (the record
#: is printed on stdout instead).
RECORD_NOT_SAVED_EXIT = 3


def _parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (numbers, lists, true/false)."""
    if "=" not in text:
        raise UserError(f"--option {text!r}: expected KEY=VALUE")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")
    if not key:
        raise UserError(f"--option {text!r}: empty KEY")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def finetune_command(
    model: Annotated[
        str | None, typer.Option(help="Base model: local directory, .gguf file or hub id.")
    ] = None,
    method: Annotated[str | None, typer.Option(help=method_help() + ".")] = None,
    train: Annotated[
        str | None, typer.Option(help="Training pairs (JSONL/CSV/Parquet: source, target).")
    ] = None,
    dev: Annotated[
        str | None, typer.Option(help="Dev pairs: pick the best state by dev NLL.")
    ] = None,
    test: Annotated[
        str | None, typer.Option(help="Test pairs: NLL per target token, generation.")
    ] = None,
    job_file: Annotated[
        Path | None,
        typer.Option(
            "--job", help="Run a saved run spec (JSON from --print-job) instead of flags."
        ),
    ] = None,
    print_job: Annotated[
        bool, typer.Option("--print-job", help="Print the run spec and its key; do not run.")
    ] = False,
    revision: Annotated[
        str | None, typer.Option(help="Hub revision (branch, tag, commit) of --model.")
    ] = None,
    rank: Annotated[
        int | None, typer.Option(min=1, help="Rank of LoRA-like methods (lora, dora, loha, ...).")
    ] = None,
    prompt_length: Annotated[
        int | None,
        typer.Option(
            min=1, help="Virtual tokens of prompt-like methods (prompt, prefix_tuning, p_tuning)."
        ),
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-o", help="Method option KEY=VALUE (repeatable), e.g. alpha=16."),
    ] = None,
    examples: Annotated[
        int | None, typer.Option(min=1, help="D_f: training examples (default all).")
    ] = None,
    subset_seed: Annotated[
        int, typer.Option(min=0, help="Seed of the nested training subset.")
    ] = 0,
    seed: Annotated[
        int, typer.Option(min=0, help="Seed of initialisation, order and dropout.")
    ] = 0,
    max_steps: Annotated[
        int | None, typer.Option(min=1, help="Optimizer steps (default from epochs).")
    ] = None,
    epochs: Annotated[float, typer.Option(help="Epochs when --max-steps is not given.")] = 5.0,
    lr: Annotated[
        str | None,
        typer.Option(
            help="Peak learning rate, or 'auto' for a short search on dev (default per method)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Examples per optimizer step.")] = 16,
    optimizer: Annotated[str, typer.Option(help="adamw or adafactor.")] = "adamw",
    eval_every: Annotated[
        int | None, typer.Option(min=1, help="Steps between dev checks.")
    ] = None,
    patience: Annotated[
        int, typer.Option(min=0, help="Dev checks without gain before stopping; 0 off.")
    ] = 3,
    template: Annotated[
        str, typer.Option(help="Prompt template with {src}; a typed \\n means a newline.")
    ] = "{src} =",
    field: Annotated[
        list[str] | None,
        typer.Option("--field", help="Template field KEY=VALUE (repeatable), e.g. lang=German."),
    ] = None,
    source_column: Annotated[str, typer.Option(help="Source column / JSON key.")] = "source",
    target_column: Annotated[str, typer.Option(help="Target column / JSON key.")] = "target",
    max_source_tokens: Annotated[int, typer.Option(min=1, help="Source cap (tokens).")] = 256,
    max_target_tokens: Annotated[int, typer.Option(min=1, help="Target cap (tokens).")] = 256,
    dev_examples: Annotated[
        int | None,
        typer.Option(min=1, help="Dev pairs used per check (fixed sample; default all)."),
    ] = None,
    gen_examples: Annotated[
        int, typer.Option(min=0, help="Test sources to generate for; 0 none.")
    ] = 64,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Generation cap (tokens).")] = 64,
    bleu_tokenize: Annotated[str, typer.Option(help="sacrebleu tokenizer: 13a, zh, intl.")] = "13a",
    eval_set: Annotated[
        list[str] | None,
        typer.Option(
            "--eval",
            help="Extra eval set NAME=SOURCE (repeatable), e.g. fr-de=builtin:fr-de; scored "
            "before and after training.",
        ),
    ] = None,
    shots: Annotated[
        int, typer.Option(min=0, help="Demonstrations in each --eval prompt (0: zero-shot).")
    ] = 0,
    eval_examples: Annotated[
        int, typer.Option(min=1, help="Pairs scored per --eval set (a seeded sample).")
    ] = 64,
    threads: Annotated[
        int | None, typer.Option(min=1, help="CPU threads (default: all).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    gguf_file: Annotated[str | None, typer.Option(help="GGUF file inside --model.")] = None,
    output: Annotated[
        Path | None, typer.Option(help="Append the record as one JSON line to this file.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the record as JSON.")] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress or warnings on stderr.")
    ] = False,
) -> None:
    """Finetune one base model with one method; report test NLL per target token and more.

    The run is built from the flags (or read with --job) as a run spec; --print-job shows it.
    Exit 0 when the run finished, 1 when it failed (loss NaN/inf or out of memory; the record
    says why), 2 for bad input (nothing run or written), 3 when the run finished but its record
    could not be appended to --output (the record is printed instead).
    """
    from ftscale.finetune.job import FinetuneJob, run_job

    if output is not None:
        check_output(output)
    job = FinetuneJob.read(job_file) if job_file is not None else _job_from_flags(locals())
    if print_job:
        typer.echo(json.dumps({"key": job.key, "job": job.to_dict()}, indent=1, sort_keys=True))
        return
    _quiet_library_logs()
    from ftscale.finetune.memory import return_freed_memory
    from ftscale.finetune.progress import make_progress

    return_freed_memory()
    record = run_job(job, progress=make_progress(quiet))
    if not quiet:
        _warn(record)
    line = record.to_json()
    saved = _append(output, line) if output is not None else None
    if as_json or saved is False:
        typer.echo(line)
    else:
        _print_summary(record)
    if saved is False:
        raise typer.Exit(RECORD_NOT_SAVED_EXIT)
    if record.status != "ok":
        raise typer.Exit(1)


def _job_from_flags(flags: dict[str, Any]):
    """The run spec from the command's flags (``locals()`` of :func:`finetune_command`)."""
    from ftscale.common import usable_cores
    from ftscale.finetune.job import DataSource, EvalSet, FinetuneJob
    from ftscale.finetune.tasks import TaskConfig
    from ftscale.finetune.train import TrainConfig

    required = ("model", "method", "train", "dev", "test")
    missing = [f"--{name}" for name in required if flags[name] is None]
    if missing:
        raise UserError(f"missing option {missing[0]} (or give a saved spec with --job)")
    epochs = flags["epochs"]
    if not (math.isfinite(epochs) and epochs > 0):
        raise UserError(f"--epochs {epochs!r}: expected a positive number")
    columns = {"source_column": flags["source_column"], "target_column": flags["target_column"]}
    task = TaskConfig(
        template=flags["template"].replace("\\n", "\n"),
        fields=_fields(flags["field"]),
        max_source_tokens=flags["max_source_tokens"],
        max_target_tokens=flags["max_target_tokens"],
        bleu_tokenize=flags["bleu_tokenize"],
    )
    names = ("examples", "subset_seed", "seed", "optimizer", "batch_size", "max_steps")
    names += ("eval_every", "dev_examples", "gen_examples", "max_new_tokens", "device")
    names += ("eval_examples",)
    config = TrainConfig(
        **{name: flags[name] for name in names},
        epochs=epochs,
        learning_rate=_learning_rate(flags["lr"]),
        patience=flags["patience"] or None,
        threads=flags["threads"] if flags["threads"] is not None else usable_cores(),
    )
    evals = tuple(EvalSet.parse(text, **columns) for text in flags["eval_set"] or [])
    if flags["shots"] and not evals:
        raise UserError("--shots applies to --eval sets; none given")
    return FinetuneJob(
        model=flags["model"],
        revision=flags["revision"],
        gguf_file=flags["gguf_file"],
        method=_method(flags),
        train=DataSource(flags["train"], **columns),
        dev=DataSource(flags["dev"], **columns),
        test=DataSource(flags["test"], **columns),
        task=task,
        train_config=config,
        evals=evals,
        shots=flags["shots"],
    )


def _fields(texts: list[str] | None) -> dict[str, str]:
    fields: dict[str, str] = {}
    for text in texts or []:
        if "=" not in text:
            raise UserError(f"--field {text!r}: expected KEY=VALUE")
        key, value = text.split("=", 1)
        fields[key.strip()] = value
    return fields


def check_output(path: Path) -> None:
    """A one-line :class:`UserError` unless a record can be appended to ``path``: not a folder,
    writable if it exists, else its nearest existing parent is a writable folder."""
    if path.is_dir():
        raise UserError(f"--output {path}: is a folder (give a file to append records to)")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise UserError(f"--output {path}: not writable")
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--output {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--output {path}: cannot create it ({parent} is not writable)")


def _append(path: Path, line: str) -> bool:
    """Append one record line to ``path``; ``False`` (and a message on stderr) when that fails
    after all, so the caller prints the record instead of losing it."""
    from ftscale.common import first_line

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
    except OSError as exc:
        typer.echo(
            f"ftscale: error: could not append the record to {path}: {first_line(exc)}; "
            "the record is printed on stdout",
            err=True,
        )
        return False
    return True


def _warn(record) -> None:
    """One-line warnings when training did not help or had not finished helping."""
    if record.improved is False:
        typer.echo(
            f"ftscale: warning: no dev check beat the base model (dev NLL "
            f"{record.initial_dev_nll:.4f}); try a smaller --lr or --lr auto",
            err=True,
        )
    if record.undertrained:
        typer.echo(
            f"ftscale: warning: the best dev check was the last step ({record.best_step}): "
            "still improving; more steps (--epochs, --max-steps) may help",
            err=True,
        )


def _learning_rate(text: str | None) -> float | str | None:
    """--lr: a positive number or ``auto``."""
    if text is None or text.strip().lower() == "auto":
        return None if text is None else "auto"
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--lr {text!r}: expected a positive number or 'auto'") from None
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"--lr {text!r}: expected a positive number or 'auto'")
    return value


def _method(flags: dict[str, Any]):
    """The method config from --method, --option and the size flags (--rank for LoRA-like
    methods, --prompt-length for prompt-like ones), all resolved by the method registry."""
    from ftscale.finetune.methods import make_method, size_option

    options: dict[str, Any] = dict(_parse_option(text) for text in flags["option"] or [])
    for flag, value in (("rank", flags["rank"]), ("prompt-length", flags["prompt_length"])):
        if value is not None:
            options.update(size_option(flags["method"], flag, value))
    return make_method(flags["method"], **options)


def _quiet_library_logs() -> None:
    """Weight-loading bars and hub retry warnings say nothing about the run: silence them (the
    one-line error says what failed)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        pass


def _print_summary(record) -> None:
    size = f" (size {record.method_size})" if record.method_size is not None else ""
    typer.echo(
        f"method {record.method}{size}: {record.trainable_params:,} trainable of "
        f"{record.total_params:,} parameters ({record.nonembedding_params:,} non-embedding)"
    )
    typer.echo(
        f"data: {record.examples} examples (subset seed {record.subset_seed}), "
        f"{record.steps} steps, {record.tokens_seen:,} tokens, seed {record.seed}"
    )
    if record.status != "ok":
        typer.echo(f"status: failed at step {record.failed_step}: {record.reason}")
        return
    typer.echo(
        f"dev NLL/token: {record.initial_dev_nll:.4f} before, best {record.best_dev_nll:.4f}"
        f" at step {record.best_step}"
    )
    typer.echo(f"test NLL/token: {record.test_nll:.4f} (perplexity {record.test_ppl:.2f})")
    if record.gen_examples:
        typer.echo(
            f"generation on {record.gen_examples} test sources: BLEU {record.gen_bleu:.2f}, "
            f"chrF {record.gen_chrf:.2f}, ROUGE-L {record.gen_rouge_l:.2f}"
        )
    for name, result in record.evals.items():
        base, tuned = result["base"], result.get("finetuned", {})
        typer.echo(
            f"eval {name} ({result['shots']}-shot, {base['examples']} pairs): NLL/token "
            f"{base['nll']:.4f} base -> {tuned.get('nll', float('nan')):.4f} finetuned"
        )
    typer.echo(f"time: {record.wall_s:.1f} s, peak memory {record.peak_mem_mb:.0f} MiB")


def register(app: typer.Typer) -> None:
    """Attach ``ftscale finetune`` to ``app``."""
    app.command("finetune", help="Finetune a causal LM with one method and record the run.")(
        finetune_command
    )
