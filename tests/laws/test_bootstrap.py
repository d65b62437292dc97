"""Bootstrap intervals: seeded, independent of the number of processes, covering the truth."""

import numpy as np
import pytest

from ftscale.laws import ScalingLaw, bootstrap
from ftscale.laws.uncertainty import crossing_interval

X = np.repeat([1e8, 3e8, 1e9, 3e9, 1e10], 10)
D = np.tile(np.geomspace(1e3, 1e5, 10), 5)


def runs(seed=0, beta=0.2, a=3e3):
    loss = a / (X**0.3 * D**beta) + 1.2
    return np.column_stack([X, D]), loss * np.exp(
        np.random.default_rng(seed).normal(0, 0.005, X.size)
    )


@pytest.fixture(scope="module")
def fitted():
    sizes, losses = runs()
    law = ScalingLaw("multiplicative").fit(sizes, losses)
    return law, sizes, losses


def test_same_seed_same_replicates_whatever_the_processes(fitted):
    law, sizes, losses = fitted
    one = bootstrap(law, sizes, losses, 24, seed=3, n_jobs=1)
    two = bootstrap(law, sizes, losses, 24, seed=3, n_jobs=2)
    np.testing.assert_array_equal(one.thetas, two.thetas)
    other = bootstrap(law, sizes, losses, 24, seed=4, n_jobs=1)
    assert not np.array_equal(one.thetas, other.thetas)


def test_intervals_are_calibrated_against_fresh_noise(fitted):
    """The bootstrap spread of each exponent matches the spread of fits to independent redraws of
    the noise (within a factor of 2.5: both are estimated from few samples)."""
    law, sizes, losses = fitted
    replicates = bootstrap(law, sizes, losses, 120, seed=0)
    assert replicates.n_failed == 0
    redraws = [ScalingLaw("multiplicative").fit(*runs(seed)).params_ for seed in range(1, 9)]
    samples = replicates.samples()
    for name in ("alpha", "beta", "E"):
        low, high = replicates.intervals(0.95)[name]
        assert low < law.params_[name] < high
        spread_boot = np.std(samples[name])
        spread_fresh = np.std([p[name] for p in redraws])
        assert spread_fresh / 2.5 < spread_boot < spread_fresh * 2.5, (
            name,
            spread_boot,
            spread_fresh,
        )
    low, high = replicates.predict_interval([[3e10, 1e6]])
    assert low[0] < law.predict([[3e10, 1e6]])[0] < high[0]


def test_crossing_interval_contains_the_point_estimate():
    (s1, l1), (s2, l2) = runs(seed=1, beta=0.1, a=600.0), runs(seed=2, beta=0.3, a=2e4)
    first = ScalingLaw("multiplicative").fit(s1, l1)
    second = ScalingLaw("multiplicative").fit(s2, l2)
    from ftscale.laws import crossings

    (point,) = crossings(first, second, 1e9)
    b1 = bootstrap(first, s1, l1, 60, seed=0)
    b2 = bootstrap(second, s2, l2, 60, seed=1)
    low, high = crossing_interval(b1, b2, 1e9)
    assert low < point < high


def test_a_replicate_whose_floor_collapsed_below_float_range_still_predicts_and_crosses():
    """Replicates whose E ran to exp(-2e7) (the quickstart's LoRA and prompt refits did) used to
    come back through their reported values as E = 0, log E = -inf and NaN predictions, counted
    as pairs that never cross; and an A of exp(800) overflowed with a RuntimeWarning."""
    import warnings

    from ftscale.laws import Bootstrap, crossings
    from ftscale.laws.uncertainty import crossing_samples

    steep = ScalingLaw.from_params("multiplicative", {"A": 4e3, "alpha": 0.3, "beta": 0.3, "E": 1})
    flat = ScalingLaw.from_params("multiplicative", {"A": 30.0, "alpha": 0.1, "beta": 0.05, "E": 1})
    collapsed = steep.theta_.copy()
    collapsed[3] = -2e7  # e = log E: the floor is gone
    huge = flat.theta_.copy()
    huge[0] = 800.0  # a = log A beyond float range
    first = Bootstrap(steep, np.array([steep.theta_, collapsed]), seed=0)
    second = Bootstrap(flat, np.array([flat.theta_, flat.theta_]), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        laws = first.laws()
        found = crossing_samples(first, second, 1e8)
        samples = Bootstrap(flat, np.array([flat.theta_, huge]), seed=0).samples()
    point = [[1e8, 1e3]]
    assert laws[1].predict(point)[0] == pytest.approx(steep.predict(point)[0] - 1.0)
    assert found[0] == pytest.approx(crossings(steep, flat, 1e8)[0])
    assert found[1] == pytest.approx(crossings(laws[1], flat, 1e8)[0])
    assert np.isinf(samples["A"][1])
    # A law given E = 0 (or saved after E underflowed) predicts its reducible part alone.
    zero_floor = ScalingLaw.from_params("multiplicative", {**steep.params_, "E": 0.0})
    assert zero_floor.predict(point)[0] == pytest.approx(steep.predict(point)[0] - 1.0)


def test_recentred_interval_keeps_the_width_and_holds_the_estimate():
    from ftscale.laws.uncertainty import percentile_interval, recentred_interval

    replicates = np.random.default_rng(0).gamma(2.0, 0.01, 400) + 0.02  # all above 0.015
    plain = percentile_interval(replicates, 0.9)
    assert plain[0] > 0.015  # the percentile interval misses the estimate
    low, high = recentred_interval(replicates, 0.015, 0.9)
    assert low < 0.015 < high
    assert high - low == pytest.approx(plain[1] - plain[0])
    assert np.median(replicates) - 0.015 == pytest.approx(plain[0] - low)
    assert recentred_interval(replicates, 0.001, 0.9, floor=0.0)[0] == 0.0
    assert np.isnan(recentred_interval(np.full(5, np.nan), 0.1, 0.9)).all()
