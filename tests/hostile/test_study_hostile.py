"""Bad input to `ftscale study run|plan|status|export`, `ftscale recommend` and `ftscale report`:
one line, exit 2, nothing written."""

from __future__ import annotations

import pytest

LADDER = """
[ladder]
name = "h"
[ladder.recipe]
tokens = 4096
[[ladder.rungs]]
name = "a"
width = 16
layers = 1
heads = 2
ffn = 32
[[ladder.rungs]]
name = "b"
width = 24
layers = 1
heads = 2
ffn = 48
"""


def study(extra: str = "", head: str = 'name = "h"\n') -> str:
    """A valid study file with ``extra`` tables appended (top-level keys go in ``head``)."""
    return head + LADDER + extra


def recommend(study_dir: str, model_size: str, examples: str, *extra: str) -> list[str]:
    """``ftscale recommend STUDY_DIR --model-size N --examples D ...``."""
    return ["recommend", study_dir, "--model-size", model_size, "--examples", examples, *extra]


# (id, study file text or None for a special file, regex the error line must match)
FILES = [
    ("not toml", "name = = 3", r"not valid TOML"),
    ("empty", "", r"name: Field required.*ladder: Field required"),
    ("misspelt key first", study(head='name = "h"\nexampels = 3\n'), r"exampels: Extra inputs"),
    ("bad name", study(head='name = "a b"\n'), r"name: String should match"),
    ("ladder bad width", study().replace("width = 16", "width = -1"), r"ladder: rungs.0.width"),
    ("ladder path missing", 'name = "h"\nladder = "nope.toml"\n', r"ladder: .*no such ladder"),
    ("no methods", study("[methods]\n"), r"methods: .*at least one method"),
    ("unknown method", study("[methods]\nfmtt = {}\n"), r"methods.fmtt: .*unknown|fmtt"),
    ("bad lora rank", study("[methods]\nlora = { rank = -1 }\n"), r"methods.lora: .*rank"),
    ("zero examples", study("[examples]\nsizes = [0, 10]\n"), r"examples.sizes.0: .*greater"),
    ("repeated examples", study("[examples]\nsizes = [10, 10]\n"), r"not distinct"),
    ("no examples", study("[examples]\nsizes = []\n"), r"examples.sizes: must not be empty"),
    ("negative lr", study("[train]\nlr = -0.1\n"), r"train.lr"),
    ("lr word", study('[train]\nlr = "fast"\n'), r"train.lr.*'fast'"),
    ("unknown form", study('[analysis]\nforms = ["cubic"]\n'), r"unknown law form 'cubic'"),
    ("one-variable form", study('[analysis]\nforms = ["power"]\n'), r"not a law of \(X, D_f\)"),
    ("negative bootstrap", study("[analysis]\nbootstrap = -1\n"), r"analysis.bootstrap"),
    (
        "resample word",
        study('[analysis]\nresample = "jackknife"\n'),
        r"analysis.resample.*'jackknife'",
    ),
    (
        "converged_only word",
        study('[analysis]\nconverged_only = "maybe"\n'),
        r"analysis.converged_only",
    ),
    ("pretraining rung", study('[sweeps.pretraining]\nrung = "zz"\n'), r"no rung 'zz'"),
    (
        "pet size of fmt",
        study("[sweeps.pet_size]\nsizes = { fmt = [1, 2] }\n"),
        r"method 'fmt' has no size option",
    ),
    (
        "sweep method unknown",
        study('[sweeps.model_size]\nmethods = ["ia4"]\n'),
        r"sweeps.model_size.methods: method 'ia4' is not in \[methods\]",
    ),
    ("lr table method", study("[train]\nlr = { dora = 0.1 }\n"), r"train.lr: method 'dora'"),
    ("zero test cap", study("[task]\ntest_examples = 0\n"), r"task.test_examples"),
    ("holdout word", study('[sweeps.model_size]\nholdout = "maximum"\n'), r"holdout"),
    (
        "duplicate evals",
        study(
            '[[evals]]\nname = "x"\nspec = "builtin:fr-de"\n'
            '[[evals]]\nname = "x"\nspec = "builtin:fr-de"\n'
        ),
        r"used twice",
    ),
    ("negative workers", study("[run]\nworkers = -1\n"), r"run.workers"),
    ("sizes unknown rung", study("[sizes]\nzz = 100\n"), r"sizes: no rung 'zz'"),
    ("string for int", study('[examples]\nsizes = ["many"]\n'), r"examples.sizes.0"),
]


