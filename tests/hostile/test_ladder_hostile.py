"""Hostile input to `ftscale ladder build` and `ftscale ladder show`: one line, exit 2, nothing
written, and (every case here) refused before any tokenizer or model is trained."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

RUNG = '[[rungs]]\nname = "a"\nwidth = 8\nlayers = 1\nheads = 2\nffn = 8\n'
OK = f'name = "x"\n[tokenizer]\nvocab_size = 300\n[recipe]\ntokens = 100_000\n{RUNG}'


def _cfg(recipe: str = "tokens = 100_000", top: str = "", rungs: str = RUNG) -> str:
    return f'name = "x"\n{top}\n[recipe]\n{recipe}\n{rungs}'


# (case id, files {name: content}, args, regex the error line must match)
BUILD_CASES = [
    ("missing file", {}, ["ladder", "build", "nope.toml"], r"nope\.toml: no such ladder file"),
    ("folder given as file", {"dir/": None}, ["ladder", "build", "{dir}"],
     r"is a folder, expected a ladder TOML file"),
    ("not TOML", {"c": "name = \n"}, ["ladder", "build", "{c}"], r"not valid TOML"),
    ("not UTF-8", {"c": b"name = \"\xff\xfe\"\n"}, ["ladder", "build", "{c}"],
     r"cannot read: not UTF-8"),
    ("misspelt key", {"c": _cfg("tokenz = 5")}, ["ladder", "build", "{c}"],
     r"recipe\.tokenz: Extra inputs are not permitted"),
    ("budget below one batch", {"c": _cfg("tokens = 10")}, ["ladder", "build", "{c}"],
     r"recipe: tokens 10 is less than one batch \(batch_size 16 x seq_len 128 = 2,048 tokens\)"),
    ("zero budget", {"c": _cfg("tokens = 0")}, ["ladder", "build", "{c}"],
     r"recipe\.tokens: Input should be greater than 0"),
    ("checkpoints as a string", {"c": _cfg('tokens = 100_000\ncheckpoints = "4096"')},
     ["ladder", "build", "{c}"], r"c\.toml: recipe\.checkpoints: Input should be a valid list"),
    ("checkpoint beyond budget", {"c": _cfg("tokens = 100_000\ncheckpoints = [200_000]")},
     ["ladder", "build", "{c}"], r"checkpoint 200000 tokens is beyond the budget"),
    ("checkpoint below one batch", {"c": _cfg("tokens = 100_000\ncheckpoints = [100]")},
     ["ladder", "build", "{c}"], r"checkpoint 100 tokens is less than one batch"),
    ("duplicate checkpoints", {"c": _cfg("tokens = 100_000\ncheckpoints = [4096, 4096]")},
     ["ladder", "build", "{c}"], r"checkpoints are not distinct"),
    ("val_tokens below a block", {"c": _cfg("tokens = 100_000\nval_tokens = 10")},
     ["ladder", "build", "{c}", "--cache", "{tmp}/cache"],
     r"val_tokens 10 is less than one block of seq_len 128"),
    ("val_tokens beyond held-out text", {"c": _cfg("tokens = 100_000\nval_tokens = 1e9")},
     ["ladder", "build", "{c}", "--cache", "{tmp}/cache"],
     r"recipe\.val_tokens: 1,000,000,000 is more than the held-out text has \(at most [\d,]+ "),
    ("batch beyond the corpus", {"c": _cfg("tokens = 1e12\nbatch_size = 1e8")},
     ["ladder", "build", "{c}", "--cache", "{tmp}/cache"],
     r"recipe\.batch_size: one batch .* is more than the whole pretraining text \(at most "),
    ("float batch size", {"c": _cfg("tokens = 100_000\nbatch_size = 2.5")},
     ["ladder", "build", "{c}"], r"recipe\.batch_size: Input should be a valid integer"),
    ("negative lr", {"c": _cfg("tokens = 100_000\nlr = -1.0")}, ["ladder", "build", "{c}"],
     r"recipe\.lr: Input should be greater than 0"),
    ("seq_len too short", {"c": _cfg("tokens = 100_000\nseq_len = 4")},
     ["ladder", "build", "{c}"], r"recipe\.seq_len: Input should be greater than or equal to 8"),
    ("heads do not divide width",
     {"c": _cfg(rungs=RUNG.replace("heads = 2", "heads = 3"))}, ["ladder", "build", "{c}"],
     r"rungs\.0: width 8 is not divisible by heads 3"),
    ("rung name twice", {"c": _cfg(rungs=RUNG + RUNG)}, ["ladder", "build", "{c}"],
     r"rung name 'a' used twice"),
    ("no rungs", {"c": _cfg(rungs="")}, ["ladder", "build", "{c}"],
     r"needs at least one \[\[rungs\]\] entry"),
    ("vocabulary too small", {"c": _cfg(top="[tokenizer]\nvocab_size = 10")},
     ["ladder", "build", "{c}"], r"tokenizer\.vocab_size: Input should be greater than"),
    ("unknown kind", {"c": _cfg(top='kind = "bogus"')}, ["ladder", "build", "{c}"],
     r"kind: Input should be 'pretrain' or 'external'"),
    ("name with a slash", {"c": _cfg().replace('name = "x"', 'name = "a/b"')},
     ["ladder", "build", "{c}"], r"name: String should match pattern"),
    ("negative workers in config", {"c": _cfg(top="workers = -1")}, ["ladder", "build", "{c}"],
     r"workers: Input should be greater than or equal to 0"),
    ("--workers -1", {"c": OK}, ["ladder", "build", "{c}", "--workers", "-1"],
     r"Invalid value for '--workers'"),
    ("--threads -1", {"c": OK}, ["ladder", "build", "{c}", "--threads", "-1"],
     r"Invalid value for '--threads'"),
    ("--workers text", {"c": OK}, ["ladder", "build", "{c}", "--workers", "two"],
     r"'--workers'"),
    ("--cache is a file", {"c": OK, "f": "x"}, ["ladder", "build", "{c}", "--cache", "{f}"],
     r"is a file, not a folder"),
    ("--cache under a file", {"c": OK, "f": "x"},
     ["ladder", "build", "{c}", "--cache", "{f}/sub"], r"is a file, not a folder"),
    ("--cache ladders folder is a file", {"c": OK, "ladders": "x"},
     ["ladder", "build", "{c}", "--cache", "{tmp}"], r"ladders is a file, not a folder"),
    ("external: text file as model",
     {"c": 'name = "e"\nkind = "external"\n[[external]]\nname = "a"\nmodel = "notes.txt"\n',
      "notes.txt": "hello"}, ["ladder", "build", "{c}", "--cache", "{tmp}/cache"],
     r"notes\.txt: is a file, expected a model directory"),
    ("external: missing local model",
     {"c": 'name = "e"\nkind = "external"\n[[external]]\nname = "a"\nmodel = "./none"\n'},
     ["ladder", "build", "{c}", "--cache", "{tmp}/cache"], r"\./none: no such local model"),
    ("external: folder without config.json",
     {"c": 'name = "e"\nkind = "external"\n[[external]]\nname = "a"\nmodel = "./m"\n',
      "m/": None}, ["ladder", "build", "{c}", "--cache", "{tmp}/cache"],
     r"local model directory has no config\.json"),
    ("external with shapes", {"c": _cfg(top='kind = "external"')}, ["ladder", "build", "{c}"],
     r"external ladder needs at least one \[\[external\]\] entry"),
]

SHOW_CASES = [
    ("show: missing path", {}, ["ladder", "show", "nowhere"], r"no such ladder directory"),
    ("show: text file", {"t.txt": "hello"}, ["ladder", "show", "{tmp}/t.txt"],
     r"t\.txt: is a file, expected a ladder directory or a ladder \.toml file"),
    ("show: folder that is no ladder", {"d/": None}, ["ladder", "show", "{d}"],
     r"not a complete ladder \(no readable ladder\.json\)"),
    ("show: TOML not built yet", {"c": OK},
     ["ladder", "show", "{c}", "--cache", "{tmp}/cache"], r"ladder not built yet"),
    ("show: bad TOML", {"c": _cfg("tokens = 10")}, ["ladder", "show", "{c}"],
     r"less than one batch"),
    ("show: ladder.json checkpoints a string", {"l/ladder.json": '{"checkpoints": "m/tokens-1"}'},
     ["ladder", "show", "{tmp}/l"], r"ladder\.json: field 'checkpoints' is 'm/tokens-1'"),
    ("show: ladder.json not an object", {"l/ladder.json": "[]"}, ["ladder", "show", "{tmp}/l"],
     r"ladder\.json: expected a JSON object, got list"),
    ("show: manifest missing", {"l/ladder.json": json.dumps({"checkpoints": ["a/tokens-1"]})},
     ["ladder", "show", "{tmp}/l"], r"manifest\.json: missing or unreadable manifest"),
    ("show: manifest not an object",
     {"l/ladder.json": json.dumps({"checkpoints": ["a"]}), "l/a/manifest.json": "3"},
     ["ladder", "show", "{tmp}/l"], r"manifest\.json: expected a JSON object"),
]


def _prepare(hostile, files: dict) -> None:
    for name, content in files.items():
        if content is None:
            hostile.folder(name.rstrip("/"))
        else:
            hostile.file(name, content, filename="c.toml" if name == "c" else name)


@pytest.mark.parametrize(("name", "files", "args", "match"), BUILD_CASES + SHOW_CASES,
                         ids=[c[0] for c in BUILD_CASES + SHOW_CASES])
def test_ladder_hostile(hostile, name, files, args, match):
    _prepare(hostile, files)
    hostile(args, match=match)


def test_cache_in_read_only_folder(hostile, monkeypatch):
    """A cache that cannot be written is refused before anything is built (as root, who may
    write anywhere, the read-only folder is simulated at ``os.access``)."""
    hostile.file("c", OK, filename="c.toml")
    ro = hostile.folder("ro")
    if os.geteuid() == 0:
        real = os.access

        def access(path, mode, **kw):
            if Path(path) == ro and mode & os.W_OK:
                return False
            return real(path, mode, **kw)

        monkeypatch.setattr(os, "access", access)
    else:
        ro.chmod(0o555)
    try:
        hostile(["ladder", "build", "{c}", "--cache", "{ro}/cache"],
                match=r"cannot write in .*ro \(permission denied or read-only\)")
    finally:
        ro.chmod(0o755)
