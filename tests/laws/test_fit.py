"""The fitter: a vectorised grid pass and refining the best starts find what L-BFGS finds from
every start."""

import numpy as np
import pytest

from ftscale.laws import JointScalingLaw, ScalingLaw, custom_form, get_form
from ftscale.laws.fit import lbfgs, multistart

RNG = np.random.default_rng(7)
X = np.repeat([1e8, 3e8, 1e9, 3e9], 6)
D = np.tile(np.geomspace(1e3, 3e5, 6), 4)


def noisy(loss, sd=0.01, seed=0):
    return loss * np.exp(np.random.default_rng(seed).normal(0, sd, loss.size))


CASES = {
    "power": (D, noisy(20.0 / D**0.3 + 0.8)),
    "multiplicative": (np.column_stack([X, D]), noisy(3e3 / (X**0.3 * D**0.2) + 1.2)),
    "additive": (np.column_stack([X, D]), noisy(5e2 / X**0.3 + 40.0 / D**0.35 + 1.2)),
    "rectified": (D, noisy(300.0 / (50.0 + D**0.6) + 1.0)),
}
SMALL_GRIDS = {
    "power": {"a": [0, 5, 10], "beta": [0.1, 0.5, 1.0], "e": [-1, 0, 1]},
    "multiplicative": {"a": [0, 5, 10], "alpha": [0, 0.5], "beta": [0.1, 0.5], "e": [-1, 0, 1]},
    "additive": {"a": [0, 10], "b": [0, 10], "e": [-1, 0.5], "alpha": [0, 1], "beta": [0, 1]},
    "rectified": {"b": [0, 5, 10], "dl": [0, 5], "beta": [0.25, 1.0], "e": [-1, 0, 1]},
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_refining_best_starts_equals_refining_every_start(name):
    sizes, losses = CASES[name]
    law = ScalingLaw(name, grid=SMALL_GRIDS[name])
    objective = law.objective(sizes, losses)
    starts = law.form_.starts(losses)
    every = min((lbfgs(objective, s) for s in starts), key=lambda r: r.fun)
    best = multistart(objective, starts, n_refine=8)
    assert best.n_refined == 8 < len(starts)
    assert best.fun <= every.fun * (1 + 1e-6)
    np.testing.assert_allclose(
        list(get_form(name).to_reported(best.x).values()),
        list(get_form(name).to_reported(every.x).values()),
        rtol=1e-3,
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_fit_predicts_its_own_runs(name):
    sizes, losses = CASES[name]
    law = ScalingLaw(name).fit(sizes, losses)
    assert law.converged_
    assert np.mean(np.abs(law.predict(sizes) - losses)) < 0.02 * losses.mean()
    assert set(law.params_) == set(get_form(name).reported)


def test_linear_space_fit_differs_from_log_but_both_recover():
    sizes, losses = CASES["multiplicative"]
    log_fit = ScalingLaw("multiplicative", space="log").fit(sizes, losses)
    lin_fit = ScalingLaw("multiplicative", space="linear").fit(sizes, losses)
    assert log_fit.params_ != lin_fit.params_
    for fit in (log_fit, lin_fit):
        assert fit.params_["beta"] == pytest.approx(0.2, abs=0.03)


def test_fit_returns_self_and_from_params_predicts_like_the_formula():
    law = ScalingLaw("multiplicative")
    assert law.fit(*CASES["multiplicative"]) is law
    given = ScalingLaw.from_params(
        "multiplicative", {"A": 1.2e5, "alpha": 0.52, "E": 0.75, "beta": 0.15}
    )
    # REFERENCE.md: En-De FMT at N = 1e9, D_f = 1e6 gives L = 1.06.
    assert given.predict([[1e9, 1e6]])[0] == pytest.approx(1.066, abs=1e-3)


def test_unfitted_law_refuses_to_predict():
    from ftscale.errors import UserError

    with pytest.raises(UserError, match="not fitted"):
        ScalingLaw("power").predict([1.0, 2.0])


def test_custom_form_fits_without_touching_ftscale():
    form = custom_form(
        "shifted-power-test",
        lambda p, d: p["A"] / (d + p["D0"]) ** p["beta"] + p["E"],
        params=("a", "d0", "beta", "e"),
        log_params={"a": "A", "d0": "D0", "e": "E"},
        grid={"a": [0, 3, 6], "d0": [0, 4, 8], "beta": [0.2, 0.6], "e": [-1, 0, 0.5]},
        formula="A / (D + D0)^beta + E",
    )
    d = np.geomspace(10, 1e5, 12)
    loss = 30.0 / (d + 200.0) ** 0.5 + 1.1
    law = ScalingLaw("shifted-power-test").fit(d, loss)
    assert law.form_ is form
    for name, value in {"A": 30.0, "D0": 200.0, "beta": 0.5, "E": 1.1}.items():
        assert law.params_[name] == pytest.approx(value, rel=1e-3)


def test_joint_fit_shares_beta_and_e_then_refits_per_group():
    d = np.tile(np.geomspace(1e3, 1e5, 6), 3)
    x1, x2 = np.repeat([1e8, 3e8, 1e9], 6), np.repeat([1e10, 3e10, 1e11], 6)
    groups = {
        "model_size": (np.column_stack([x1, d]), 2e3 / (x1**0.4 * d**0.2) + 0.9),
        "pretraining": (np.column_stack([x2, d]), 90.0 / (x2**0.15 * d**0.2) + 0.9),
    }
    joint = JointScalingLaw("multiplicative", shared=("beta", "E")).fit(groups)
    assert joint.shared_["beta"] == pytest.approx(0.2, rel=1e-4)
    assert joint.shared_["E"] == pytest.approx(0.9, rel=1e-4)
    assert joint.laws_["model_size"].params_["alpha"] == pytest.approx(0.4, rel=1e-4)
    assert joint.laws_["pretraining"].params_["alpha"] == pytest.approx(0.15, rel=1e-4)
    assert joint.laws_["pretraining"].params_["E"] == joint.shared_["E"]
