"""Must-show 5: degenerate input gets a clear one-line error or an explicit warning."""

import warnings

import numpy as np
import pytest

from ftscale.errors import DataError, UserError
from ftscale.laws import FitWarning, ScalingLaw, fit_table, get_form
from ftscale.laws.fit import HuberObjective, multistart

D = np.geomspace(1e2, 1e5, 6)
X = np.repeat([1e8, 1e9], 6)
DD = np.tile(D, 2)
LOSS2 = 50.0 / (X**0.1 * DD**0.3) + 1.0
LOSS1 = 50.0 / D**0.3 + 1.0


def sizes2():
    return np.column_stack([X, DD])


@pytest.mark.parametrize(
    "form, X_, y, message",
    [
        ("power", D[:2], LOSS1[:2], "2 point(s) cannot determine the 3 free parameters"),
        (
            "multiplicative",
            np.column_stack([np.full(12, 1e9), DD]),
            LOSS2,
            "size 'x' has a single distinct value",
        ),
        ("power", np.full(6, 1e3), LOSS1, "size 'd' has a single distinct value"),
        ("power", np.r_[0.0, D[1:]], LOSS1, "size 'd' must be positive, got 0 at row 1"),
        ("power", np.r_[-5.0, D[1:]], LOSS1, "size 'd' must be positive, got -5 at row 1"),
        (
            "power",
            D,
            np.r_[np.nan, LOSS1[1:]],
            "1 loss value(s) are NaN or infinite (first at row 1)",
        ),
        ("power", D, np.r_[LOSS1[:3], np.inf, LOSS1[4:]], "NaN or infinite (first at row 4)"),
        ("power", D, np.full(6, 2.0), "all 6 losses are equal"),
        ("power", D, np.r_[-1.0, LOSS1[1:]], "losses must be positive"),
        ("power", D, LOSS1[:5], "6 sizes but 5 losses"),
        ("multiplicative", D, LOSS1, "takes 2 size variable(s) (x, d)"),
    ],
)
def test_degenerate_runs_raise_one_line_errors(form, X_, y, message):
    with pytest.raises(DataError if "size variable" not in message else UserError) as caught:
        ScalingLaw(form).fit(X_, y)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_names_label_sizes_in_messages():
    with pytest.raises(DataError, match="size 'params' has a single distinct value"):
        ScalingLaw("multiplicative").fit(
            np.column_stack([np.full(12, 1e9), DD]), LOSS2, names=["params", "examples"]
        )


def test_fixed_parameters_reduce_the_points_needed():
    law = ScalingLaw("power", fixed={"E": 1.0}).fit(D[:2], LOSS1[:2])
    assert law.params_["beta"] == pytest.approx(0.3, rel=1e-6)


def test_unknown_form_and_parameter_are_user_errors():
    with pytest.raises(UserError, match="unknown law form 'cubic'"):
        get_form("cubic")
    with pytest.raises(UserError, match="has no parameter 'gamma'"):
        ScalingLaw("power", fixed={"gamma": 1.0}).fit(D, LOSS1)
    with pytest.raises(UserError, match="space must be one of log, linear"):
        ScalingLaw("power", space="sqrt").fit(D, LOSS1)


def test_missing_column_names_the_column():
    columns = {"examples": D, "loss": LOSS1}
    with pytest.raises(UserError, match=r"runs\.csv: column 'test_nll' not found"):
        fit_table(columns, y="test_nll", d="examples", forms=["power"], source="runs.csv")


def test_group_and_form_prefix_data_errors():
    columns = {
        "examples": np.r_[D, D],
        "loss": np.r_[LOSS1, np.full(6, 3.0)],
        "method": ["a"] * 6 + ["b"] * 6,
    }
    columns = {k: np.asarray(v) for k, v in columns.items()}
    with pytest.raises(DataError, match=r"t\.csv, method=b, form power: all 6 losses are equal"):
        fit_table(columns, y="loss", d="examples", group="method", forms=["power"], source="t.csv")


def test_non_convergence_is_reported_with_a_warning():
    law = ScalingLaw("power")
    objective = law.objective(D, LOSS1)
    result = multistart(objective, law.form_.starts(LOSS1), n_refine=2, options={"maxiter": 2})
    assert not result.converged
    with pytest.warns(FitWarning, match="did not converge"):
        law._set_result(objective, result)
    assert law.converged_ is False


def test_converged_fit_gives_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        law = ScalingLaw("power").fit(D, LOSS1)
    assert law.converged_


def test_objective_rejects_bad_delta():
    form = get_form("power")
    with pytest.raises(UserError, match="Huber delta must be positive"):
        HuberObjective([], len(form.params), delta=0.0)
