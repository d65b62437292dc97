"""Hostile input to `ftscale fit` and `ftscale critical`: one line, exit 2, nothing written.

Every case here is refused before any fit is made (except where the name says a fit is needed), so
the whole table runs in a few seconds.
"""

from __future__ import annotations

import json
import os

import pytest

RUNS = "method,params,examples,test_nll,note\n" + "".join(
    f"{m},{p},{e},{3.0 + k / p * 1e6 - 0.1 * i:.4f},n{i}\n"
    for k, m in enumerate(("fmt", "lora"))
    for p in (1e6, 4e6, 1.6e7)
    for i, e in enumerate((100, 300, 1000, 3000))
)
SAVED = json.dumps(
    {
        "fits": [
            {
                "form": "power",
                "group": g,
                "space": "log",
                "params": {"A": a, "beta": 0.2, "E": 1.0},
                "variables": {"d": "examples"},
                "points": [],
            }
            for g, a in (("fmt", 5.0), ("lora", 2.0))
        ]
    }
)


def _two_forms(ensemble=None, selection=None) -> str:
    """Saved fits of two forms per group, with an ``ensemble`` record (changed by the caller)
    and optionally a ``selection`` record."""
    fits = [
        {
            "form": form,
            "group": g,
            "space": "log",
            "params": params,
            "variables": {"d": "examples"},
            "points": [],
        }
        for g in ("fmt", "lora")
        for form, params in (
            ("power", {"A": 5.0, "beta": 0.2, "E": 1.0}),
            ("rectified", {"B": 5.0, "D_l": 2.0, "beta": 0.2, "E": 1.0}),
        )
    ]
    record = {"group": "fmt", "weights": {"power": 0.6, "rectified": 0.4}, "used": "ensemble"}
    document = {"fits": fits, "ensemble": [{**record, **(ensemble or {})}]}
    if selection is not None:
        document["selection"] = [selection]
    return json.dumps(document)


FILES = {
    "runs": ("runs.csv", RUNS),
    "abc": ("abc.csv", RUNS.replace("fmt,1000000.0,300,", "fmt,1000000.0,abc,")),
    "comma": ("comma.csv", 'method,examples,test_nll\nfmt,100,"1,000"\nfmt,200,2.5\nfmt,400,2.4\n'),
    "flat": ("flat.csv", "examples,test_nll\n100,3.1\n300,3.0\n1000,2.9\n3000,2.85\n"),
    "empty": ("empty.csv", ""),
    "saved": ("saved.json", SAVED),
    "nofits": ("nofits.json", '{"fits": []}'),
    "notobj": ("notobj.json", '{"fits": [1]}'),
    "missing_field": ("missing.json", '{"fits": [{"form": "power"}]}'),
    "badform_saved": ("badform.json", SAVED.replace('"power"', '"quartic"')),
    "bytes": ("bytes.json", b'\xff\xfe{"fits": 1}'),
    "badjson": ("bad.json", "{not json"),
    "ints": ("ints.json", "[1, 2, 3]"),
    "scalar": ("scalar.json", "3"),
    "badlines": ("lines.json", '{"examples": 1, "test_nll": 2}\n[1, 2]\n'),
    "object": ("object.json", '{\n "examples": [1, 2],\n "test_nll": [3, 2]\n}\n'),
    "ens_unknown_form": ("ens1.json", _two_forms({"weights": {"power": 0.6, "quartic": 0.4}})),
    "ens_weights_sum": ("ens2.json", _two_forms({"weights": {"power": 0.6, "rectified": 0.6}})),
    "ens_negative": ("ens3.json", _two_forms({"weights": {"power": 1.5, "rectified": -0.5}})),
    "ens_weight_text": ("ens4.json", _two_forms({"weights": {"power": "most", "rectified": 0}})),
    "ens_used": ("ens5.json", _two_forms({"used": "quartic"})),
    "ens_group": ("ens6.json", _two_forms({"group": "dora"})),
    "ens_no_weights": ("ens7.json", _two_forms({"weights": None})),
    "ens_not_list": ("ens8.json", json.dumps({**json.loads(_two_forms()), "ensemble": 3})),
    "ens_not_object": ("ens9.json", json.dumps({**json.loads(_two_forms()), "ensemble": [3]})),
    "sel_direction": (
        "sel.json",
        _two_forms(selection={"group": "fmt", "axis": "examples", "direction": "sideways"}),
    ),
    "sel_no_axis": ("sel2.json", _two_forms(selection={"group": "fmt", "direction": "max"})),
    "syntax": ("syntax.py", "def f(:\n"),
    "raises": ("raises.py", "raise RuntimeError('boom')\n"),
    "notform": ("notform.py", "NUM = 3\n"),
}


