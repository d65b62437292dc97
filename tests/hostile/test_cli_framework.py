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
