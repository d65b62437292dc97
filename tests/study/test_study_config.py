"""The study file and the run spec: one schema of training settings, method names made
canonical, and every per-method fact read from the method registry."""

from __future__ import annotations

from pathlib import Path

import pytest
from study_helpers import merged, smoke_config

from ftscale.errors import UserError
from ftscale.finetune.spec import (
    STUDY_DEFAULTS,
    TrainConfig,
    setting_flag,
    setting_scope,
    study_train_fields,
)
from ftscale.study.config import parse_study, size_option
from ftscale.study.plan import make_plan


def _plan(tmp_path: Path, methods: dict, pet_sizes: dict, **changes: dict):
    """The smoke study with these methods and PET sizes (replacing its own) and ``changes``
    merged in."""
    raw = merged(smoke_config(), changes)
    raw["methods"], raw["sweeps"]["pet_size"]["sizes"] = methods, pet_sizes
    study = parse_study(raw, "s.toml", tmp_path)
    return study, make_plan(study, tmp_path / "dir", tmp_path / "cache")


def test_aliases_become_registry_names_everywhere(tmp_path):
    """``[methods] full = {}`` used to plan runs named 'full', which the findings that compare
    FMT with PET never saw."""
    study, plan = _plan(
        tmp_path,
        {"full": {}, "prompt-tuning": {"prompt_length": 8}},
        {"Prompt-Tuning": [4, 8]},
        sweeps={"model_size": {"methods": ["full", "prompt-tuning"]}},
        examples={"per_method": {"full": [50, 100]}},
        train={"lr": {"full": 0.01}},
    )
    config = study.config
    assert list(config.methods) == ["fmt", "prompt"]
    assert config.sweeps.model_size.methods == ["fmt", "prompt"]
    assert list(config.sweeps.pet_size.sizes) == ["prompt"]
    assert config.examples.for_method("fmt") == [50, 100]
    assert config.train.rate_for("fmt") == 0.01
    assert {r.method for r in plan.runs} == {"fmt", "prompt"}
    assert {r.job.method.name for r in plan.runs} == {"fmt", "prompt"}


def test_dora_can_be_swept_on_its_rank(tmp_path):
    """The PET-size option comes from the registry, not a table of two methods."""
    assert size_option("dora") == "rank" and size_option("loha") == "r"
    assert size_option("prefix_tuning") == "num_virtual_tokens" and size_option("fmt") is None
    _, plan = _plan(tmp_path, {"fmt": {}, "dora": {"rank": 2}}, {"dora": [1, 2, 4]})
    pet = [r for r in plan.runs if "pet_size" in r.sweeps]
    assert {r.method_size for r in pet} == {1, 2, 4}
    assert all(r.job.method.options.get("use_dora") for r in pet)


def test_the_train_table_is_generated_from_the_settings_schema():
    fields = study_train_fields()
    expected = {
        setting_flag(name)
        for name in TrainConfig.model_fields
        if setting_scope(name) not in ("run", "task") and name != "threads"
    }
    assert set(fields) == expected and "lr" in fields and "max_grad_norm" in fields
    for flag, (_, info) in fields.items():
        name = "learning_rate" if flag == "lr" else flag
        default = TrainConfig.model_fields[name].default
        assert info.default == STUDY_DEFAULTS.get(name, default)
        assert info.description == TrainConfig.model_fields[name].description


def test_a_study_and_python_build_the_same_settings(tmp_path):
    chosen = {"epochs": 2.5, "min_steps": 7, "max_grad_norm": 0.5, "fast_head": False}
    study = parse_study(merged(smoke_config(), {"train": chosen}), "s.toml", tmp_path)
    from_study = study.config.train.settings_for(
        "lora", examples=100, subset_seed=1, eval_examples=16
    )
    smoke_train = smoke_config()["train"]
    from_python = TrainConfig(
        **{**STUDY_DEFAULTS, **smoke_train, **chosen},
        examples=100,
        subset_seed=1,
        eval_examples=16,
    )
    assert from_study == from_python


def test_settings_refuse_bad_values_in_one_line():
    with pytest.raises(UserError, match=r"^batch_size: .*greater than or equal to 1 \(got 0\)$"):
        TrainConfig(batch_size=0)
    with pytest.raises(UserError, match=r"^--epochs: .*finite"):
        TrainConfig.from_dict({"epochs": float("inf")}, where=lambda n: "--" + n)
    with pytest.raises(UserError, match=r"job: train_config.bogus: Extra inputs"):
        TrainConfig.from_dict({"bogus": 1}, "job: train_config")
    assert TrainConfig(patience=0).patience is None  # 0 means never stop early
    assert TrainConfig(learning_rate="AUTO").learning_rate == "auto"
    assert TrainConfig(learning_rate="1e-3").learning_rate == pytest.approx(1e-3)
    import numpy as np

    assert TrainConfig(examples=np.int64(5)).examples == 5  # a numpy count is a count
    with pytest.raises(UserError, match="valid integer"):
        TrainConfig(examples=True)


