"""Bad study files about the run spec: the ``[train]`` table generated from the settings schema,
and method names that alias one another. One line, exit 2, nothing written."""

from __future__ import annotations

import pytest
from test_study_hostile import study

CASES = [
    ("alias and name of one method", study("[methods]\nfmt = {}\nfull = {}\n"),
     r"methods: 'fmt' and 'full' name the same method 'fmt'"),
    ("two aliases in pet sizes",
     study("[methods]\nprompt = {}\n[sweeps.pet_size]\n"
           "sizes = { prompt = [4], prompt-tuning = [8] }\n"),
     r"sweeps.pet_size.sizes: 'prompt' and 'prompt-tuning' name the same method"),
    ("alias in lr table twice", study("[train]\nlr = { fmt = 0.1, full = 0.2 }\n"),
     r"train.lr: 'fmt' and 'full' name the same method"),
    ("per-run setting in [train]", study("[train]\nexamples = 10\n"), r"train.examples: Extra"),
    ("threads belong to [run]", study("[train]\nthreads = 2\n"), r"train.threads: Extra"),
    ("eval examples belong to [task]", study("[train]\neval_examples = 9\n"),
     r"train.eval_examples: Extra"),
    ("zero grad norm", study("[train]\nmax_grad_norm = 0\n"), r"train.max_grad_norm: .*greater"),
    ("zero gen batch", study("[train]\ngen_batch_size = 0\n"), r"train.gen_batch_size"),
    ("text switch", study('[train]\nfast_head = "yes"\n'), r"train.fast_head: .*boolean"),
    ("number switch", study("[train]\ncheckpointing = 3\n"), r"train.checkpointing"),
    ("compile as a number", study("[train]\ncompile = 1\n"), r"train.compile: .*boolean"),
    ("compile as text", study('[train]\ncompile = "auto"\n'), r"train.compile: .*boolean"),
    ("memory as text", study('[train]\nmax_memory = "lots"\n'), r"train.max_memory: .*size"),
    ("memory zero", study("[train]\nmax_memory = 0\n"), r"train.max_memory: .*positive"),
    ("memory switch", study("[train]\nmax_memory = true\n"), r"train.max_memory"),
    ("float count", study("[train]\nbatch_size = 16.5\n"), r"train.batch_size: .*integer"),
    ("negative seed", study("[train]\nseed = -1\n"), r"train.seed: .*greater than or equal to 0"),
    ("nan epochs", study("[train]\nepochs = nan\n"), r"train.epochs: .*finite"),
    ("warmup of one", study("[train]\nwarmup_fraction = 1.0\n"), r"train.warmup_fraction"),
    ("bad lr in table", study('[train]\nlr = { fmt = "soon" }\n'), r"train.lr"),
]


@pytest.mark.parametrize(("name", "text", "match"), CASES, ids=[c[0] for c in CASES])
def test_spec_tables_of_study_files(hostile, name, text, match):
    hostile.file("study", text, filename="s.toml")
    hostile(["study", "plan", "{study}"], match=r"s\.toml: .*" + match)


PACKS = [
    ("pack zero", ["--pack", "0"], r"--pack '0': expected auto or a whole number from 1 to 256"),
    ("pack negative", ["--pack", "-2"], r"--pack '-2'"),
    ("pack word", ["--pack", "many"], r"--pack 'many'"),
    ("pack too large", ["--pack", "1000"], r"--pack '1000'"),
    ("pack fraction", ["--pack", "2.5"], r"--pack '2.5'"),
]


@pytest.mark.parametrize(("name", "extra", "match"), PACKS, ids=[c[0] for c in PACKS])
def test_pack_option(hostile, name, extra, match):
    hostile.file("good", study(), filename="good.toml")
    hostile(["study", "run", "{good}", *extra], match=match)


@pytest.mark.parametrize(
    ("text", "match"),
    [("pack = 0", r"run.pack"), ('pack = "some"', r"run.pack"), ("pack = 1.5", r"run.pack")],
)
def test_pack_in_the_run_table(hostile, text, match):
    hostile.file("study", study(f"[run]\n{text}\n"), filename="s.toml")
    hostile(["study", "plan", "{study}"], match=r"s\.toml: .*" + match)
