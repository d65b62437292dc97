"""``ftscale finetune``: one finetuning run from the command line, its record as one JSON line."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from ftscale.errors import UserError


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
    method: Annotated[
        str | None, typer.Option(help="fmt, lora, prompt, or any PEFT method name.")
    ] = None,
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
    rank: Annotated[int | None, typer.Option(help="LoRA rank.")] = None,
    prompt_length: Annotated[
        int | None, typer.Option(help="Prompt tuning: virtual tokens.")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-o", help="Method option KEY=VALUE (repeatable), e.g. alpha=16."),
    ] = None,
    examples: Annotated[
        int | None, typer.Option(help="D_f: training examples (default all).")
    ] = None,
    subset_seed: Annotated[int, typer.Option(help="Seed of the nested training subset.")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, order and dropout.")] = 0,
    max_steps: Annotated[
        int | None, typer.Option(help="Optimizer steps (default from epochs).")
    ] = None,
    epochs: Annotated[float, typer.Option(help="Epochs when --max-steps is not given.")] = 5.0,
    lr: Annotated[
        str | None,
        typer.Option(
            help="Peak learning rate, or 'auto' for a short search on dev (default per method)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Examples per optimizer step.")] = 16,
    optimizer: Annotated[str, typer.Option(help="adamw or adafactor.")] = "adamw",
    eval_every: Annotated[int | None, typer.Option(help="Steps between dev checks.")] = None,
    patience: Annotated[
        int, typer.Option(help="Dev checks without gain before stopping; 0 off.")
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
    max_source_tokens: Annotated[int, typer.Option(help="Source cap (tokens).")] = 256,
    max_target_tokens: Annotated[int, typer.Option(help="Target cap (tokens).")] = 256,
    dev_examples: Annotated[
        int | None, typer.Option(help="Dev pairs used per check (fixed sample; default all).")
    ] = None,
    gen_examples: Annotated[int, typer.Option(help="Test sources to generate for; 0 none.")] = 64,
    max_new_tokens: Annotated[int, typer.Option(help="Generation cap (tokens).")] = 64,
    bleu_tokenize: Annotated[str, typer.Option(help="sacrebleu tokenizer: 13a, zh, intl.")] = "13a",
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    gguf_file: Annotated[str | None, typer.Option(help="GGUF file inside --model.")] = None,
    output: Annotated[
        Path | None, typer.Option(help="Append the record as one JSON line to this file.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the record as JSON.")] = False,
) -> None:
    """Finetune one base model with one method; report test NLL per target token and more.

    The run is built from the flags (or read with --job) as a run spec; --print-job shows it.
    Exit 0 when the run finished, 1 when it failed (loss NaN/inf; the record says why), 2 for bad
    input.
    """
    from ftscale.common import usable_cores
    from ftscale.finetune.job import DataSource, FinetuneJob, run_job
    from ftscale.finetune.tasks import TaskConfig
    from ftscale.finetune.train import TrainConfig

    if job_file is not None:
        job = FinetuneJob.read(job_file)
    else:
        missing = [
            f"--{name}"
            for name, value in (
                ("model", model),
                ("method", method),
                ("train", train),
                ("dev", dev),
                ("test", test),
            )
            if value is None
        ]
        if missing:
            raise UserError(f"missing option {missing[0]} (or give a saved spec with --job)")
        options: dict[str, Any] = dict(_parse_option(text) for text in option or [])
        fields: dict[str, str] = {}
        for text in field or []:
            if "=" not in text:
                raise UserError(f"--field {text!r}: expected KEY=VALUE")
            key, value = text.split("=", 1)
            fields[key.strip()] = value
        columns = {"source_column": source_column, "target_column": target_column}
        job = FinetuneJob(
            model=model,
            revision=revision,
            gguf_file=gguf_file,
            method=_method(method, options, rank, prompt_length),
            train=DataSource(train, **columns),
            dev=DataSource(dev, **columns),
            test=DataSource(test, **columns),
            task=TaskConfig(
                template=template.replace("\\n", "\n"),
                fields=fields,
                max_source_tokens=max_source_tokens,
                max_target_tokens=max_target_tokens,
                bleu_tokenize=bleu_tokenize,
            ),
            train_config=TrainConfig(
                examples=examples,
                subset_seed=subset_seed,
                seed=seed,
                learning_rate=_learning_rate(lr),
                optimizer=optimizer,
                batch_size=batch_size,
                max_steps=max_steps,
                epochs=epochs,
                eval_every=eval_every,
                patience=patience or None,
                dev_examples=dev_examples,
                gen_examples=gen_examples,
                max_new_tokens=max_new_tokens,
                device=device,
                threads=threads if threads is not None else usable_cores(),
            ),
        )
    if print_job:
        typer.echo(json.dumps({"key": job.key, "job": job.to_dict()}, indent=1, sort_keys=True))
        return
    _quiet_library_logs()
    record = run_job(job)
    line = record.to_json()
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
    if as_json:
        typer.echo(line)
    else:
        _print_summary(record)
    if record.status != "ok":
        raise typer.Exit(1)


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


def _method(name: str, options: dict[str, Any], rank: int | None, prompt_length: int | None):
    """The method config from --method and its options; --rank/--prompt-length only where the
    method has that size."""
    from ftscale.finetune import make_method

    method = make_method(name, **options)
    if rank is not None and method.name != "lora":
        raise UserError(f"--rank applies to --method lora, not {name!r}")
    if prompt_length is not None and method.name != "prompt":
        raise UserError(f"--prompt-length applies to --method prompt, not {name!r}")
    sizes = {"rank": rank} if rank is not None else {}
    if prompt_length is not None:
        sizes["prompt_length"] = prompt_length
    return make_method(name, **options, **sizes) if sizes else method


def _quiet_library_logs() -> None:
    """Weight-loading bars and hub retry warnings say nothing about the run: silence them (the
    one-line error says what failed)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
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
    typer.echo(f"time: {record.wall_s:.1f} s, peak memory {record.peak_mem_mb:.0f} MiB")


def register(app: typer.Typer) -> None:
    """Attach ``ftscale finetune`` to ``app``."""
    app.command("finetune", help="Finetune a causal LM with one method and record the run.")(
        finetune_command
    )
