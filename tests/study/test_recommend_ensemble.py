"""Issue 20: `ftscale recommend` predicts with the ensemble of the forms where the study's law
choice finds no clear winner, with the mixture interval."""

import numpy as np
import pytest

from ftscale.laws import Bootstrap, FitResult, ScalingLaw
from ftscale.study.recommend import _choose, _method_record

X = np.repeat([1e6, 4e6, 1.6e7], 3)
D = np.tile([100.0, 1000.0, 10000.0], 3)
LAWS = {
    "multiplicative": {"A": 2e3, "alpha": 0.3, "beta": 0.2, "E": 1.2},
    "additive": {"A": 4e2, "alpha": 0.35, "B": 30.0, "beta": 0.4, "E": 1.2},
}


def _record(form: str) -> dict:
    law = ScalingLaw.from_params(form, LAWS[form])
    sizes = np.column_stack([X, D])
    truth = ScalingLaw.from_params("multiplicative", LAWS["multiplicative"]).predict(sizes)
    observed = truth * np.exp(np.random.default_rng(0).normal(0, 2e-3, truth.size))
    result = FitResult.from_law(
        law, sizes, observed, X.max() == X, variables={"x": "x", "d": "examples"}, group="fmt"
    )
    jitter = np.random.default_rng(1).normal(0, 1e-3, (100, law.theta_.size))
    result.bootstrap = Bootstrap(law, law.theta_ + jitter, seed=1)
    return {"method": "fmt", "sweep": "model_size", **result.to_dict(points=True)}


def _analysis(winner):
    from ftscale.study.analysis import _default_prediction

    fits = [_record(form) for form in LAWS]
    best = min(fits, key=lambda f: f["delta_h"])["form"]
    choice = {"method": "fmt", "sweep": "model_size", "best": best, "winner": winner}
    return {
        "fits": fits,
        "best_forms": {"fmt/model_size": best},
        "law_choice": [{**choice, **_default_prediction(winner, fits)}],
    }


def test_no_clear_winner_recommends_the_ensemble_with_its_mixture_interval():
    (chosen,) = _choose(_analysis(None)).values()
    assert chosen.form == "ensemble"
    deltas = {f["form"]: f["delta_h"] for f in _analysis(None)["fits"]}
    inverse = {k: v**-2 for k, v in deltas.items()}
    for form, weight in chosen.weights.items():
        assert weight == pytest.approx(inverse[form] / sum(inverse.values()))
    point = np.array([[1e9, 1e5]])
    record = _method_record(chosen, point, 0.9)
    own = [ScalingLaw.from_params(f, p).predict(point)[0] for f, p in LAWS.items()]
    assert record["weights"] and "no form clearly wins" in record["reason"]
    low, high = record["interval"]
    assert min(own) <= record["predicted_loss"] <= max(own)
    heavy = max(chosen.weights, key=chosen.weights.get)
    assert low <= ScalingLaw.from_params(heavy, LAWS[heavy]).predict(point)[0] <= high


def test_a_clear_winner_is_recommended_alone():
    (chosen,) = _choose(_analysis("multiplicative")).values()
    assert chosen.form == "multiplicative" and not hasattr(chosen, "weights")
    record = _method_record(chosen, np.array([[1e9, 1e5]]), 0.9)
    assert record["form"] == "multiplicative" and "params" in record


def test_the_study_records_and_reports_which_prediction_is_used():
    from ftscale.report.study_report import law_choice_rows
    from ftscale.study.analysis import law_choice

    fits = [
        {"method": "fmt", "sweep": "model_size", "form": "multiplicative", "delta_h": 0.01},
        {"method": "fmt", "sweep": "model_size", "form": "additive", "delta_h": 0.02},
        {"method": "lora", "sweep": "model_size", "form": "multiplicative", "delta_h": 0.01},
    ]
    choices = {c["method"]: c for c in law_choice(fits, {}, 0.95)}
    assert choices["fmt"]["winner"] is None and choices["fmt"]["prediction"] == "ensemble"
    assert choices["fmt"]["weights"] == pytest.approx({"multiplicative": 0.8, "additive": 0.2})
    assert choices["lora"]["prediction"] == "multiplicative" and choices["lora"]["weights"] is None
    rows = {r[0]: r for r in law_choice_rows({"law_choice": list(choices.values())})}
    assert rows["fmt"][-1] == "ensemble (additive 0.20, multiplicative 0.80)"
    assert rows["lora"][-1] == "multiplicative"
