"""``ftscale finetune``: the command-line contract and its one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from finetune_toy import CONTRACT, cli_args
from typer.testing import CliRunner

from ftscale.cli import app
from ftscale.finetune import read_records

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _args(model_dir, data_files, *extra):
    """The command line of these tests: one thread, four generations, then ``extra``."""
    return cli_args(model_dir, data_files, "--threads", "1", "--gen-examples", "4", *extra)


def test_json_record_on_stdout_and_appended_to_file(model_dir, data_files, tmp_path):
    out = tmp_path / "runs" / "records.jsonl"
    method = ["--method", "lora", "--rank", "2"]
    run = ["--examples", "100", "--subset-seed", "1", "--seed", "3", "--max-steps", "12"]
    args = _args(model_dir, data_files, *method, *run, "--json", "--output", str(out))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.strip())
    for key in CONTRACT:
        assert key in record
    assert record["method"] == "lora" and record["method_size"] == 2
    assert record["examples"] == 100 and record["subset_seed"] == 1 and record["seed"] == 3
    assert record["steps"] == 12 and record["status"] == "ok"
    assert record["test_ppl"] > 1 and record["trainable_params"] == 2048
    result = CliRunner().invoke(app, args)
    lines = out.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["test_nll"] == record["test_nll"]
    records = read_records(out)
    assert len(records) == 2 and records[0].to_dict() == record


def test_human_summary_and_generic_peft_option(model_dir, data_files):
    method = ["--method", "prefix_tuning", "--option", "num_virtual_tokens=3"]
    args = _args(model_dir, data_files, *method, "--max-steps", "5")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "method prefix_tuning (size 3)" in result.stdout
    assert "test NLL/token" in result.stdout


def test_csv_columns_and_template_fields(model_dir, data_files, tmp_path):
    import pandas as pd

    rows = [json.loads(line) for line in data_files[0].read_text().splitlines()]
    frame = pd.DataFrame({"en": [r["source"] for r in rows], "de": [r["target"] for r in rows]})
    frame.to_csv(tmp_path / "train.csv", index=False)
    frame.to_csv(tmp_path / "dev.csv", index=False)
    csv_files = (tmp_path / "train.csv", tmp_path / "dev.csv", tmp_path / "dev.csv")
    columns = ["--source-column", "en", "--target-column", "de"]
    template = ["--template", "{src} {sep}", "--field", "sep=="]
    run = ["--max-steps", "3", "--threads", "1", "--gen-examples", "0", "--examples", "50"]
    args = cli_args(model_dir, csv_files, "--method", "lora", *columns, *template, *run, "--json")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["examples"] == 50
    result = CliRunner().invoke(app, [a for a in args if a not in ("--field", "sep==")])
    assert result.exit_code == 2 and "no value for field {sep}" in result.stderr


def _bad_dirs(tmp_path: Path) -> dict[str, Path]:
    from transformers import ViTConfig

    vit = tmp_path / "vit"
    ViTConfig(
        hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8
    ).save_pretrained(vit)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    (tmp_path / "empty.jsonl").write_text("")
    return {"vit": vit, "empty_dir": empty, "empty": tmp_path / "empty.jsonl"}


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"--method": "nosuch"}, "unknown finetuning method 'nosuch'"),
        ({"--method": "lora", "--option": "ranke=3"}, "unknown option 'ranke'"),
        ({"--method": "fmt", "--rank": "4"}, "--rank applies to methods with a rank"),
        (
            {"--method": "prompt", "--prompt-length": "0"},
            "'--prompt-length': Input should be greater",
        ),
        ({"--method": "fmt", "--examples": "5000"}, "larger than"),
        ({"--method": "fmt", "--train": "empty"}, "empty"),
        ({"--method": "fmt", "--dev": "missing.jsonl"}, "no such file"),
        ({"--method": "fmt", "--model": "vit"}, "not a loadable causal language model"),
        ({"--method": "fmt", "--model": "empty_dir"}, "not a model directory"),
        ({"--method": "fmt", "--model": "./nowhere"}, "no such model directory"),
        (
            {"--method": "fmt", "--optimizer": "sgd"},
            "--optimizer: Input should be 'adamw' or 'adafactor' (got 'sgd')",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(model_dir, data_files, tmp_path, change, fragment):
    bad = _bad_dirs(tmp_path)
    out = tmp_path / "records.jsonl"
    args = _args(model_dir, data_files, "--max-steps", "2", "--output", str(out))
    for option, value in change.items():
        value = str(bad.get(value, value)) if value in bad else value
        if option in args:
            args[args.index(option) + 1] = value
        else:
            args += [option, value]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("ftscale: error: ") and "\n" not in message
    assert fragment in message
    assert "Traceback" not in result.output
    assert not out.exists()  # nothing half-written


@pytest.mark.slow
def test_gguf_without_the_gguf_package_says_how_to_get_it(model_dir, data_files, monkeypatch):
    import ftscale.models.loading as loading

    monkeypatch.setattr(loading, "_gguf_available", lambda: False)
    args = _args(model_dir, data_files, "--method", "fmt", "--gguf-file", "m.gguf")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert (
        result.stderr.strip() == "ftscale: error: m.gguf: loading GGUF needs the gguf package: "
        "pip install gguf"
    )


@pytest.mark.slow
def test_real_process_exit_code_and_stderr(model_dir, data_files):
    env = {**os.environ, "PYTHONPATH": SRC}
    args = _args(model_dir, data_files, "--method", "lora", "--option", "alpha=-1")
    done = subprocess.run(
        [sys.executable, "-m", "ftscale", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("ftscale: error: method 'lora': alpha")
    assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""
