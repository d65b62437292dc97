"""Run-spec keys stay what they were: a study store written by an earlier ftscale resumes with the
same keys, and a saved ``--print-job`` spec names the same run.

The expected keys were computed by ftscale 0.1.0 at commit 67500e4 (before the run spec moved to
``ftscale.finetune.spec``) for the same inputs. A change that alters a key must come with a
migration note in docs/study.md and new values here.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftscale.cli import app

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

#: ``ftscale finetune --print-job`` keys at 67500e4, per command line (data files below).
CLI_KEYS = {
    "fmt-defaults": ("--method fmt", "ddc38ba0fe7aeab2"),
    "lora-rank8": ("--method lora --rank 8 --examples 10 --lr 1e-3", "98a9936ae5f49769"),
    "prompt-auto": (
        "--method prompt-tuning --prompt-length 7 --lr auto --patience 0 --epochs 2.5",
        "3f85036095f678c2",
    ),
    "full-alias": (
        "--method full --max-steps 30 --eval-every 5 --batch-size 4 --optimizer adafactor "
        "--subset-seed 3 --seed 2",
        "54e93bf9ec018778",
    ),
    "evals": (
        "--method lora --eval fr-de=builtin:fr-de --shots 2 --eval-examples 8 "
        "--template 'English: {src}\\nGerman:' --gen-examples 0 --dev-examples 3 "
        "--max-new-tokens 9 --max-source-tokens 100 --max-target-tokens 90 --bleu-tokenize zh",
        "c9a4694813ab71fc",
    ),
    "field-option": (
        "--method dora --option alpha=3 --rank 2 --template '{lang}: {src}' --field lang=German "
        "--revision main --threads 1 --device cpu",
        "8ad10e9a024c6670",
    ),
    "ia3": ("--method ia3", "86c8b82541a0ab08"),
}
#: SHA-256 (16 hex digits) of the 57 plan keys of tests/fixtures/compat-smoke.toml, in plan order,
#: with each run's model path replaced by ``MODEL/<rung>/<tokens>``, at 67500e4.
SMOKE_PLAN_DIGEST = "a9aef90fdc5c732b"


@pytest.fixture
def data(tmp_path: Path) -> list[str]:
    paths = []
    for split, n in (("train", 12), ("dev", 4), ("test", 4)):
        rows = (
            {"source": f"{split} source {i}", "target": f"{split} target {i}"} for i in range(n)
        )
        path = tmp_path / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("name", sorted(CLI_KEYS))
def test_print_job_keys_are_unchanged(data, name):
    words, key = CLI_KEYS[name]
    args = shlex.split(words)
    train, dev, test = data
    files = ["--train", train, "--dev", dev, "--test", test]
    result = CliRunner().invoke(
        app, ["finetune", "--model", "some/model-dir", *files, *args, "--print-job"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["key"] == key


def test_study_plan_keys_are_unchanged(monkeypatch):
    from ftscale.study.config import load_study
    from ftscale.study.plan import make_plan

    monkeypatch.setenv("FTSCALE_CACHE", "/nonexistent/ftscale-compat/cache")
    study = load_study(FIXTURES / "compat-smoke.toml")
    plan = make_plan(study, Path("/nonexistent/ftscale-compat/smoke"))
    keys = [
        r.job.replace(model=f"MODEL/{r.checkpoint.rung}/{r.checkpoint.tokens_seen}").key
        for r in plan.runs
    ]
    assert len(keys) == 57
    assert hashlib.sha256("".join(keys).encode()).hexdigest()[:16] == SMOKE_PLAN_DIGEST
