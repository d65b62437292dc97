"""The one learning-rate schedule, shared by pretraining and finetuning."""

from __future__ import annotations

import itertools

import pytest

from ftscale.schedules import warmup_cosine


def test_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    rates = [warmup_cosine(s, 100, 1e-3, 10, 0.1) for s in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert max(rates) == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(rates[9:]))
    assert warmup_cosine(100, 100, 1e-3, 10, 0.1) == pytest.approx(1e-4)
    # halfway through the decay the rate is halfway between peak and floor
    assert warmup_cosine(55, 100, 1.0, 10, 0.2) == pytest.approx(0.6)


def test_without_warmup_the_first_step_is_at_the_peak():
    assert warmup_cosine(0, 50, 0.5, 0, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(50, 50, 0.5, 0, 0.0) == pytest.approx(0.0, abs=1e-12)


def test_pretraining_and_finetuning_use_this_schedule():
    from ftscale.finetune import recipe
    from ftscale.models import pretrain

    assert pretrain.warmup_cosine is warmup_cosine
    assert recipe.warmup_cosine is warmup_cosine
