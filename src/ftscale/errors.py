"""Errors that mean "the user asked for something wrong", as opposed to a bug in ftscale.

Library code raises :class:`UserError` (or a subclass) with a one-line message that names the file,
field or value at fault. The command line turns it into that single line on stderr and exit code 2,
with no traceback. Everything else is a bug and keeps its traceback.

This module imports nothing heavy so every layer (``laws`` included) can use it.
"""


class UserError(ValueError):
    """Bad input from the user: a missing file, an unknown column, an impossible option.

    The message is one line and names what is wrong, e.g.
    ``runs.csv: column 'loss' not found (columns: model, examples, test_nll)``.
    """


class DataError(UserError):
    """The data cannot support what was asked (too few points, NaN losses, one distinct size)."""


class Interrupted(KeyboardInterrupt):
    """The command was interrupted (Ctrl-C or SIGTERM). Raised by the CLI's SIGTERM handler so
    that clean-up runs as for Ctrl-C; a command that kept something re-raises it with a message
    saying what (``Interrupted("12 of 48 runs are in the store; rerun to resume")``)."""

    def __init__(self, message: str = "", exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code
