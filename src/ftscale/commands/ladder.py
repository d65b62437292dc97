"""``ftscale ladder``: build (or reuse) a base-model ladder, and list its checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

#: Where the cache is when ``--cache`` is not given (as :func:`ftscale.models.ladder.cache_root`).
CACHE_DEFAULT = "default: $FTSCALE_CACHE, else $XDG_CACHE_HOME/ftscale, else ~/.cache/ftscale"
CACHE_HELP = f"Cache root ({CACHE_DEFAULT})."


ladder_app = typer.Typer(
    help="Base-model ladders: build tiny pretrained LMs or list external ones."
)


@ladder_app.command("build")
def build_command(
    file: Annotated[Path, typer.Argument(help="Ladder TOML file.")],
    *,
    cache: Annotated[Path | None, typer.Option(help=CACHE_HELP)] = None,
    threads: Annotated[
        int,
        typer.Option(help="torch threads per rung process (0: the config's, else auto).", min=0),
    ] = 0,
    workers: Annotated[
        int,
        typer.Option(
            help="Rungs pretrained at once in separate processes (0: the config's, else auto).",
            min=0,
        ),
    ] = 0,
    force: Annotated[bool, typer.Option(help="Rebuild even if cached.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Build the ladder in FILE (or reuse the cached one) and print its directory."""
    from ftscale.models.ladder import build_ladder, ladder_summary, load_config

    config = load_config(file)
    path, reused = build_ladder(
        config,
        cache,
        threads=threads or None,
        workers=workers or None,
        progress=not quiet,
        force=force,
    )
    summary = ladder_summary(path)
    if reused:
        typer.echo(f"reused cached ladder {config.name}", err=True)
    else:
        typer.echo(f"built ladder {config.name} in {summary['build_wall_s']:.0f} s", err=True)
        for name, rung in summary.get("rungs", {}).items():
            if "val_loss" in rung:
                typer.echo(
                    f"  {name}: val loss {rung['val_loss']:.3f}, "
                    f"{rung['tokens_per_s']:,.0f} tokens/s",
                    err=True,
                )
    typer.echo(str(path))


@ladder_app.command("show")
def show_command(
    path: Annotated[Path, typer.Argument(help="Ladder directory, or a ladder TOML file.")],
    *,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, not a table.")] = False,
    cache: Annotated[
        Path | None, typer.Option(help="Cache root for a TOML file; " + CACHE_DEFAULT + ".")
    ] = None,
) -> None:
    """List every checkpoint: rung, tokens_seen, total_params, nonembedding_params,
    train_loss, val_loss, path."""
    from ftscale.models.ladder_config import SHOW_COLUMNS, read_ladder

    rows = [{k: row.get(k) for k in SHOW_COLUMNS} for row in read_ladder(path, cache)]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*SHOW_COLUMNS)
    for row in rows:
        table.add_row(*[_fmt(row[k]) for k in SHOW_COLUMNS])
    Console(width=200).print(table)


def register(app: typer.Typer) -> None:
    """Attach the ``ladder`` sub-command group to ``app``."""
    app.add_typer(ladder_app, name="ladder")


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
