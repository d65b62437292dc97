"""The run spec: JSON round trip, a key that changes exactly when the result would, and the CLI's
``--print-job`` / ``--job`` pair giving the same record as the flags."""

from __future__ import annotations

import json
import pickle

import pytest
from finetune_toy import cli_args
from typer.testing import CliRunner

from ftscale.cli import app
from ftscale.errors import UserError
from ftscale.finetune import RunRecord, TaskConfig, TrainConfig, make_method
from ftscale.finetune.spec import DataSource, FinetuneJob


def _job(data_files, **train) -> FinetuneJob:
    tr, dv, te = data_files
    return FinetuneJob(
        model="some/model",
        method=make_method("lora", rank=2),
        train=DataSource(str(tr)),
        dev=DataSource(str(dv)),
        test=DataSource(str(te)),
        task=TaskConfig(template="{src} ="),
        train_config=TrainConfig(examples=50, max_steps=4, **train),
    )


def test_round_trip_and_pickle(data_files):
    job = _job(data_files)
    again = FinetuneJob.from_json(job.to_json())
    assert again == job and again.key == job.key
    assert pickle.loads(pickle.dumps(job)) == job


def test_key_ignores_threads_and_paths_but_not_results(data_files, tmp_path):
    job = _job(data_files)
    assert _job(data_files, threads=7).key == job.key  # run-time only
    copy = tmp_path / "elsewhere.jsonl"
    copy.write_bytes(data_files[0].read_bytes())
    assert job.replace(train=DataSource(str(copy))).key == job.key  # same content, other path
    for changed in (
        job.replace(seed=1),
        job.replace(examples=51),
        job.replace(learning_rate=0.5),
        job.replace(method=make_method("lora", rank=3)),
        job.replace(template="{src} :"),
        job.replace(revision="step1000"),
        job.replace(train=DataSource(str(data_files[1]))),
    ):
        assert changed.key != job.key


def test_bad_job_files_name_the_field(tmp_path):
    bad = tmp_path / "job.json"
    bad.write_text(json.dumps({"model": "m", "method": {"name": "lora"}}))
    with pytest.raises(UserError, match=r"job.json: missing field 'train'"):
        FinetuneJob.read(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(UserError, match="expected a JSON object"):
        FinetuneJob.read(bad)
    bad.write_text(json.dumps({"model": "m", "method": {"name": "nosuch"}, "train": {}}))
    with pytest.raises(UserError, match="unknown finetuning method"):
        FinetuneJob.read(bad)


def test_print_job_then_job_runs_the_same_record(model_dir, data_files, tmp_path):
    """``ftscale finetune ... --print-job > job.json`` then ``ftscale finetune --job job.json``:
    the same key and the same record (it failed with "unknown field 'job'" before)."""
    method = ["--method", "lora", "--rank", "2"]
    run = ["--examples", "40", "--max-steps", "3", "--gen-examples", "2", "--threads", "1"]
    flags = cli_args(model_dir, data_files, *method, *run)
    runner = CliRunner()
    printed = runner.invoke(app, [*flags, "--print-job"])
    assert printed.exit_code == 0, printed.output
    spec = json.loads(printed.stdout)
    job_file = tmp_path / "job.json"
    job_file.write_text(printed.stdout)  # exactly what --print-job printed
    from_flags = runner.invoke(app, [*flags, "--json"])
    from_file = runner.invoke(app, ["finetune", "--job", str(job_file), "--json"])
    assert from_flags.exit_code == 0 and from_file.exit_code == 0, from_file.output
    a, b = json.loads(from_flags.stdout), json.loads(from_file.stdout)
    assert a["key"] == b["key"] == spec["key"]
    assert RunRecord.from_dict(a).comparable() == RunRecord.from_dict(b).comparable()
    bare = tmp_path / "bare.json"  # the job object alone is read too
    bare.write_text(json.dumps(spec["job"]))
    assert FinetuneJob.read(bare).key == FinetuneJob.read(job_file).key == spec["key"]


def test_lr_auto_searches_on_dev_and_records_the_search(run_toy):
    from ftscale.finetune.methods import get_method

    config = TrainConfig(examples=60, max_steps=12, learning_rate="auto", gen_examples=0)
    record = run_toy(make_method("lora", rank=2), config)
    search = record.lr_search
    assert search["grid"] == list(get_method("lora").search_grid) and len(search["dev_nll"]) == 5
    assert record.learning_rate == search["chosen"] in search["grid"]
    # the walk starts in the middle of the grid and tries 3 to 5 rates, each once
    assert search["tried"][0] == search["grid"][2] and 3 <= len(search["tried"]) <= 5
    assert len(set(search["tried"])) == len(search["tried"])
    untried = [s for r, s in zip(search["grid"], search["dev_nll"], strict=True)
               if r not in search["tried"]]
    assert untried == [None] * (5 - len(search["tried"]))
    scored = [s for s in search["dev_nll"] if s is not None]
    if search["improved"]:
        assert min(scored) < search["base_dev_nll"]
        assert search["dev_nll"][search["grid"].index(search["chosen"])] == min(scored)
    else:
        assert search["chosen"] == search["grid"][0]


def test_a_study_worker_searches_the_rate_of_a_saved_job(model_dir, data_files):
    """The study's path for ``lr = "auto"``: one search per job spec, in a worker, as plain data."""
    from ftscale.study.worker import search

    tr, dv, te = data_files
    job = FinetuneJob(
        model=str(model_dir),
        method=make_method("lora", rank=2),
        train=DataSource(str(tr)),
        dev=DataSource(str(dv)),
        test=DataSource(str(te)),
        train_config=TrainConfig(examples=40, max_steps=8, learning_rate="auto", threads=1),
    )
    out = search(job.to_json(), threads=1)
    assert out["status"] == "ok", out["error"]
    assert out["search"]["chosen"] in out["search"]["grid"] and out["search"]["steps"] >= 1


def test_a_search_measures_the_base_dev_nll_once(run_toy, monkeypatch):
    """Every candidate and the run start from the same seeded state: the first candidate
    measures the dev NLL before training, the others and the run reuse it (each still checks
    dev after training and scores its test)."""
    from ftscale.finetune import recipe

    calls = []
    real = recipe.mean_nll
    monkeypatch.setattr(recipe, "mean_nll", lambda *a, **k: calls.append(1) or real(*a, **k))
    config = TrainConfig(examples=40, max_steps=8, learning_rate="auto", gen_examples=0)
    record = run_toy(make_method("lora", rank=2), config)
    tried = len(record.lr_search["tried"])
    search_calls = 3 + 2 * (tried - 1)  # before, after, test; then after and test
    run_calls = len(record.dev_history) - 1 + 1  # each check after step 0, test
    assert len(calls) == search_calls + run_calls
    assert record.dev_history[0][1] == record.lr_search["base_dev_nll"]
