"""The ``ftscale`` command: one entry point, one sub-command per job.

Sub-commands live in :mod:`ftscale.commands`, one module each, and are attached here. A
:class:`~ftscale.errors.UserError` raised anywhere below becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from ftscale.errors import UserError

#: Exit code for user mistakes (bad file, column, option value), as for click's usage errors.
USER_ERROR_EXIT = 2


class _Group(TyperGroup):
    """Typer group that turns a :class:`UserError` from any sub-command into one line and exit 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            typer.echo(f"ftscale: error: {message}", err=True)
            raise typer.Exit(USER_ERROR_EXIT) from None


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
COMMAND_MODULES: tuple[str, ...] = ("laws", "finetune", "ladder", "data")


def _register() -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"ftscale.commands.{name}").register(app)


_register()


def main() -> None:
    """Console-script entry point for ``ftscale``."""
    app()
