"""``ftscale finetune``: one finetuning run from the command line, its record as one JSON line.

Options -> one :class:`~ftscale.finetune.spec.FinetuneJob` -> :func:`~ftscale.finetune.recipe.
run_job` -> render. The training options are generated from the settings schema
(:class:`~ftscale.finetune.spec.TrainConfig`: its defaults, ranges and help); the job, method,
task and output options are the tables below. Every input and output location is checked before
the model loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

from ftscale.commands.options import Option, command, in_panel, schema_options
from ftscale.errors import UserError
from ftscale.finetune.methods import method_help
from ftscale.finetune.spec import TASK_DEFAULTS, TrainConfig, setting_flag

#: Exit status when the run finished but its record could not be appended to --output (the record
#: is printed on stdout instead).
RECORD_NOT_SAVED_EXIT = 3

JOB_OPTIONS = (
    Option("model", str | None, None, "Base model: local directory, .gguf file or hub id."),
    Option("method", str | None, None, method_help() + "."),
    Option("train", str | None, None, "Training pairs (JSONL/CSV/Parquet: source, target)."),
    Option("dev", str | None, None, "Dev pairs: pick the best state by dev NLL."),
    Option("test", str | None, None, "Test pairs: NLL per target token, generation."),
    Option(
        "job_file",
        Path | None,
        None,
        "Run a saved run spec (JSON from --print-job) instead of flags.",
        ("--job",),
    ),
    Option("print_job", bool, False, "Print the run spec and its key; do not run."),
    Option("revision", str | None, None, "Hub revision (branch, tag, commit) of --model."),
    Option("gguf_file", str | None, None, "GGUF file inside --model."),
    Option("rank", int | None, None, "Rank of LoRA-like methods (lora, dora, loha, ...).", min=1),
    Option(
        "prompt_length",
        int | None,
        None,
        "Virtual tokens of prompt-like methods (prompt, prefix_tuning, p_tuning).",
        min=1,
    ),
    Option(
        "option",
        list[str] | None,
        None,
        "Method option KEY=VALUE (repeatable), e.g. alpha=16.",
        ("--option", "-o"),
    ),
)
TASK_OPTIONS = (
    Option(
        "template",
        str,
        TASK_DEFAULTS.template,
        "Prompt template with {src}; a typed \\n means a newline.",
    ),
    Option(
        "field", list[str] | None, None, "Template field KEY=VALUE (repeatable), e.g. lang=German."
    ),
    Option("source_column", str, "source", "Source column / JSON key."),
    Option("target_column", str, "target", "Target column / JSON key."),
    Option(
        "max_source_tokens", int, TASK_DEFAULTS.max_source_tokens, "Source cap (tokens).", min=1
    ),
    Option(
        "max_target_tokens", int, TASK_DEFAULTS.max_target_tokens, "Target cap (tokens).", min=1
    ),
    Option(
        "bleu_tokenize", str, TASK_DEFAULTS.bleu_tokenize, "sacrebleu tokenizer: 13a, zh, intl."
    ),
    Option(
        "eval_set",
        list[str] | None,
        None,
        "Extra eval set NAME=SOURCE (repeatable), e.g. fr-de=builtin:fr-de; scored before and "
        "after training.",
        ("--eval",),
    ),
    Option("shots", int, 0, "Demonstrations in each --eval prompt (0: zero-shot).", min=0),
)
OUTPUT_OPTIONS = (
    Option("output", Path | None, None, "Append the record as one JSON line to this file."),
    Option("as_json", bool, False, "Print the record as JSON.", ("--json",)),
    Option("quiet", bool, False, "No progress or warnings on stderr.", ("--quiet", "-q")),
)
#: The training options: one per setting of the schema, under its short name (``--lr``).
SETTING_OPTIONS = schema_options(
    TrainConfig,
    flag=setting_flag,
    helps={"threads": "CPU threads (default: all usable cores)."},
    panel="Training (the settings schema: ftscale.finetune.spec.TrainConfig)",
    switches="Training switches",
)


def _finetune(**options: Any) -> None:
    """Finetune one base model with one method; report test NLL per target token and more.

    The run is built from the flags (or read with --job) as a run spec; --print-job shows it.
    Exit 0 when the run finished, 1 when it failed (loss NaN/inf or out of memory; the record
    says why), 2 for bad input (nothing run or written), 3 when the run finished but its record
    could not be appended to --output (the record is printed instead).
    """
    from ftscale.finetune.spec import FinetuneJob

    output = options["output"]
    if output is not None:
        check_output(output)
    job_file = options["job_file"]
    job = FinetuneJob.read(job_file) if job_file is not None else job_from_options(options)
    if options["print_job"]:
        typer.echo(job.printed())
        return
    record = _run(job, options["quiet"])
    line = record.to_json()
    saved = _append(output, line) if output is not None else None
    if options["as_json"] or saved is False:
        typer.echo(line)
    else:
        _print_summary(record)
    if saved is False:
        raise typer.Exit(RECORD_NOT_SAVED_EXIT)
    if record.status != "ok":
        raise typer.Exit(1)


finetune_command = command(
    _finetune,
    in_panel("Run", JOB_OPTIONS),
    in_panel("Task and eval sets", TASK_OPTIONS),
    SETTING_OPTIONS,
    in_panel("Output", OUTPUT_OPTIONS),
)


def _run(job, quiet: bool):
    """The job's record, with quiet libraries and progress on stderr."""
    from ftscale.finetune.progress import make_progress
    from ftscale.finetune.recipe import run_job

    _quiet_library_logs()
    record = run_job(job, progress=make_progress(quiet))
    if not quiet:
        _warn(record)
    return record


