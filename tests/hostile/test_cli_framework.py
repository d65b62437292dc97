"""Usage errors of the command-line framework are one line too, whatever the command."""

from __future__ import annotations

import pytest

CASES = [
    ("unknown command", ["nosuch"], r"No such command 'nosuch'"),
    ("unknown option", ["fit", "x.csv", "--nosuch"], r"No such option: --nosuch"),
    ("int option given text", ["fit", "x.csv", "--bootstrap", "many"], r"'--bootstrap'"),
    ("missing argument", ["fit"], r"Missing argument"),
    ("option without value", ["fit", "x.csv", "--x"], r"--x"),
    ("negative bootstrap", ["fit", "x.csv", "--bootstrap", "-3"], r"'--bootstrap'"),
    ("group without command", ["ladder"], r"Missing command"),
    ("unknown sub-command", ["ladder", "nosuch"], r"No such command"),
    ("finetune int option given float", ["finetune", "--examples", "1.5"], r"'--examples'"),
]


@pytest.mark.parametrize(("name", "args", "match"), CASES, ids=[c[0] for c in CASES])
def test_usage_errors_are_one_line(hostile, name, args, match):
    hostile(args, match=match)


def test_sigterm_inside_a_finalizer_is_not_lost():
    """Python drops exceptions raised in ``__del__``; the CLI's SIGTERM handler raises again
    outside it, so a signal that lands in a finalizer still stops the command."""
    import os
    import signal
    import time

    from ftscale import cli
    from ftscale.errors import Interrupted

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + 0.2
            while time.monotonic() < deadline:  # the signal is handled here, inside __del__
                pass

    previous = signal.signal(signal.SIGTERM, cli._raise_interrupted)
    try:
        with pytest.raises(Interrupted) as caught:
            Finalized()  # collected at once: __del__ runs and swallows what it raises
            time.sleep(2)
        assert caught.value.exit_code == 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.setitimer(signal.ITIMER_REAL, 0)
