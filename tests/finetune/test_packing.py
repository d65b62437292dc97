"""Runs packed into one computation give the records they give alone (same science)."""

from __future__ import annotations

import pytest

from ftscale.finetune import DataSource, FinetuneJob, RunRecord, TrainConfig, make_method
from ftscale.finetune.packing import run_pack
from ftscale.finetune.recipe import run_job

#: (D_f, subset seed, seed, learning rate) of the members: different data, orders, inits, rates
#: and budgets (the budget follows D_f), so members leave the pack at different steps.
MEMBERS = [(60, 0, 0, None), (120, 1, 1, None), (200, 0, 2, 3e-3), (120, 0, 3, None)]


def _jobs(model_dir, data_files, method: str, options: list[dict], **settings) -> list:
    train, dev, test = (DataSource(str(p)) for p in data_files)
    jobs = []
    for i, (examples, subset_seed, seed, rate) in enumerate(MEMBERS):
        config = TrainConfig(
            examples=examples,
            subset_seed=subset_seed,
            seed=seed,
            learning_rate=rate,
            epochs=2,
            min_steps=10,
            evals=4,
            gen_examples=2,
            threads=1,
            **settings,
        )
        method_config = make_method(method, **options[i % len(options)])
        jobs.append(
            FinetuneJob(str(model_dir), method_config, train, dev, test, train_config=config)
        )
    return jobs


def _assert_same_science(alone: list[RunRecord], packed: list[RunRecord]) -> None:
    for a, b in zip(alone, packed, strict=True):
        assert b.status == a.status == "ok", b.reason
        assert b.key == a.key and b.job == a.job
        assert b.test_nll == pytest.approx(a.test_nll, abs=1e-3)
        assert b.best_step == a.best_step and b.steps == a.steps
        assert b.best_dev_nll == pytest.approx(a.best_dev_nll, abs=1e-3)
        assert [s for s, _ in b.dev_history] == [s for s, _ in a.dev_history]
        assert b.tokens_seen == a.tokens_seen and b.padding_fraction == a.padding_fraction


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("fmt", [{}]),
        ("lora", [{"rank": 2}, {"rank": 4}]),  # ranks zero-padded to the largest
        ("prompt", [{"prompt_length": 4}]),
    ],
)
def test_a_packed_run_gives_the_record_it_gives_alone(model_dir, data_files, method, options):
    jobs = _jobs(model_dir, data_files, method, options)
    alone = [run_job(job) for job in jobs]
    packed = run_pack(jobs)
    _assert_same_science(alone, packed)
    assert len({r.steps for r in packed}) > 1  # members left the pack at different steps


def test_a_diverging_member_fails_alone(model_dir, data_files):
    jobs = _jobs(model_dir, data_files, "fmt", [{}])
    jobs[1] = jobs[1].replace(learning_rate=1e30)  # a non-finite loss within a few steps
    packed = run_pack(jobs)
    failed = packed[1]
    assert failed.status == "failed" and "non-finite" in failed.reason
    assert failed.failed_step is not None and failed.test_nll is None
    others = [jobs[i] for i in (0, 2, 3)]
    _assert_same_science([run_job(j) for j in others], [packed[i] for i in (0, 2, 3)])


def test_runs_that_cannot_share_a_pack_run_alone(model_dir, data_files):
    jobs = _jobs(model_dir, data_files, "lora", [{"rank": 2}])
    jobs[2] = jobs[2].replace(batch_size=8)  # another batch shape: not one pack
    packed = run_pack(jobs)
    _assert_same_science([run_job(j) for j in jobs], packed)


def test_a_pack_takes_the_members_its_memory_budget_holds(model_dir, data_files, monkeypatch):
    import ftscale.finetune.packing as packing

    sizes = []
    real_pack = packing.Pack

    def recording_pack(runs):
        sizes.append(len(runs))
        return real_pack(runs)

    jobs = _jobs(model_dir, data_files, "fmt", [{}])
    monkeypatch.setattr(packing, "Pack", recording_pack)
    # room for two members' weights, gradients, optimizer moments and activations, not three
    budget = 2.5 * _one_footprint(jobs[0])
    monkeypatch.setattr(packing, "memory_budget", lambda run: (budget, "test"))
    packed = run_pack(jobs)
    assert sizes == [2, 2]
    _assert_same_science([run_job(j) for j in jobs], packed)
    plans = [r.memory_plan for r in packed]
    assert plans[0].startswith("memory plan: packed, member 1 of 2,") and "(test)" in plans[0]
    assert plans[1].startswith("memory plan: packed, member 2 of 2,")


def test_a_member_footprint_counts_its_activations(model_dir, data_files):
    """The policy's estimate, not only the tensors: a longer batch weighs more."""
    jobs = _jobs(model_dir, data_files, "fmt", [{}])
    small = _one_footprint(jobs[0].replace(batch_size=2))
    large = _one_footprint(jobs[0].replace(batch_size=16))
    assert large > small > 0


def _one_footprint(job) -> int:
    import copy

    from ftscale.finetune import recipe
    from ftscale.finetune.packing import footprint
    from ftscale.models.loading import load_model

    base, tokenizer, name = load_model(job.model)
    return footprint(recipe.setup(copy.deepcopy(base), tokenizer, name, recipe.job_inputs(job)))
