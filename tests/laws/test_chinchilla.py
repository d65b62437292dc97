"""Must-show 1: the fitter reproduces the Chinchilla replication (REFERENCE.md, Epoch AI 2024)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ftscale.laws import ScalingLaw
from ftscale.laws.fit import HuberObjective, multistart

FIXTURE = Path(__file__).parent.parent / "fixtures" / "chinchilla_svg_extracted.csv"

# Best fit of the additive law in log space, Huber delta 1e-3 summed, 4,500-start grid, L-BFGS
# (REFERENCE.md); objective 0.0010183.
EXPECTED = {"A": 477.84, "B": 2143.86, "E": 1.8172, "alpha": 0.3473, "beta": 0.3672}


def chinchilla_runs():
    """(sizes, losses): 240 runs, the 5 highest losses dropped as Epoch did; D = C / (6 N)."""
    frame = pd.read_csv(FIXTURE)
    frame["tokens"] = frame["Training FLOP"] / (6 * frame["Model Size"])
    frame = frame.sort_values("loss").iloc[:-5]
    return frame[["Model Size", "tokens"]].to_numpy(), frame["loss"].to_numpy()


@pytest.fixture(scope="module")
def chinchilla_fit():
    sizes, losses = chinchilla_runs()
    return ScalingLaw("additive", space="log").fit(sizes, losses)


def test_runs_are_the_240_of_the_replication():
    sizes, losses = chinchilla_runs()
    assert sizes.shape == (240, 2)
    assert losses.max() < 4.0  # the dropped five are the high-loss outliers


def test_default_grid_is_chinchillas_4500_starts(chinchilla_fit):
    assert chinchilla_fit.n_starts_ == 4500


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameters_within_one_percent(chinchilla_fit, name):
    assert chinchilla_fit.params_[name] == pytest.approx(EXPECTED[name], rel=0.01)


def test_objective_at_least_as_good_as_reference(chinchilla_fit):
    assert chinchilla_fit.objective_ <= 0.0010184
    assert chinchilla_fit.converged_


def test_estimates_inside_epochs_bootstrap_intervals(chinchilla_fit):
    p = chinchilla_fit.params_
    assert 0.317 <= p["alpha"] <= 0.373
    assert 0.331 <= p["beta"] <= 0.415
    assert 1.769 <= p["E"] <= 1.871


def test_mean_of_huber_stops_worse_than_sum():
    """The pitfall REFERENCE.md warns about: dividing the objective by n (the mean) makes L-BFGS's
    absolute stopping tests fire early, at a worse fit, from the same starts and options."""
    sizes, losses = chinchilla_runs()
    law = ScalingLaw("additive")
    summed = law.objective(sizes, losses)
    starts = law.form_.starts(losses)

    class Mean(HuberObjective):
        def value_and_grad(self, z):
            value, grad = super().value_and_grad(z)
            return value / losses.size, grad / losses.size

    mean = Mean(summed.blocks, summed.n_full, space="log", delta=1e-3)
    default_options = {"ftol": 2.2e-9, "gtol": 1e-5}  # scipy's defaults
    by_sum = multistart(summed, starts, n_refine=8, options=default_options)
    by_mean = multistart(mean, starts, n_refine=8, options=default_options)
    assert summed.value_and_grad(by_mean.x)[0] > by_sum.fun
    assert by_sum.fun == pytest.approx(0.0010183, abs=1e-7)
    assert np.isfinite(by_mean.fun)
