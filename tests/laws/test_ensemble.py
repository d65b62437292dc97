"""Issue 20: forms combined by their extrapolation evidence, and intervals that carry their
disagreement."""

import numpy as np
import pytest

from ftscale.errors import UserError
from ftscale.laws import Bootstrap, FitResult, ScalingLaw, crossings
from ftscale.laws.ensemble import (
    EnsembleLaw,
    build_ensemble,
    check_prediction,
    clear_winner,
    ensemble_weights,
    weighted_interval,
)
from ftscale.laws.selection import Selection

X = np.repeat([1e6, 4e6, 1.6e7], 3)
D = np.tile([100.0, 1000.0, 10000.0], 3)
MULT = {"A": 2e3, "alpha": 0.3, "beta": 0.2, "E": 1.2}
ADD = {"A": 4e2, "alpha": 0.35, "B": 30.0, "beta": 0.4, "E": 1.2}


def law(form, params):
    return ScalingLaw.from_params(form, params)


def test_weights_are_inverse_squared_scores_and_unscored_forms_get_none():
    weights = ensemble_weights({"a": 0.01, "b": 0.02, "c": float("inf"), "d": None})
    assert weights["a"] == pytest.approx(0.8) and weights["b"] == pytest.approx(0.2)
    assert weights["c"] == weights["d"] == 0.0
    assert ensemble_weights({"a": None, "b": float("nan")}) == {}


def test_a_form_clearly_wins_only_at_half_of_every_rivals_error():
    assert clear_winner({"a": 0.01, "b": 0.02, "c": 0.05}) == "a"
    assert clear_winner({"a": 0.01, "b": 0.015, "c": 0.05}) is None
    assert clear_winner({"a": 0.01, "b": float("inf")}) == "a"


def test_ensemble_law_is_the_weighted_mean_and_feeds_one_variable_forms_d_only():
    mult, power = law("multiplicative", MULT), law("power", {"A": 10.0, "beta": 0.3, "E": 1.0})
    ensemble = EnsembleLaw([mult, power], [0.25, 0.75])
    sizes = np.column_stack([X, D])
    expected = 0.25 * mult.predict(sizes) + 0.75 * power.predict(D[:, None])
    np.testing.assert_allclose(ensemble.predict(sizes), expected)
    assert ensemble.form_.variables == ("x", "d")
    with pytest.raises(UserError, match="summing to 1"):
        EnsembleLaw([mult, power], [0.5, 0.6])


def test_weighted_interval_spans_two_groups_only_when_both_carry_weight():
    draws = np.concatenate([np.full((100, 1), 1.0), np.full((100, 1), 2.0)])
    even = np.full(200, 0.5 / 100)
    low, high = weighted_interval(draws, even, 0.9)
    assert (low[0], high[0]) == (1.0, 2.0)
    lopsided = np.concatenate([np.full(100, 0.97 / 100), np.full(100, 0.03 / 100)])
    low, high = weighted_interval(draws, lopsided, 0.9)
    assert (low[0], high[0]) == (1.0, 1.0)


def _result(form, params, seed):
    """A fit of ``form`` to runs drawn around the multiplicative truth, with a fake bootstrap
    (its parameters jittered) so the test needs no refits."""
    truth = law("multiplicative", MULT).predict(np.column_stack([X, D]))
    observed = truth * np.exp(np.random.default_rng(seed).normal(0, 2e-3, truth.size))
    fitted = law(form, params)
    held = X.max() == X
    result = FitResult.from_law(
        fitted, np.column_stack([X, D]), observed, held, variables={"x": "params", "d": "examples"}
    )
    jitter = np.random.default_rng(seed).normal(0, 1e-3, (200, fitted.theta_.size))
    result.bootstrap = Bootstrap(fitted, fitted.theta_ + jitter, seed=seed)
    return result


