"""``ftscale recommend DIR --model-size N --examples D``: which finetuning method to use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def recommend_command(
    directory: Annotated[Path, typer.Argument(help="Study directory.")],
    model_size: Annotated[
        float, typer.Option("--model-size", help="Base model size N (non-embedding parameters).")
    ],
    examples: Annotated[float, typer.Option(help="Finetuning examples D_f you have.")],
    target_loss: Annotated[
        float | None, typer.Option("--target-loss", help="Test NLL (nats/token) to reach.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Predicted loss of each method at (N, D_f), the critical sizes around it, the best method;
    with --target-loss, the examples and training time each method needs."""
    from ftscale.study.recommend import recommend, render

    result = recommend(directory, model_size, examples, target_loss)
    typer.echo(json.dumps(result, indent=1) if json_out else render(result))


def register(app: typer.Typer) -> None:
    app.command("recommend")(recommend_command)
