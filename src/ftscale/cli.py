"""The ``ftscale`` command: one entry point, one sub-command per job.

Sub-commands live in :mod:`ftscale.commands`, one module each, and are attached here. A
:class:`~ftscale.errors.UserError` raised anywhere below becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import click
import typer
from typer.core import TyperGroup

from ftscale.errors import UserError


class _UserFacingError(click.ClickException):
    """A user mistake as click shows it: ``ftscale: error: <message>``, exit code 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"ftscale: error: {self.format_message()}", err=True, file=file)


class _Group(TyperGroup):
    """Typer group that converts :class:`UserError` from any sub-command into a clean exit."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            # Printed here and ended with typer.Exit: typer >= 0.26 vendors click and neither
            # catches click.ClickException nor calls its show(), so a raised _UserFacingError
            # would surface as a traceback or a boxed rich message.
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            _UserFacingError(first).show()
            raise typer.Exit(_UserFacingError.exit_code) from None


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
COMMAND_MODULES: tuple[str, ...] = ("ladder", "data")


def _register() -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"ftscale.commands.{name}").register(app)


_register()


def main() -> None:
    """Console-script entry point for ``ftscale``."""
    app()
