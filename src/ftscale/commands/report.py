"""``ftscale report DIR``: the HTML report, Markdown summary and fits JSON of a study."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def report_command(
    directory: Annotated[Path, typer.Argument(help="Study directory.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Folder for the files (default DIR).")
    ] = None,
) -> None:
    """Analyse a study directory and write report.html, summary.md and fits.json."""
    from ftscale.study.reporting import write_report
    from ftscale.study.store import open_store

    open_store(directory).close()
    paths = write_report(directory, output)
    for path in paths.values():
        typer.echo(str(path))


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