@pytest.fixture
def files(hostile):
    for name, (filename, content) in FILES.items():
        hostile.file(name, content, filename)
    hostile.folder("outdir")
    return hostile


FIT = ["fit", "{runs}", "--x", "params"]
CRIT = ["critical", "{runs}", "--x", "params"]
CASES = [
    # Text where numbers belong, and the loss naming a text column.
    ("text in a size column", ["fit", "{abc}"], r"'examples' .*numbers, got 'abc' at row 2"),
    ("thousands separator", ["fit", "{comma}"], r"'test_nll' .*numbers, got '1,000' at row 1"),
    ("y is a text column", [*FIT, "--y", "note"], r"'note' must hold numbers, got 'n0' at row 1"),
    ("critical: y is a text column", [*CRIT, "--y", "method"], r"'method' must hold numbers"),
    # The default prediction names a known choice; saved fits cannot change it.
    ("prediction unknown", [*FIT, "--prediction", "quartic"], r"--prediction 'quartic': expected"),
    ("prediction empty", [*FIT, "--prediction", ""], r"--prediction '': expected one of auto"),
    ("critical prediction unknown", [*CRIT, "--prediction", "best"], r"--prediction 'best'"),
    (
        "prediction on saved fits",
        ["critical", "{saved}", "--prediction", "ensemble"],
        r"--prediction would be ignored",
    ),
    # Bootstrap and seed refused up front, the option named.
    ("negative seed", [*FIT, "--seed", "-1", "--bootstrap", "4"], r"--seed must be 0 or more"),
    ("absurd bootstrap", [*FIT, "--bootstrap", "1000000000000"], r"--bootstrap must be between"),
    ("bootstrap over the cap", [*FIT, "--bootstrap", "100001"], r"at most|between 1 and 100,000"),
    ("critical absurd bootstrap", [*CRIT, "--bootstrap", "1000000000000"], r"--bootstrap"),
    ("critical negative seed", [*CRIT, "--bootstrap", "3", "--seed", "-2"], r"--seed"),
    # Saved fits that cannot be read.
    ("saved fit with no fits", ["critical", "{nofits}"], r"holds no fits"),
    ("saved fit not UTF-8", ["critical", "{bytes}"], r"not UTF-8"),
    ("saved fit record not an object", ["critical", "{notobj}"], r"fit 1 is not a JSON object"),
    ("saved fit missing a field", ["critical", "{missing_field}"], r"fit 1: saved fit is missing"),
    ("saved fit of an unknown form", ["critical", "{badform_saved}"], r"unknown law form"),
    ("not JSON at all", ["critical", "{badjson}"], r"not valid JSON"),
    ("JSON array of numbers", ["critical", "{ints}"], r"record 1 of the JSON array is a number"),
    ("JSON scalar", ["critical", "{scalar}"], r"expected saved fits or a table"),
    ("JSON lines with an array line", ["critical", "{badlines}"], r"line 2|row 2"),
    ("JSON object, not saved fits", ["fit", "{object}"], r"got an object without 'fits'"),
    ("fit given a saved fit", ["fit", "{saved}"], r"holds saved fits"),
    # Saved ensembles (a group's combined forms and its default prediction) rebuilt or refused.
    (
        "saved ensemble of an unfitted form",
        ["critical", "{ens_unknown_form}"],
        r"ensemble 1: .*'quartic' names no fitted form",
    ),
    (
        "saved ensemble weights over 1",
        ["critical", "{ens_weights_sum}"],
        r"ensemble 1: .*summing to 1",
    ),
    ("saved ensemble negative weight", ["critical", "{ens_negative}"], r"0 or more, summing to 1"),
    (
        "saved ensemble weight as text",
        ["critical", "{ens_weight_text}"],
        r"ensemble 1: saved ensemble has a malformed record",
    ),
    (
        "saved ensemble default unknown",
        ["critical", "{ens_used}"],
        r"default prediction 'quartic' names no fitted form",
    ),
    ("saved ensemble of no group", ["critical", "{ens_group}"], r"group 'dora' has no two fits"),
    (
        "saved ensemble without weights",
        ["critical", "{ens_no_weights}"],
        r"ensemble 1: saved ensemble has a malformed record",
    ),
    ("saved ensembles not a list", ["critical", "{ens_not_list}"], r"'ensemble' is not a list"),
    (
        "saved ensemble not an object",
        ["critical", "{ens_not_object}"],
        r"ensemble 1 is not a JSON object",
    ),
    (
        "saved selection direction",
        ["critical", "{sel_direction}"],
        r"selection 1: .*direction 'sideways'",
    ),
    (
        "saved selection without axis",
        ["critical", "{sel_no_axis}"],
        r"selection 1: .*missing field 'axis'",
    ),
    # Saved fits refuse the options they would ignore.
    ("saved fit with --x", ["critical", "{saved}", "--x", "params"], r"--x would be ignored"),
    ("saved fit with --bootstrap", ["critical", "{saved}", "--bootstrap", "5"], r"--bootstrap"),
    ("saved fit with --holdout", ["critical", "{saved}", "--holdout", "max:d"], r"--holdout"),
    ("saved fit with --group", ["critical", "{saved}", "--group", "method"], r"--group"),
    # critical's numbers.
    ("d-max infinite", [*CRIT, "--d-max", "inf"], r"--d-min/--d-max must be finite"),
    ("d-max nan", [*CRIT, "--d-max", "nan"], r"must be finite"),
    ("d-min zero", [*CRIT, "--d-min", "0"], r"0 < min < max"),
    ("at negative", [*CRIT, "--at", "-5"], r"--at must be a positive, finite size, got -5"),
    ("at zero", [*CRIT, "--at", "0"], r"--at must be a positive"),
    ("at nan", [*CRIT, "--at", "nan"], r"--at must be a positive"),
    ("at inf", [*CRIT, "--at", "inf"], r"--at must be a positive"),
    # One column in two roles.
    ("x equals d", ["fit", "{runs}", "--x", "examples"], r"--x and --d name the same column"),
    ("critical x equals d", ["critical", "{runs}", "--x", "examples"], r"same column"),
    ("y equals d", ["fit", "{runs}", "--y", "examples"], r"--y and --d name the same column"),
    ("y equals x", [*FIT, "--y", "params"], r"--y and --x name the same column"),
    ("critical y equals d", [*CRIT, "--y", "examples"], r"--y and --d"),
    # Output locations, checked before any work.
    ("save names a folder", [*FIT, "--save", "{outdir}"], r"--save .*is a folder"),
    ("plot names a folder", [*FIT, "--plot", "{outdir}"], r"--plot .*is a folder"),
    (
        "writable plot, unwritable save",
        [*FIT, "--plot", "{tmp}/ok.png", "--save", "{tmp}/no/such/fits.json"],
        r"--save .*does not exist",
    ),
    ("plot of unknown format", [*FIT, "--plot", "{tmp}/fit.txt"], r"unknown format '.txt'"),
    ("plot and save one file", [*FIT, "--plot", "{tmp}/a.png", "--save", "{tmp}/a.png"], r"same"),
    ("critical plot folder", [*CRIT, "--plot", "{outdir}"], r"is a folder"),
    # Forms from the command line.
    ("expression runs code", [*FIT, "--form", "expr:__import__('os')"], r"unknown function"),
    ("expression attribute", [*FIT, "--form", "expr:A.real/D+E"], r"not allowed"),
    ("expression without D", [*FIT, "--form", "expr:A*X+E"], r"must use D"),
    ("expression empty", [*FIT, "--form", "expr:"], r"formula is empty"),
    ("expression not a formula", [*FIT, "--form", "expr:A /"], r"not a formula"),
    ("form file missing", [*FIT, "--form", "{tmp}/nope.py:F"], r"no such file"),
    ("form file syntax error", [*FIT, "--form", "{syntax}:F"], r"line 1: syntax error"),
    ("form file raises", [*FIT, "--form", "{raises}:F"], r"failed to run: RuntimeError: boom"),
    ("form file lacks the name", [*FIT, "--form", "{notform}:LAW"], r"defines no 'LAW'"),
    ("form file name not a form", [*FIT, "--form", "{notform}:NUM"], r"is a int, not a LawForm"),
    ("unknown form", [*FIT, "--form", "quartic"], r"unknown law form 'quartic'"),
    # Points to predict.
    ("predict not numbers", [*FIT, "--predict", "big"], r"--predict 'big': expected D or X,D"),
    ("predict wrong arity", [*FIT, "--predict", "1,2,3"], r"--predict takes X,D"),
    ("predict negative", [*FIT, "--predict", "1e9,-5"], r"positive and finite"),
    # Columns and rules.
    ("group column missing", [*FIT, "--group", "method", "--group", "task"], r"'task' not found"),
    ("space unknown", [*FIT, "--space", "sqrt"], r"--space must be one of"),
    ("holdout matches nothing", [*FIT, "--holdout", "method=dora"], r"matches no row"),
    ("empty table", ["fit", "{empty}"], r"file is empty"),
    ("critical needs two groups", ["critical", "{flat}"], r"at least two groups"),
]


@pytest.mark.parametrize(("name", "args", "match"), CASES, ids=[c[0] for c in CASES])
def test_laws_hostile(files, name, args, match):
    files(args, match=match)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_save_in_read_only_folder(files):
    folder = files.folder("locked")
    folder.chmod(0o500)
    try:
        files([*FIT, "--save", "{locked}/fits.json"], match=r"is not writable")
    finally:
        folder.chmod(0o700)