@pytest.mark.parametrize("command", ["run", "plan"])
@pytest.mark.parametrize(("name", "text", "match"), FILES, ids=[f[0] for f in FILES])
def test_malformed_study_files(hostile, command, name, text, match):
    hostile.file("study", text, filename="s.toml")
    hostile(["study", command, "{study}"], match=r"s\.toml: .*" + match)


def test_binary_study_file(hostile):
    hostile.file("study", b"\xff\xfe\x00bad", filename="s.toml")
    hostile(["study", "run", "{study}"], match=r"s\.toml: cannot read")


OTHER = [
    ("missing file", ["study", "run", "{tmp}/nope.toml"], r"no such study file"),
    ("folder as file", ["study", "plan", "{folder}"], r"is a folder"),
    ("unknown builtin", ["study", "plan", "builtin:nope"], r"no such built-in study"),
    (
        "unknown executor",
        ["study", "run", "{good}", "--executor", "slurm"],
        r"executor 'slurm' unknown",
    ),
    ("address without ray", ["study", "run", "{good}", "--address", "auto"], r"--address"),
    ("dir is a file", ["study", "run", "{good}", "--dir", "{good}"], r"not a directory"),
    (
        "dir not a study",
        ["study", "run", "{good}", "--dir", "{full}"],
        r"not empty and not a study",
    ),
    ("negative workers", ["study", "run", "{good}", "--workers", "-1"], r"workers"),
    ("status missing dir", ["study", "status", "{tmp}/nope"], r"no such study directory"),
    ("status not a study", ["study", "status", "{folder}"], r"not a study directory"),
    ("status on a file", ["study", "status", "{good}"], r"not a directory"),
    ("status corrupt store", ["study", "status", "{corrupt}"], r"not a study store"),
    ("export missing dir", ["study", "export", "{tmp}/nope"], r"no such study directory"),
    ("export not a study", ["study", "export", "{folder}"], r"not a study directory"),
    (
        "export bad suffix",
        ["study", "export", "{folder}", "-o", "{tmp}/x.txt"],
        r"\.csv or \.parquet",
    ),
    (
        "export no folder",
        ["study", "export", "{folder}", "-o", "{tmp}/no/x.csv"],
        r"does not exist",
    ),
    ("report missing dir", ["report", "{tmp}/nope"], r"no such study directory"),
    ("report not a study", ["report", "{folder}"], r"not a study directory"),
    ("report corrupt", ["report", "{corrupt}"], r"not a study store"),
    ("recommend missing", recommend("{tmp}/nope", "1e6", "100"), r"no such study directory"),
    ("recommend not study", recommend("{folder}", "1e6", "9"), r"not a study directory"),
    (
        "recommend negative N",
        recommend("{folder}", "-5", "9"),
        r"--model-size must be a positive number",
    ),
    ("recommend zero D", recommend("{folder}", "5", "0"), r"--examples must be a positive number"),
    (
        "recommend nan target",
        recommend("{folder}", "5", "9", "--target-loss", "nan"),
        r"--target-loss must be a positive",
    ),
    ("recommend word", recommend("{folder}", "big", "9"), r"model-size"),
    ("recommend no size", ["recommend", "{folder}", "--examples", "9"], r"model-size"),
]


@pytest.mark.parametrize(("name", "args", "match"), OTHER, ids=[c[0] for c in OTHER])
def test_study_commands_hostile(hostile, name, args, match):
    hostile.folder("folder")
    full = hostile.folder("full")
    (full / "notes.txt").write_text("mine")
    hostile.file("good", study(), filename="good.toml")
    corrupt = hostile.folder("corrupt")
    (corrupt / "study.sqlite").write_text("this is not a database" * 100)
    hostile(args, match=match)
