"""The ``ftscale`` command: one entry point, one sub-command per job.

Sub-commands live in :mod:`ftscale.commands`, one module each, and are attached here. Every user
mistake ends the same way: one line ``ftscale: error: ...`` on stderr and exit code 2, whether it is
a :class:`~ftscale.errors.UserError` raised anywhere below or a usage error of the command-line
framework (unknown option, value of the wrong type). SIGINT and SIGTERM both unwind the command
(so its clean-up runs), print one line and exit 130 / 143.
"""

from __future__ import annotations

import signal
import sys

import typer
from typer.core import TyperGroup

from ftscale.common import first_line
from ftscale.errors import Interrupted, UserError

#: Exit code for user mistakes (bad file, column, option value), as for click's usage errors.
USER_ERROR_EXIT = 2


def _say(message: str) -> None:
    typer.echo(f"ftscale: {message}", err=True)


class _Group(TyperGroup):
    """Typer group with ftscale's one-line endings (see the module docs)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            _say(f"error: {first_line(exc)}")
            raise typer.Exit(USER_ERROR_EXIT) from None
        except KeyboardInterrupt as exc:
            what = str(exc) if isinstance(exc, Interrupted) and str(exc) else "nothing written"
            code = exc.exit_code if isinstance(exc, Interrupted) else 130
            _say(f"interrupted; {what}")
            raise typer.Exit(code) from None

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        from typer import core as typer_core
        from typer._click import exceptions as click_exceptions

        previous = signal.signal(signal.SIGTERM, _raise_interrupted)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click_exceptions.NoArgsIsHelpError as exc:  # bare `ftscale` or a bare group
            typer.echo(exc.ctx.get_help() if exc.ctx else "")
            sys.exit(exc.exit_code)
        except click_exceptions.ClickException as exc:  # usage errors: one line, not a box
            _say(f"error: {exc.format_message().strip().splitlines()[0]}")
            sys.exit(exc.exit_code)
        except typer_core.Abort:
            _say("interrupted; nothing written")
            sys.exit(130)
        finally:
            signal.signal(signal.SIGTERM, previous)
        sys.exit(code if isinstance(code, int) else 0)


#: Seconds before a signal that landed inside a finalizer is raised again (see below).
_RETRY_S = 0.05


def _raise_interrupted(signum, frame) -> None:
    """SIGTERM handler: unwind like Ctrl-C, so ``finally`` blocks and temporary clean-up run.

    Python ignores an exception raised while a finalizer (``__del__``) runs, so a signal landing
    there would be lost and the command would run on: the handler then re-arms itself through
    SIGALRM a moment later, outside the finalizer."""
    if _in_finalizer(frame):
        signal.signal(signal.SIGALRM, lambda _s, f: _raise_interrupted(signum, f))
        signal.setitimer(signal.ITIMER_REAL, _RETRY_S)
        return
    raise Interrupted(exit_code=128 + signum)


def _in_finalizer(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


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
COMMAND_MODULES: tuple[str, ...] = (
    "laws", "finetune", "ladder", "data", "study", "recommend", "report",
)


def _register() -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"ftscale.commands.{name}").register(app)


_register()


def main() -> None:
    """Console-script entry point for ``ftscale``."""
    app()
