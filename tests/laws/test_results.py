"""Fit results built from laws fitted any way (joint, fixed parameters), their JSON records and
the way back, and critical points between groups (leader, level, the X values of each pair)."""

import json

import numpy as np
import pytest

from ftscale.laws import (
    FitResult,
    JointScalingLaw,
    ScalingLaw,
    bootstrap_results,
    critical_points,
    fit_table,
    law_from_record,
    mean_abs_deviation,
)

VARIABLES = {"x": "params", "d": "examples"}


def sweep(a, alpha, beta, e, seed, xs=(1e7, 3e7, 1e8, 3e8)):
    """Sizes (params, examples) and noisy losses of one sweep of the multiplicative law."""
    x, d = (a_.ravel() for a_ in np.meshgrid(xs, np.geomspace(200, 2e4, 5), indexing="ij"))
    loss = a / (x**alpha * d**beta) + e
    noise = np.random.default_rng(seed).normal(0, 2e-3, loss.size)
    return np.column_stack([x, d]), loss * np.exp(noise)


@pytest.fixture(scope="module")
def joint():
    """Two sweeps sharing beta and E, fitted jointly with their largest X held out."""
    sweeps = {"size": sweep(4e3, 0.35, 0.3, 1.0, 1), "data": sweep(900.0, 0.25, 0.3, 1.0, 2)}
    held = {k: s[:, 0] == s[:, 0].max() for k, (s, _) in sweeps.items()}
    fitted = JointScalingLaw("multiplicative", n_refine=16).fit(
        {k: (s[~held[k]], y[~held[k]]) for k, (s, y) in sweeps.items()}
    )
    return sweeps, held, fitted


def test_a_joint_law_becomes_a_result_with_its_deltas(joint):
    sweeps, held, fitted = joint
    sizes, losses = sweeps["size"]
    law = fitted.laws_["size"]
    result = FitResult.from_law(law, sizes, losses, held["size"], variables=VARIABLES, group="s")
    mask = held["size"]
    assert result.delta_h == pytest.approx(
        mean_abs_deviation(law.predict(sizes[mask]), losses[mask])
    )
    assert result.delta_e == pytest.approx(
        mean_abs_deviation(law.predict(sizes[~mask]), losses[~mask])
    )
    assert (result.n_fit, result.n_heldout) == (15, 5)
    assert result.fixed_params() == {"beta", "E"}
    assert result.form == "multiplicative" and result.group == "s"


def test_intervals_leave_out_fixed_parameters_and_follow_the_level(joint):
    sweeps, held, fitted = joint
    sizes, losses = sweeps["data"]
    result = FitResult.from_law(
        fitted.laws_["data"], sizes, losses, held["data"], variables=VARIABLES, level=0.9
    )
    bootstrap_results([result], 40, seed=0)
    wide = result.intervals()
    assert set(wide) == {"A", "alpha"}  # beta and E were held at the joint values
    narrow = result.intervals(0.5)
    for name, (low, high) in wide.items():
        assert low < narrow[name][0] < result.law.params_[name] < narrow[name][1] < high
    assert result.coverage()["level"] == 0.9
    assert result.to_dict()["intervals"] == wide


def test_a_fixed_parameter_law_round_trips_through_its_record():
    sizes, losses = sweep(2e3, 0.3, 0.2, 1.1, 3)
    law = ScalingLaw("multiplicative", fixed={"beta": 0.2, "E": 1.1}, n_refine=16)
    law.fit(sizes[:15], losses[:15])
    result = FitResult.from_law(law, sizes, losses, np.arange(20) >= 15, variables=VARIABLES)
    bootstrap_results([result], 12, seed=5)
    record = json.loads(json.dumps(result.to_dict(points=True)))
    assert record["fixed"] == {"beta": 0.2, "E": 1.1}
    back = FitResult.from_dict(record)
    assert back.law.fixed == {"beta": 0.2, "E": 1.1} and back.level == result.level
    assert back.intervals() == result.intervals() and set(back.intervals()) == {"A", "alpha"}
    np.testing.assert_allclose(back.law.predict(sizes), law.predict(sizes), rtol=1e-12)
    np.testing.assert_allclose(law_from_record(record).predict(sizes), law.predict(sizes))
    np.testing.assert_array_equal(back.bootstrap.thetas, result.bootstrap.thetas)
    assert back.delta_h == pytest.approx(result.delta_h)


@pytest.fixture(scope="module")
def three_methods():
    """fmt (steep in D_f), lora (shallow) on four model sizes; prompt on two other sizes."""
    columns = {"params": [], "examples": [], "test_nll": [], "method": []}
    specs = (
        ("fmt", 4e3, 0.35, 0.3, (1e7, 3e7, 1e8, 3e8)),
        ("lora", 8.0, 0.12, 0.05, (1e7, 3e7, 1e8, 3e8)),
        ("prompt", 6.0, 0.1, 0.04, (2e7, 5e7, 2e8)),
    )
    for k, (method, a, alpha, beta, xs) in enumerate(specs):
        sizes, loss = sweep(a, alpha, beta, 1.0, 10 + k, xs)
        columns["params"] += sizes[:, 0].tolist()
        columns["examples"] += sizes[:, 1].tolist()
        columns["test_nll"] += loss.tolist()
        columns["method"] += [method] * loss.size
    columns = {k: np.array(v, dtype=object if k == "method" else float) for k, v in columns.items()}
    return fit_table(columns, y="test_nll", d="examples", x="params", n_bootstrap=30)


def test_the_leader_is_the_group_lower_at_the_smallest_common_d(three_methods):
    points = critical_points(three_methods, xs=[1e8])
    by_pair = {(p.first, p.second): p for p in points}
    fmt_lora = by_pair[("fmt", "lora")]
    # LoRA's reducible loss at D_f = 200 is half FMT's; FMT overtakes it further on.
    assert fmt_lora.leader == "lora" and len(fmt_lora.crossings) == 1
    laws = {r.group: r.law for r in three_methods}
    low = fmt_lora.observed[0]
    assert low == 200.0
    assert laws["lora"].predict([[1e8, low]])[0] < laws["fmt"].predict([[1e8, low]])[0]
    assert fmt_lora.to_dict()["leader"] == "lora"
    assert fmt_lora.to_dict()["observed"] == list(fmt_lora.observed)


def test_each_pair_is_evaluated_at_the_x_values_it_ran(three_methods):
    points = critical_points(three_methods)
    xs = {}
    for p in points:
        xs.setdefault((p.first, p.second), []).append(p.x)
    assert xs[("fmt", "lora")] == [1e7, 3e7, 1e8, 3e8]
    assert xs[("fmt", "prompt")] == [1e7, 2e7, 3e7, 5e7, 1e8, 2e8, 3e8]


def test_crossing_intervals_follow_the_level(three_methods):
    (wide,) = critical_points(three_methods[:2], xs=[1e8])
    (narrow,) = critical_points(three_methods[:2], xs=[1e8], level=0.5)
    assert wide.crossings == narrow.crossings
    assert wide.interval[0] < narrow.interval[0] <= narrow.interval[1] < wide.interval[1]
