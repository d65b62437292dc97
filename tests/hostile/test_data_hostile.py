"""Hostile input to `ftscale data show` and the table readers: one line naming the file (and the
row, line or column at fault), exit 2, nothing written."""

from __future__ import annotations

import json

import pytest

GOOD = "".join(json.dumps({"source": f"s{i}", "target": f"t{i}"}) + "\n" for i in range(30))

# (case id, files {filename: content}, args, regex the error line must match)
CASES = [
    ("missing file", {}, ["data", "show", "none.jsonl"], r"none\.jsonl: no such file"),
    ("folder", {"d/": None}, ["data", "show", "{tmp}/d"], r"is a directory, expected a table"),
    ("unknown suffix", {"p.txt": "a,b\n"}, ["data", "show", "{tmp}/p.txt"],
     r"unknown table format '\.txt'"),
    ("empty CSV", {"e.csv": ""}, ["data", "show", "{tmp}/e.csv"], r"e\.csv: file is empty"),
    ("empty JSONL", {"e.jsonl": "\n\n"}, ["data", "show", "{tmp}/e.jsonl"], r"file is empty"),
    ("header only CSV", {"h.csv": "source,target\n"}, ["data", "show", "{tmp}/h.csv"],
     r"h\.csv: table has no rows"),
    ("JSONL line is an array", {"a.jsonl": '{"source": "a", "target": "b"}\n[1, 2]\n'},
     ["data", "show", "{tmp}/a.jsonl"], r"a\.jsonl: line 2: expected a JSON object, got an array"),
    ("JSONL line is a string", {"a.jsonl": '"hello"\n'}, ["data", "show", "{tmp}/a.jsonl"],
     r"line 1: expected a JSON object, got a string"),
    ("JSONL line not JSON", {"a.jsonl": '{"source": "a", "target": "b"}\n\n{"source": \n'},
     ["data", "show", "{tmp}/a.jsonl"], r"a\.jsonl: line 3: not valid JSON"),
    ("JSON array with a number", {"a.json": '[{"source": "a", "target": "b"}, 7]'},
     ["data", "show", "{tmp}/a.json"], r"record 2 of the JSON array is a number"),
    ("JSON scalar", {"a.json": "42"}, ["data", "show", "{tmp}/a.json"],
     r"line 1: expected a JSON object, got a number"),
    ("not UTF-8 JSONL", {"b.jsonl": b'{"source": "\xff", "target": "x"}\n'},
     ["data", "show", "{tmp}/b.jsonl"], r"b\.jsonl: not UTF-8"),
    ("not UTF-8 CSV", {"b.csv": b"source,target\n\xff\xfe,x\n"}, ["data", "show", "{tmp}/b.csv"],
     r"b\.csv: not UTF-8"),
    ("ragged CSV", {"r.csv": 'source,target\na,b\n"x,y\n'}, ["data", "show", "{tmp}/r.csv"],
     r"r\.csv: cannot read as csv"),
    ("missing column", {"p.csv": "en,de\na,b\n"}, ["data", "show", "{tmp}/p.csv"],
     r"column 'source' not found \(columns: en, de\)"),
    ("--source names a missing column", {"p.jsonl": GOOD},
     ["data", "show", "{tmp}/p.jsonl", "--source", "en"], r"column 'en' not found"),
    ("--group names a missing column", {"p.jsonl": GOOD},
     ["data", "show", "{tmp}/p.jsonl", "--group", "doc"], r"column 'doc' not found"),
    ("JSON null target", {"n.jsonl": '{"source": "a", "target": null}\n'},
     ["data", "show", "{tmp}/n.jsonl"], r"row 1: 'target' is None, expected text"),
    ("JSON number target", {"n.jsonl": GOOD + '{"source": "a", "target": 5}\n'},
     ["data", "show", "{tmp}/n.jsonl"], r"row 31: 'target' is 5, expected text"),
    ("blank target in CSV", {"b.csv": "source,target\na,x\nb,\nc,z\n"},
     ["data", "show", "{tmp}/b.csv"], r"1 empty pair\(s\) .*first at row 2"),
    ("whitespace source", {"w.jsonl": '{"source": " ", "target": "x"}\n'},
     ["data", "show", "{tmp}/w.jsonl"], r"1 empty pair\(s\)"),
    ("duplicate pairs", {"d.csv": "source,target\na,x\nb,y\na,x\n"},
     ["data", "show", "{tmp}/d.csv"], r"1 duplicate pair\(s\), first at row 3 \(same as row 1\)"),
    ("bad split label", {"s.jsonl": '{"source": "a", "target": "b", "split": "valid"}\n'},
     ["data", "show", "{tmp}/s.jsonl"], r"column 'split' has 'valid'"),
    ("split asked for is empty", {"s.jsonl": '{"source": "a", "target": "b", "split": "train"}\n'},
     ["data", "show", "{tmp}/s.jsonl", "--split", "dev"], r"split 'dev' is empty"),
    ("--split bogus", {}, ["data", "show", "builtin:en-de", "--split", "valid"],
     r"unknown split 'valid'"),
    ("--limit negative", {}, ["data", "show", "builtin:en-de", "--limit", "-1"], r"'--limit'"),
    ("--limit text", {}, ["data", "show", "builtin:en-de", "--limit", "all"], r"'--limit'"),
    ("unknown built-in task", {}, ["data", "show", "builtin:en-zh"], r"unknown built-in task"),
    ("built-in split it lacks", {}, ["data", "show", "builtin:fr-de", "--split", "train"],
     r"builtin:fr-de: no 'train' split \(has: dev, test\)"),
    ("hf without a name", {}, ["data", "show", "hf:"], r"hf:"),
]


@pytest.mark.parametrize(("name", "files", "args", "match"), CASES, ids=[c[0] for c in CASES])
def test_data_hostile(hostile, name, files, args, match):
    for filename, content in files.items():
        if content is None:
            hostile.folder(filename.rstrip("/"))
        else:
            hostile.file(filename, content)
    hostile(args, match=match)
