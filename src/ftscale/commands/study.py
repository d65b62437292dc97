"""``ftscale study run|plan|status|export``: run a whole finetuning-scaling study from one file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ftscale.errors import UserError

YesOpt = Annotated[
    bool,
    typer.Option(
        "--yes", "-y", help="Go ahead although the plan's estimated cost is above the limit."
    ),
]
FileArg = Annotated[
    str | None,
    typer.Argument(help="Study file (TOML) or builtin:NAME; default builtin:quickstart."),
]
DirArg = Annotated[Path, typer.Argument(help="Study directory (written by `ftscale study run`).")]

study_app = typer.Typer(
    help="Run a finetuning-scaling study: plan, run (resumable), status, export.",
    no_args_is_help=True,
)


def _err(message: str) -> None:
    typer.echo(message, err=True)


@study_app.command("run")
def run_command(
    file: FileArg = None,
    *,
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Study directory (default beside the file).")
    ] = None,
    executor: Annotated[
        str | None, typer.Option(help="local, process or ray (default: the file's [run]).")
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (ray executor; 'auto' = running).")
    ] = None,
    workers: Annotated[int | None, typer.Option(min=0, help="Worker processes (0: auto).")] = None,
    threads: Annotated[
        int | None, typer.Option(min=0, help="Torch threads per run (0: auto).")
    ] = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Run failed runs again.")
    ] = False,
    cache: Annotated[
        Path | None, typer.Option(help="Model cache (default $FTSCALE_CACHE or ~/.cache).")
    ] = None,
    pack: Annotated[
        str | None,
        typer.Option(
            help="Runs trained as one computation: a number (1: one at a time), or auto (1 on "
            "a CPU, 8 on a GPU); default: the file's [run] pack."
        ),
    ] = None,
    no_report: Annotated[bool, typer.Option("--no-report", help="Skip the report.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    yes: YesOpt = False,
) -> None:
    """Run a study (resumable: finished runs are skipped); prints the study directory last.
    The whole study is checked first: nothing is written when a check fails."""
    from ftscale.study.config import DEFAULT_STUDY, load_study
    from ftscale.study.runner import run_study

    members = _pack_option(pack)
    study = load_study(file or DEFAULT_STUDY)
    name = executor or study.config.run.executor
    if address and name != "ray":
        raise UserError("--address is for the ray executor (add --executor ray)")
    options = _executor_options(study.config.run, workers, threads, address)
    summary = run_study(
        study,
        directory if directory is not None else study.default_dir(),
        executor=name,
        options=options,
        retry_failed=retry_failed,
        cache=cache,
        say=(lambda m: None) if quiet else _err,
        progress="none" if quiet else "auto",
        report=not no_report,
        pack=members,
        yes=yes,
    )
    if not quiet:
        _say_summary(summary)
    typer.echo(str(summary.study_dir))


def _say_summary(summary) -> None:
    _err(
        f"{summary.ran} runs done now ({summary.ok} ok, {summary.failed} failed), "
        f"{summary.skipped} were already in the store; {summary.wall_s:.0f} s"
    )
    if summary.report:
        _err(f"report: {summary.report['html']}")


def _pack_option(text: str | None) -> int | str | None:
    """``--pack``: ``auto`` or a whole number from 1 to 256."""
    if text is None or text.strip().lower() == "auto":
        return None if text is None else "auto"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 256:
        raise UserError(f"--pack {text!r}: expected auto or a whole number from 1 to 256")
    return value


def _executor_options(run, workers: int | None, threads: int | None, address: str | None):
    """The study file's ``[run]`` table with the command line's overrides."""
    from ftscale.study.executors import ExecutorOptions

    return ExecutorOptions(
        workers=run.workers if workers is None else workers,
        threads=run.threads if threads is None else threads,
        address=address,
        num_cpus=run.num_cpus,
        num_gpus=run.num_gpus,
    )


@study_app.command("plan")
def plan_command(
    file: FileArg = None,
    *,
    directory: Annotated[Path | None, typer.Option("--dir", help="Study directory.")] = None,
    cache: Annotated[Path | None, typer.Option(help="Model cache.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    yes: YesOpt = False,
) -> None:
    """Print the runs a study file plans and a rough cost; writes nothing, needs no network.
    The whole study is checked as `study run` checks it."""
    from ftscale.common import default_workers, threads_per_worker
    from ftscale.study.config import DEFAULT_STUDY, load_study
    from ftscale.study.plan import estimate_seconds, estimate_total
    from ftscale.study.validate import preflight

    study = load_study(file or DEFAULT_STUDY)
    target = directory if directory is not None else study.default_dir()
    workers = study.config.run.workers or default_workers(64, threads_per_worker())
    checked = preflight(
        study, target, cache=cache, executor=study.config.run.executor, workers=workers, yes=yes
    )
    plan = checked.plan
    workers = study.config.run.workers or default_workers(len(plan), threads_per_worker())
    total = estimate_total(plan, workers)
    rows = [
        {
            **r.meta(),
            "learning_rate": r.job.train_config.learning_rate,
            "estimate_s": estimate_seconds(r),
            "key": r.key if plan.data_ready else None,
        }
        for r in plan.runs
    ]
    if json_out:
        document = {
            "study": study.name,
            "dir": str(target),
            "runs": rows,
            "estimate_s": total,
            "workers": workers,
        }
        typer.echo(json.dumps(document, indent=1))
        return
    _render_plan(study.name, rows)
    typer.echo(f"{len(rows)} runs; {_cost(total, workers)}; results would go to {target}")


def _render_plan(name: str, rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"study {name}: {len(rows)} runs")
    for column in ("method", "rung", "tokens", "params", "size", "D_f", "seed", "sweeps", "lr"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["method"],
            r["rung"],
            _n(r["tokens_seen"]),
            _n(r["nonembedding_params"]),
            _n(r["method_size"]),
            str(r["examples"]),
            str(r["subset_seed"]),
            ",".join(r["sweeps"]),
            _n(r["learning_rate"]) if r["learning_rate"] is not None else "default",
        )
    Console().print(table)


def _cost(total: float | None, workers: int) -> str:
    if total is None:
        return (
            "cost unknown until the base models' sizes are known (build the ladder or give [sizes])"
        )
    shown = f"{total / 60:.1f} min" if total < 7200 else f"{total / 3600:,.0f} h"
    return (
        f"about {shown} of runs on {workers} CPU worker(s) (rough estimate for this "
        "machine's CPU; ladder build and lr searches not included)"
    )


def _n(value) -> str:
    if value is None:
        return "?"
    return (
        f"{value:,}"
        if isinstance(value, int)
        else f"{value:g}"
        if isinstance(value, float)
        else str(value)
    )


@study_app.command("status")
def status_command(
    directory: DirArg,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Progress of a study directory: runs per status, failed runs, learning-rate searches."""
    from ftscale.study.runner import status

    info = status(directory)
    if json_out:
        typer.echo(json.dumps(info, indent=1))
        return
    c = info["counts"]
    typer.echo(
        f"study {info['study']} in {info['dir']}: {info['planned']} runs planned; "
        f"{c['ok']} ok, {c['failed']} failed, {c['running']} running, "
        f"{c['pending']} pending; {info['run_seconds']:.0f} s of runs"
    )
    for f in info["failed"]:
        typer.echo(
            f"  failed {f['key']} {f['method']} {f['rung']} D_f={f['examples']}: {f['error']}"
        )
    for s in info["lr_searches"]:
        typer.echo(f"  lr search {s['group']}: {s['learning_rate']:g}")
    typer.echo("complete" if info["complete"] else "incomplete: `ftscale study run` resumes it")


@study_app.command("export")
def export_command(
    directory: DirArg,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="CSV or Parquet file (default DIR/runs.csv)."),
    ] = None,
) -> None:
    """Write the runs as CSV or Parquet with the columns `ftscale fit` takes by default."""
    from ftscale.study.runner import check_export_path, export_table
    from ftscale.study.store import open_store

    if output is not None:
        check_export_path(output)
    open_store(directory).close()  # a one-line error before choosing the default output
    out = output if output is not None else Path(directory) / "runs.csv"
    n = export_table(directory, out)
    typer.echo(f"{n} runs -> {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(study_app, name="study")