def test_where_forms_disagree_the_mixture_interval_holds_both_forms_predictions():
    fits = [_result("multiplicative", MULT, 0), _result("additive", ADD, 1)]
    selection = Selection(
        None, "multiplicative", "params", "max", scores={"multiplicative": 0.010, "additive": 0.012}
    )
    ensemble = build_ensemble(fits, selection)
    assert ensemble.used == "ensemble" and "no form clearly wins" in ensemble.reason
    far = np.array([[1e9, 1e5]])
    low, high = ensemble.predict_interval(far, 0.9)
    own = [r.law.predict(far)[0] for r in fits]
    assert abs(own[0] - own[1]) > 0.01  # the forms disagree here
    assert low[0] <= min(own) and high[0] >= max(own)
    for r in fits:  # each form's own interval misses the other form's prediction
        lo, hi = r.bootstrap.predict_interval(far, 0.9)
        assert hi[0] - lo[0] < high[0] - low[0]
    np.testing.assert_allclose(
        ensemble.predicted, sum(ensemble.weights[r.form] * r.predicted for r in fits)
    )


def test_a_clear_winner_is_the_default_and_prediction_overrides_it():
    fits = [_result("multiplicative", MULT, 0), _result("additive", ADD, 1)]
    scores = {"multiplicative": 0.004, "additive": 0.012}
    selection = Selection(None, "multiplicative", "params", "max", scores=scores)
    assert build_ensemble(fits, selection).used == "multiplicative"
    assert build_ensemble(fits, selection, prediction="ensemble").used == "ensemble"
    assert build_ensemble(fits, selection, prediction="additive").used == "additive"
    record = build_ensemble(fits, selection).to_dict()
    assert record["form"] == "ensemble" and record["weights"]["multiplicative"] == pytest.approx(
        0.9
    )
    assert build_ensemble(fits[:1], selection) is None  # one form: nothing to combine


def test_prediction_names_an_option_value_it_knows():
    assert check_prediction("additive", ["multiplicative", "additive"]) == "additive"
    with pytest.raises(UserError, match=r"--prediction 'quartic': expected one of auto"):
        check_prediction("quartic", ["multiplicative"])


def test_an_ensembles_crossing_interval_mixes_its_forms_replicates():
    """The crossing of an ensemble with another method: the point is where the weighted mean
    laws cross, the interval and share come from its forms' replicates with its weights, so
    where the forms cross the rival far apart the interval holds both crossings."""
    from ftscale.laws import Fits
    from ftscale.laws.compare import default_critical_points

    fits = [_result("multiplicative", MULT, 0), _result("additive", ADD, 1)]
    for r in fits:
        r.group = "fmt"
    scores = {"multiplicative": 0.010, "additive": 0.012}
    selection = Selection("fmt", "multiplicative", "params", "max", scores=scores)
    combined = build_ensemble(fits, selection)
    rival = _result("multiplicative", {"A": 5.0, "alpha": 0.25, "beta": 0.05, "E": 2.8}, 2)
    rival.group = "lora"
    results = Fits([*fits, rival])
    results.ensembles = [combined]
    (point,) = default_critical_points(results, xs=[1e7], d_range=(1.0, 1e9), level=0.9)
    assert point.forms == ("ensemble", "multiplicative")
    own = [crossings(r.law, rival.law, 1e7, (1.0, 1e9))[0] for r in fits]
    assert point.crossings == pytest.approx(crossings(combined.law, rival.law, 1e7, (1.0, 1e9)))
    assert max(own) > 1.5 * min(own)  # the forms disagree on where FMT overtakes
    low, high = point.interval
    assert low <= min(own) and high >= max(own)
    assert point.crossing_share == pytest.approx(1.0)
    alone = default_critical_points(Fits([fits[0], rival]), xs=[1e7], d_range=(1.0, 1e9))
    assert alone[0].forms == ("multiplicative", "multiplicative")
    assert alone[0].interval[1] - alone[0].interval[0] < high - low


def test_weighted_percentiles_are_numpys_with_equal_weights_and_follow_the_weights():
    from ftscale.laws.uncertainty import percentile_interval, weighted_percentile_interval

    values = np.random.default_rng(3).normal(size=101)
    values[7] = np.nan  # a pair that never crosses
    even = weighted_percentile_interval(values, np.full(101, 1 / 101), 0.9)
    assert even == percentile_interval(values, 0.9)
    near = np.concatenate([np.full(50, 1.0), np.full(50, 10.0)])
    heavy = np.concatenate([np.full(50, 0.98 / 50), np.full(50, 0.02 / 50)])
    low, high = weighted_percentile_interval(near, heavy, 0.9)
    assert (low, high) == (1.0, 1.0)
    low, high = weighted_percentile_interval(near, heavy[::-1], 0.9)
    assert (low, high) == (10.0, 10.0)
