"""``ftscale data``: inspect tasks (built-in or user data) as JSONL pairs."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Attach the ``data`` sub-command group to ``app``."""
    sub = typer.Typer(help="Finetuning tasks: the built-in corpus and user data.")

    @sub.command("show")
    def show(
        spec: Annotated[
            str,
            typer.Argument(help="builtin:en-de, builtin:fr-de, a JSONL/CSV/Parquet file, hf:NAME."),
        ],
        split: Annotated[str, typer.Option(help="train, dev or test.")] = "train",
        limit: Annotated[int, typer.Option(help="Print at most N pairs (0: all).", min=0)] = 0,
        source: Annotated[str, typer.Option(help="Source column of user data.")] = "source",
        target: Annotated[str, typer.Option(help="Target column of user data.")] = "target",
        group: Annotated[
            str | None, typer.Option(help="Column of group ids kept within one split.")
        ] = None,
    ) -> None:
        """Print the pairs of one split as JSONL lines {"source": ..., "target": ...}."""
        from ftscale.data.tasks import load_task

        pairs = load_task(spec, split, source=source, target=target, group=group)
        if limit:
            pairs = pairs[:limit]
        for p in pairs:
            typer.echo(json.dumps({"source": p.source, "target": p.target}, ensure_ascii=False))

    app.add_typer(sub, name="data")
