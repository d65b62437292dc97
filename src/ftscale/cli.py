"""The ``ftscale`` command: one entry point, one sub-command per job.

Sub-commands live in :mod:`ftscale.commands`, one module each, and are attached here. A
:class:`~ftscale.errors.UserError` raised anywhere below becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import click
import typer
from typer.core import TyperGroup

from ftscale.errors import UserError


class _Group(TyperGroup):
    """Typer group that turns :class:`UserError` from any sub-command into one line and exit 2.

    The line is ``ftscale: error: <message>`` on stderr. It exits through ``typer.Exit`` rather than
    a click exception: typer (0.29+) runs its own copy of click, whose handler does not catch the
    ``click`` package's exceptions, so those would escape with a traceback and exit code 1.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            typer.echo(f"ftscale: error: {message}", err=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=_Group,
    name="ftscale",
    help="Finetuning scaling laws: run sweeps, fit laws, choose a finetuning method.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Finetuning scaling laws: run sweeps, fit laws, choose a finetuning method."""


#: Modules of :mod:`ftscale.commands` attached to the app, each with a ``register(app)`` function.
COMMAND_MODULES: tuple[str, ...] = ("finetune",)


def _register() -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"ftscale.commands.{name}").register(app)


_register()


def main() -> None:
    """Console-script entry point for ``ftscale``."""
    app()
