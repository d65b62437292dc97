"""Parametric replicates refitted together (ftscale.laws.batched) reach the optimum a separate
L-BFGS-B refit of each reaches, or a better one; joint fits bootstrap their shared parameters."""

import numpy as np
import pytest

from ftscale.laws import JointScalingLaw, ScalingLaw, bootstrap_joint, bootstrap_many, uncertainty

X = np.array([18_552, 32_928, 73_968], float)
D = np.array([50, 100, 200, 400], float)
SIZES = np.array([(x, d) for x in X for d in D])
TRUTH = {"A": 60.0, "alpha": 0.25, "beta": 0.12, "E": 3.0}


def _losses(seed: int, truth=TRUTH, sizes=SIZES) -> np.ndarray:
    law = ScalingLaw.from_params("multiplicative", truth)
    return law.predict(sizes) + 0.014 * np.random.default_rng(seed).standard_normal(len(sizes))


@pytest.mark.parametrize(("form", "space"), [("multiplicative", "log"), ("additive", "linear")])
def test_replicates_refitted_together_reach_the_one_at_a_time_optimum(form, space):
    losses = _losses(0)
    law = ScalingLaw(form, space=space, n_refine=8).fit(SIZES, losses)
    together = bootstrap_many([(law, SIZES, losses, 0.01)], 60, seed=1, n_jobs=1)[0]
    task = uncertainty._task(law, SIZES, losses, 0.01)
    worse = []
    for i, theta in enumerate(together.thetas):
        redrawn = task.draw(np.random.default_rng([1, i]))[1]  # replicate i's losses
        alone, _ = uncertainty._refit(task, SIZES, redrawn)
        objective = law.objective(SIZES, redrawn)
        f_together = objective.value_and_grad(theta[objective.free])[0]
        f_alone = objective.value_and_grad(alone[objective.free])[0]
        worse.append((f_together - f_alone) / f_alone)
    assert together.n_failed == 0 and together.n_unconverged == 0
    # never materially worse than L-BFGS-B alone (and often better: it stops early at kinks)
    assert np.max(worse) < 0.02 and np.median(worse) <= 1e-6


def test_a_joint_bootstrap_gives_both_groups_the_shared_parameters_of_each_replicate():
    other = {**TRUTH, "A": 20.0, "alpha": 0.1}
    tokens = np.array([(t, d) for t in (1.3e5, 2.6e5, 5.2e5) for d in D])
    groups = {"model_size": (SIZES, _losses(1)), "pretraining": (tokens, _losses(2, other, tokens))}
    joint = JointScalingLaw("multiplicative", n_refine=8).fit(groups)
    boots = bootstrap_joint(joint, groups, {"model_size": 0.01, "pretraining": 0.01}, 80, seed=0)
    size, data = boots["model_size"].samples(), boots["pretraining"].samples()
    np.testing.assert_array_equal(size["beta"], data["beta"])
    np.testing.assert_array_equal(size["E"], data["E"])
    assert np.ptp(size["beta"]) > 0 and np.ptp(size["alpha"] - data["alpha"]) > 0
    for name, truth in (("beta", TRUTH["beta"]), ("E", TRUTH["E"])):
        low, high = boots["model_size"].intervals(0.99)[name]
        assert low < truth < high, (name, low, high)
    # the same seed gives the same replicates whatever the number of processes
    again = bootstrap_joint(joint, groups, {"model_size": 0.01, "pretraining": 0.01}, 80, n_jobs=1)
    np.testing.assert_array_equal(again["model_size"].thetas, boots["model_size"].thetas)


def test_a_replicate_whose_jacobian_vanishes_does_not_break_the_batch():
    """A replicate whose parameters do not move its predictions (a zero Jacobian, e.g. every
    term underflowed) makes its damped Gauss-Newton matrix singular; the batch still steps."""
    from ftscale.laws import batched

    residuals, jacobian = np.zeros((2, 5)), np.zeros((2, 5, 3))
    jacobian[0] = 1.0  # the first replicate is ordinary
    step = batched._step(1e-3, residuals, jacobian, np.array([1e-3, 1e-30]))
    assert step.shape == (2, 3) and np.isfinite(step).all()
