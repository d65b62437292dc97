"""Generalisation evals (--eval NAME=SOURCE, --shots K), the improved/undertrained flags, the
context limit, progress lines, and a record that reaches the user when --output fails late."""

from __future__ import annotations

import json
import os

import pytest
from finetune_toy import cli_args, copy_pairs, make_model, reverse_pairs, write_jsonl
from typer.testing import CliRunner

from ftscale.cli import app
from ftscale.finetune import TaskConfig, TrainConfig, make_method
from ftscale.finetune.progress import PlainProgress
from ftscale.finetune.spec import EvalSet, FinetuneJob
from ftscale.finetune.tasks import encode_pairs


def test_eval_sets_scored_before_and_after_with_seeded_shots(run_toy, tmp_path):
    other = write_jsonl(tmp_path / "copy.jsonl", copy_pairs(40, 5))  # a task it never trains on
    config = TrainConfig(max_steps=30, gen_examples=4, eval_examples=12, threads=1)
    evals = [EvalSet("copy", str(other)), EvalSet("reverse", str(tmp_path / "rev.jsonl"))]
    write_jsonl(tmp_path / "rev.jsonl", reverse_pairs(30, 9))
    record = run_toy("lora", config, evals=evals, shots=2)
    assert set(record.evals) == {"copy", "reverse"}
    for name, result in record.evals.items():
        assert result["shots"] == 2
        for side in ("base", "finetuned"):
            scores = result[side]
            assert scores["examples"] == 12 and scores["tokens"] > 0, name
            assert scores["ppl"] == pytest.approx(2.718281828 ** scores["nll"], rel=1e-6)
            assert 0 <= scores["gen_chrf"] <= 100
    # training on the reverse task helps its held-out pairs
    reverse = record.evals["reverse"]
    assert reverse["finetuned"]["nll"] < reverse["base"]["nll"]
    again = run_toy("lora", config, evals=evals, shots=2)
    assert again.evals == record.evals  # seeded sample and demonstrations


def test_few_shot_prompt_holds_the_demonstrations(tok):
    demos = reverse_pairs(2, 4)
    task = TaskConfig(template="{src} =").with_demonstrations(demos)
    prompt = task.prompt("a b")
    assert prompt == "".join(f"{d.source} = {d.target}\n" for d in demos) + "a b ="
    assert TaskConfig().with_demonstrations([]) == TaskConfig()


def test_eval_sets_are_part_of_the_spec_and_its_key(data_files):
    tr, dv, te = data_files
    from ftscale.finetune.spec import DataSource

    job = FinetuneJob(
        model="m",
        method=make_method("lora"),
        train=DataSource(str(tr)),
        dev=DataSource(str(dv)),
        test=DataSource(str(te)),
    )
    with_eval = job.replace(evals=(EvalSet("fr-de", "builtin:fr-de"),))
    assert with_eval.key != job.key
    assert with_eval.replace(shots=3).key != with_eval.key
    assert with_eval.replace(eval_examples=10).key != with_eval.key
    assert job.replace(eval_examples=10).key == job.key  # no eval sets: nothing changes
    again = FinetuneJob.from_json(with_eval.replace(shots=3).to_json())
    assert again == with_eval.replace(shots=3) and again.evals[0].spec == "builtin:fr-de"


def test_builtin_eval_set_takes_test_pairs_and_dev_demonstrations():
    scored, demos = EvalSet("fr-de", "builtin:fr-de").load(examples=5, shots=2, seed=0)
    assert len(scored) == 5 and len(demos) == 2
    assert not set(demos) & set(scored)


def test_improved_and_undertrained_flags(run_toy):
    tiny_rate = TrainConfig(max_steps=4, learning_rate=1.0, gen_examples=0, threads=1)
    stalled = run_toy("fmt", tiny_rate)
    assert stalled.improved is False and stalled.best_step == 0 and not stalled.undertrained
    short = TrainConfig(max_steps=10, eval_every=5, patience=None, gen_examples=0, threads=1)
    still = run_toy("fmt", short)
    assert still.improved and still.undertrained and still.best_step == still.steps == 10


def test_examples_are_cut_to_the_model_context(tok, run_toy):
    from transformers import LlamaConfig, LlamaForCausalLM

    small = make_model(tok)
    config = LlamaConfig(**{**small.config.to_dict(), "max_position_embeddings": 9})
    model = LlamaForCausalLM(config)
    long_pairs = reverse_pairs(40, 3, min_len=6, max_len=8)  # 2 * (6..8) + 3 tokens > 9

    def run_long(method):  # the 9-position model on the long pairs
        settings = TrainConfig(max_steps=2, gen_examples=4, threads=1)
        splits = {"train": long_pairs, "dev": long_pairs[:8], "test": long_pairs[:8]}
        return run_toy(method, settings, model=model, **splits)

    record = run_long("lora")
    assert record.status == "ok" and record.context_length == 9
    assert record.truncated_context == 40 + 8 + 8
    encoded = encode_pairs(long_pairs, tok, TaskConfig(), "x", context=9)
    assert max(encoded.lengths) == 9
    lengths = zip(encoded.ids, encoded.prompt_lengths, strict=True)
    assert all(len(ids) - p >= 1 for ids, p in lengths)
    record = run_long(make_method("prompt", prompt_length=3))
    assert record.status == "ok"  # 3 virtual tokens + at most 6 real ones fit in 9 positions


