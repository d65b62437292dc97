"""Convergence-driven training: a ``wsd`` run trains at its peak rate until the dev loss plateaus,
decays, and stops; the record says why it stopped and whether it converged."""

from __future__ import annotations

import math

import pytest

from ftscale.finetune import DataSource, FinetuneJob, TrainConfig, make_method
from ftscale.finetune.packing import run_pack
from ftscale.finetune.recipe import dev_spacing, run_job
from ftscale.schedules import warmup_stable_decay

#: A plateau within a few dozen steps on the toy task: a high rate, frequent checks, a cap far off.
WSD = dict(
    schedule="wsd",
    learning_rate=3e-2,
    dev_every_examples=64,
    patience=2,
    min_improvement=0.005,
    decay_fraction=0.25,
    epochs=60,
    gen_examples=0,
    threads=1,
)


def test_the_schedule_holds_the_peak_until_the_decay_then_falls_to_the_floor():
    rates = [warmup_stable_decay(s, 1.0, 4, None, 0.1) for s in range(12)]
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0]) and set(rates[4:]) == {1.0}
    decayed = [warmup_stable_decay(s, 1.0, 4, (10, 5), 0.1) for s in range(10, 16)]
    assert decayed == pytest.approx([0.82, 0.64, 0.46, 0.28, 0.1, 0.1])


def test_a_wsd_run_stops_after_the_decay_that_follows_its_plateau(run_toy):
    record = run_toy("fmt", TrainConfig(examples=120, **WSD))
    assert record.status == "ok" and record.stop_reason == "plateau" and record.converged
    assert record.steps < record.max_steps and record.stopped_early
    every = dev_spacing(TrainConfig(examples=120, **WSD), record.max_steps, 120)
    assert every == math.ceil(64 / 16)
    checks = [step for step, _ in record.dev_history]
    assert checks[0] == 0 and checks[-1] == record.steps
    assert all(s % every == 0 for s in checks[1:-1])
    assert record.undertrained is False  # a converged run is not flagged as still improving


def test_a_run_without_a_plateau_is_capped_and_not_converged(run_toy):
    config = TrainConfig(examples=120, **{**WSD, "patience": None, "epochs": 1, "min_steps": 6})
    record = run_toy("lora", config)
    assert record.stop_reason == "cap" and record.converged is False
    assert record.steps == record.max_steps == 8


def test_a_diverging_run_says_so(run_toy):
    record = run_toy("fmt", TrainConfig(examples=60, **{**WSD, "learning_rate": 1e30}))
    assert record.status == "failed" and record.stop_reason == "diverged"
    assert record.converged is False


def test_dev_checks_are_spaced_by_examples_at_least_once_an_epoch():
    config = TrainConfig(dev_every_examples=256, batch_size=16)
    assert dev_spacing(config, 1000, 1024) == 16  # every 256 examples
    assert dev_spacing(config, 1000, 64) == 4  # an epoch of 64 examples
    assert dev_spacing(config.replace(eval_every=7), 1000, 64) == 7  # steps, when given
    assert dev_spacing(TrainConfig(evals=10), 95, 64) == 10  # about 10 checks otherwise


def test_new_settings_at_their_first_values_leave_keys_alone(model_dir, data_files):
    train, dev, test = (DataSource(str(p)) for p in data_files)
    job = FinetuneJob(str(model_dir), make_method("fmt"), train, dev, test)
    legacy = job.replace(schedule="cosine", decay_fraction=0.2, min_improvement=0.0)
    assert legacy.key == job.key
    assert job.replace(schedule="wsd").key != job.key
    assert job.replace(dev_every_examples=64).key != job.key


def test_packed_wsd_runs_give_the_records_they_give_alone(model_dir, data_files):
    train, dev, test = (DataSource(str(p)) for p in data_files)
    jobs = [
        FinetuneJob(
            str(model_dir),
            make_method("lora", rank=rank),
            train,
            dev,
            test,
            train_config=TrainConfig(examples=examples, subset_seed=i, seed=i, **WSD),
        )
        for i, (examples, rank) in enumerate([(60, 2), (120, 4), (200, 2)])
    ]
    alone, packed = [run_job(j) for j in jobs], run_pack(jobs)
    for a, b in zip(alone, packed, strict=True):
        assert (b.stop_reason, b.steps, b.best_step) == (a.stop_reason, a.steps, a.best_step)
        assert b.test_nll == pytest.approx(a.test_nll, abs=1e-3)