def _beta_finding(betas: dict[str, float], spread: float = 0.01) -> dict:
    """Finding 4 on model-size fits with these betas, each with 100 replicates spread
    uniformly over beta +- spread."""
    import numpy as np

    from ftscale.study.analysis import FINDINGS, _FindingInputs

    fits = {
        (m, "model_size"): {"method": m, "sweep": "model_size", "params": {"beta": b}}
        for m, b in betas.items()
    }
    draws = np.linspace(-spread, spread, 100)
    samples = {  # every other method's replicates in reverse, so that differences spread too
        (m, "model_size", "multiplicative"): {
            "params": {"beta": b + draws[:: (-1) ** i]},
            "not_identified": {},
        }
        for i, (m, b) in enumerate(betas.items())
    }
    inputs = _FindingInputs(list(fits.values()), [], list(betas), fits, samples, level=0.9)
    return FINDINGS[4](inputs)


@pytest.mark.parametrize(
    ("betas", "status"),
    [
        ({"fmt": 0.3, "lora": 0.2, "prompt": 0.1}, "reproduced"),
        ({"fmt": 0.3, "dora": 0.2, "p_tuning": 0.1}, "reproduced"),  # by family, not by name
        ({"fmt": 0.1, "dora": 0.2}, "not reproduced"),
        ({"dora": 0.1, "prompt": 0.2}, "not reproduced"),
        ({"fmt": 0.205, "lora": 0.2}, "inconclusive"),  # the intervals overlap
        ({"ia3": 0.1}, "not testable"),
    ],
)
def test_the_beta_finding_compares_method_families(betas, status):
    finding = _beta_finding(betas)
    assert finding["status"] == status
    for comparison in finding["comparisons"]:  # the deciding interval is shown with the verdict
        low, high = comparison["interval"]
        assert f"[{low:.3g}, {high:.3g}]" in finding["detail"]


def test_a_finding_on_a_parameter_that_is_not_identified_is_inconclusive():
    from ftscale.study.analysis import FINDINGS, _FindingInputs

    fits = {
        (m, "model_size"): {"params": {"beta": b}} for m, b in {"fmt": 0.3, "lora": 0.1}.items()
    }
    samples = {
        ("fmt", "model_size", "multiplicative"): {
            "params": {"beta": [0.3, 0.31, 0.29]},
            "not_identified": {"beta": "moves with alpha in the refits (corr +0.999)"},
        },
        ("lora", "model_size", "multiplicative"): {"params": {"beta": [0.1, 0.11, 0.09]}},
    }
    finding = FINDINGS[4](_FindingInputs(list(fits.values()), [], ["fmt", "lora"], fits, samples))
    assert finding["status"] == "inconclusive"
    assert finding["comparisons"][0]["interval"] is None and "corr" in finding["detail"]


@pytest.mark.parametrize(
    ("interval", "bounds", "verdict"),
    [
        ((0.1, 0.2), (0.0, None), "reproduced"),
        ((-0.2, -0.1), (0.0, None), "not reproduced"),
        ((-0.1, 0.1), (0.0, None), "inconclusive"),
        ((-0.005, 0.005), (-0.01, 0.01), "reproduced"),
        ((0.02, 0.03), (-0.01, 0.01), "not reproduced"),
        ((0.005, 0.03), (-0.01, 0.01), "inconclusive"),
        (None, (0.0, None), "inconclusive"),
        ((float("nan"), 1.0), (0.0, None), "inconclusive"),
    ],
)
def test_verdicts_follow_the_deciding_interval(interval, bounds, verdict):
    from ftscale.study.analysis import decide

    assert decide(interval, *bounds) == verdict


def test_runs_are_packed_with_runs_that_can_train_with_them(tmp_path):
    from ftscale.study.plan import pack_runs, pack_size

    _, plan = _plan(
        tmp_path,
        {"fmt": {}, "lora": {"rank": 4}, "prompt": {"prompt_length": 8}},
        {"lora": [2, 4, 8], "prompt": [4, 8]},
    )
    packs = pack_runs(plan.runs, 4)
    assert sorted(r.key for p in packs for r in p) == sorted(r.key for r in plan.runs)
    for pack in packs:
        assert 1 <= len(pack) <= 4
        assert len({(r.checkpoint.rung, r.method) for r in pack}) == 1
        if pack[0].method == "prompt":  # one prompt length per pack; LoRA ranks may mix
            assert len({r.method_size for r in pack}) == 1
    lora_pet = [p for p in packs if p[0].method == "lora" and len({r.method_size for r in p}) > 1]
    assert lora_pet, "LoRA runs of different ranks share packs"
    assert all(len(p) == 1 for p in pack_runs(plan.runs, 1))
    assert pack_size("auto", "cpu") == 1 and pack_size("auto", "cuda:0") == 8
    assert pack_size(3, "cpu") == 3