def test_plain_progress_prints_one_line_per_dev_check(run_toy, capsys):
    import io

    stream = io.StringIO()
    config = TrainConfig(max_steps=6, eval_every=2, gen_examples=0, threads=1, patience=None)
    run_toy("lora", config, progress=PlainProgress(stream))
    plan, *lines = stream.getvalue().splitlines()
    assert plan.startswith("ftscale: memory plan: checkpointing 0 of 2 layers")  # before training
    assert len(lines) == 3 and all(line.startswith("ftscale: lora lr ") for line in lines)
    assert "step 6/6" in lines[-1] and "dev NLL" in lines[-1]


def test_cli_eval_shots_quiet_and_warnings(model_dir, data_files):
    steps = ["--max-steps", "4", "--eval-every", "2", "--patience", "0"]
    evals = ["--eval", f"again={data_files[1]}", "--shots", "1", "--eval-examples", "5"]
    run = [*steps, "--threads", "1", "--gen-examples", "2", *evals]
    prompt = ["--method", "prompt-tuning", "--prompt-length", "3"]
    args = cli_args(model_dir, data_files, *prompt, *run)
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["method"] == "prompt" and record["method_size"] == 3
    assert record["evals"]["again"]["shots"] == 1
    assert record["evals"]["again"]["base"]["examples"] == 5
    assert sum("dev NLL" in line for line in result.stderr.splitlines()) == 2  # progress lines
    quiet = CliRunner().invoke(app, [*args, "--json", "--quiet"])
    assert quiet.exit_code == 0 and quiet.stderr == ""
    human = CliRunner().invoke(app, [*args, "--quiet"])
    assert "eval again (1-shot, 5 pairs)" in human.stdout
    full_model = ["--method", "full-model"]  # the same run, full-model tuning at rate 1
    diverging = cli_args(model_dir, data_files, *full_model, *run, "--lr", "1", "--json")
    result = CliRunner().invoke(app, diverging)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["improved"] is False
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == [line for line in warnings if line.startswith("ftscale: warning: ")]
    assert any("no dev check beat the base model" in line for line in warnings)


@pytest.mark.parametrize("method", ["prefix_tuning", "prefix", "p_tuning"])
def test_prompt_length_sets_virtual_tokens_of_prompt_like_methods(method):
    from ftscale.finetune.methods import with_size

    config = with_size(make_method(method, num_virtual_tokens=2), "prompt-length", 5)
    assert config.size == 5 and config.options["num_virtual_tokens"] == 5


@pytest.mark.parametrize("method", ["lora", "dora", "loha", "lokr", "vera", "adalora"])
def test_rank_sets_the_rank_of_lora_like_methods(method):
    from ftscale.finetune.methods import with_size

    assert with_size(make_method(method), "rank", 6).size == 6


def test_every_registry_name_and_alias_builds():
    from ftscale.finetune.methods import (
        ALIASES,
        METHODS,
        get_method,
        known_methods,
        method_help,
        size_option,
    )

    for name in [*METHODS, *ALIASES]:
        size = get_method(name).size_flag
        options = size_option(name, size, 3) if size else {}
        assert make_method(name, **options).name in known_methods()
        assert make_method(name, **options).size == (3 if size else None)
    assert make_method("prompt-tuning", prompt_length=5).size == 5
    assert make_method("full-model").name == "fmt"
    help_text = method_help()
    for name in METHODS:
        assert name in help_text
    assert "prompt-tuning" in help_text and "full-model" in help_text


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a path that passes the check but fails")
def test_record_reaches_the_user_when_output_fails_after_the_run(model_dir, data_files):
    run = ["--method", "lora", "--max-steps", "2", "--threads", "1", "--gen-examples", "0"]
    args = cli_args(model_dir, data_files, *run, "--quiet", "--output", "/proc/version")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 3, result.output
    record = json.loads(result.stdout)
    assert record["status"] == "ok"
    assert result.stderr.startswith("ftscale: error: could not append the record to /proc/version")
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_prefix_tuning_takes_prompt_length(model_dir, data_files):
    prefix = ["--method", "prefix_tuning", "--prompt-length", "4"]
    run = ["--max-steps", "2", "--threads", "1", "--gen-examples", "0", "--print-job"]
    args = cli_args(model_dir, data_files, *prefix, *run)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    method = json.loads(result.stdout)["job"]["method"]
    assert method == {"name": "prefix_tuning", "options": {"num_virtual_tokens": 4}}