def job_from_options(options: dict[str, Any]):
    """The run spec from the command's options (a one-line error naming the flag at fault)."""
    from ftscale.finetune.spec import DataSource, EvalSet, FinetuneJob, TaskConfig

    required = ("model", "method", "train", "dev", "test")
    missing = [f"--{name}" for name in required if options[name] is None]
    if missing:
        raise UserError(f"missing option {missing[0]} (or give a saved spec with --job)")
    columns = {"source_column": options["source_column"], "target_column": options["target_column"]}
    task = TaskConfig(
        template=options["template"].replace("\\n", "\n"),
        fields=_fields(options["field"]),
        max_source_tokens=options["max_source_tokens"],
        max_target_tokens=options["max_target_tokens"],
        bleu_tokenize=options["bleu_tokenize"],
    )
    evals = tuple(EvalSet.parse(text, **columns) for text in options["eval_set"] or [])
    if options["shots"] and not evals:
        raise UserError("--shots applies to --eval sets; none given")
    return FinetuneJob(
        model=options["model"],
        revision=options["revision"],
        gguf_file=options["gguf_file"],
        method=_method(options),
        train=DataSource(options["train"], **columns),
        dev=DataSource(options["dev"], **columns),
        test=DataSource(options["test"], **columns),
        task=task,
        train_config=_settings(options),
        evals=evals,
        shots=options["shots"],
    )


def _settings(options: dict[str, Any]) -> TrainConfig:
    """The training settings from their options; threads default to every usable core."""
    from ftscale.common import usable_cores

    values = {name: options[setting_flag(name)] for name in TrainConfig.model_fields}
    if values["threads"] is None:
        values["threads"] = usable_cores()
    return TrainConfig.from_dict(
        values, where=lambda name: "--" + setting_flag(name).replace("_", "-")
    )


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


def _method(options: dict[str, Any]):
    """The method config from --method, --option and the size flags (--rank for LoRA-like
    methods, --prompt-length for prompt-like ones), all resolved by the method registry."""
    from ftscale.finetune.methods import make_method, size_option

    chosen: dict[str, Any] = dict(_parse_option(text) for text in options["option"] or [])
    for flag, value in (("rank", options["rank"]), ("prompt-length", options["prompt_length"])):
        if value is not None:
            chosen.update(size_option(options["method"], flag, value))
    return make_method(options["method"], **chosen)


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
