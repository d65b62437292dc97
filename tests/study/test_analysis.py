"""The study's analysis on store rows made up from known laws (no training): it holds out what
the study file says and gives the same fits as the laws package's `fit_table` on the same points."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from study_helpers import ROOT, merged, smoke_config

from ftscale.laws import fit_table
from ftscale.study.analysis import FORMAT, analyse, holdout_rules, runs_frame, sweep_points
from ftscale.study.config import StudyConfig

#: One worker runs this module, so its fixture, the quickstart's analysis (~14 s), is
#: computed once.
pytestmark = pytest.mark.xdist_group("quickstart-analysis")

RUNGS = {"m16": 4e3, "m24": 1e4, "m32": 3e4, "m48": 8e4}  # non-embedding parameters
CHECKPOINTS = (16_384, 32_768, 49_152, 65_536)  # pretraining tokens of the smallest rung
EXAMPLES = (50, 100, 200, 400)
#: A, alpha, beta, E of the multiplicative law each method's losses follow.
LAWS = {"fmt": (40.0, 0.2, 0.25, 3.0), "lora": (12.0, 0.12, 0.1, 3.2)}


def config(changes: dict) -> StudyConfig:
    base = merged(smoke_config(), {"methods": {"fmt": {}, "lora": {"rank": 4}}})
    base["sweeps"]["pet_size"]["sizes"] = {}
    return StudyConfig.model_validate(merged(base, changes))


def row(method, rung, examples, seed, *, tokens=65_536, sweeps=("model_size",)):
    a, alpha, beta, e = LAWS[method]
    x = RUNGS[rung] * tokens / 65_536  # fewer tokens seen: a smaller effective model
    loss = a / (x**alpha * examples**beta) + e
    loss *= np.exp(np.random.default_rng([len(method), int(x), examples, seed]).normal(0, 3e-3))
    return {
        "key": f"{method}-{rung}-{tokens}-{examples}-{seed}",
        "status": "ok",
        "method": method,
        "rung": rung,
        "nonembedding_params": RUNGS[rung],
        "tokens_seen": tokens,
        "method_size": None,
        "examples": examples,
        "subset_seed": seed,
        "sweeps": list(sweeps),
        "test_nll": float(loss),
        "record": {},
    }


def model_size_rows(rungs=RUNGS):
    return [row(m, r, d, s) for m in LAWS for r in rungs for d in EXAMPLES for s in (0, 1)]


def pretraining_rows():
    return [
        row(m, "m16", d, 0, tokens=t, sweeps=("pretraining",))
        for m in LAWS
        for t in CHECKPOINTS
        for d in EXAMPLES
    ]


def test_the_analysis_fits_what_fit_table_fits_on_the_same_points():
    """Model-size sweeps alone (no joint fit): the analysis' law per method is `fit_table`'s on
    the sweep's mean points with the study's hold-out rules (same starts, so the same optimum)."""
    cfg = config(
        {
            "sweeps": {"pretraining": {"enabled": False}, "pet_size": {"enabled": False}},
            "analysis": {"forms": ["multiplicative"], "bootstrap": 0, "refine": 64},
        }
    )
    rows = model_size_rows()
    analysis = analyse(rows, cfg)
    assert analysis["format"] == FORMAT
    frame = runs_frame(rows)
    points = {m: sweep_points(frame, "model_size", m) for m in LAWS}
    columns = {
        c: np.concatenate([points[m][c].to_numpy() for m in LAWS])
        for c in ("x", "examples", "test_nll")
    }
    columns["method"] = np.array([m for m in LAWS for _ in range(len(points[m]))], dtype=object)
    fits = fit_table(
        columns, y="test_nll", d="examples", x="x", holdout=holdout_rules("model_size", cfg)
    )
    by_method = {f["method"]: f for f in analysis["fits"]}
    assert set(by_method) == set(LAWS) and len(fits) == 2
    for result in fits:
        entry = by_method[result.group]
        assert entry["params"] == pytest.approx(result.law.params_, rel=1e-9)
        assert entry["delta_h"] == pytest.approx(result.delta_h, rel=1e-9)
        assert entry["delta_e"] == pytest.approx(result.delta_e, rel=1e-9)
        assert (entry["n_fit"], entry["n_heldout"]) == (result.n_fit, result.n_heldout)
        # Held out: the largest model and the largest D_f, as the study file says.
        held = [p for p in entry["points"] if p["heldout"]]
        assert {p["rung"] for p in held if p["examples"] != 400} == {"m48"}
        assert len(held) == 4 + 3


def test_joint_fits_share_beta_and_e_and_hold_out_the_middle_checkpoint():
    cfg = config({"sweeps": {"pet_size": {"enabled": False}}, "analysis": {"bootstrap": 8}})
    analysis = analyse(model_size_rows() + pretraining_rows(), cfg)
    fits = {(f["method"], f["sweep"], f["form"]): f for f in analysis["fits"]}
    size, data = (
        fits[("fmt", "model_size", "multiplicative")],
        fits[("fmt", "pretraining", "multiplicative")],
    )
    assert size["params"]["beta"] == data["params"]["beta"] == size["shared"]["beta"]
    assert size["fixed"] == size["shared"]
    # The joint bootstrap re-estimates the shared beta and E too: every parameter gets an
    # interval or is reported as not identified, the same beta interval in both sweeps.
    for entry in (size, data):
        assert set(entry["intervals"]) | set(entry["not_identified"]) == {"A", "alpha", "beta", "E"}
    if "beta" in size["intervals"]:
        assert size["intervals"]["beta"] == data["intervals"]["beta"]
    assert size["noise"]["source"] in ("seeds", "residuals", "both")
    held_x = {p["x"] for p in data["points"] if p["heldout"] and p["examples"] != 400}
    assert held_x == {float(CHECKPOINTS[2])}  # the middle of four checkpoints (the upper one)
    for entry in (size, data):
        held = [p for p in entry["points"] if p["heldout"]]
        errors = [abs(p["predicted"] - p["observed"]) for p in held]
        assert entry["delta_h"] == pytest.approx(np.mean(errors))
    pair = analysis["critical"][0]
    assert (pair["first"], pair["second"]) == ("fmt", "lora")
    assert pair["leader"] in LAWS and pair["observed"] == [50.0, 400.0]
    # Each method's side is its default model-size prediction, as the law choice says.
    chosen = {
        c["method"]: c["prediction"] for c in analysis["law_choice"] if c["sweep"] == "model_size"
    }
    assert (
        pair["forms"]
        == chosen
        == {m: r["prediction"] for m, r in analysis["critical_predictions"].items()}
    )


def test_listed_checkpoints_and_too_few_model_sizes():
    cfg = config(
        {
            "sweeps": {"pretraining": {"holdout": [16_384, 99]}, "pet_size": {"enabled": False}},
            "analysis": {"forms": ["multiplicative"], "bootstrap": 0},
        }
    )
    two_rungs = {k: RUNGS[k] for k in ("m16", "m24")}
    analysis = analyse(model_size_rows(two_rungs) + pretraining_rows(), cfg)
    fits = {(f["method"], f["sweep"]): f for f in analysis["fits"]}
    # Two model sizes: holding out the larger would leave one, so only the largest D_f is held.
    assert {p["examples"] for p in fits[("lora", "model_size")]["points"] if p["heldout"]} == {400}
    # A listed checkpoint the sweep lacks (99) holds out nothing and fails nothing.
    data = fits[("lora", "pretraining")]["points"]
    assert {p["x"] for p in data if p["heldout"] and p["examples"] != 400} == {16_384.0}


#: The 195 runs of a finished quickstart study (examples/README.md).
QUICKSTART_RUNS = ROOT / "examples" / "quickstart-runs.csv"


def quickstart_rows() -> list[dict]:
    """The store rows of the shipped quickstart runs (what ``runs_frame`` reads)."""
    rows = []
    for r in pd.read_csv(QUICKSTART_RUNS).to_dict("records"):
        size = r["method_size"]
        rows.append(
            {
                **{k: r[k] for k in ("key", "status", "method", "rung", "examples", "test_nll")},
                "nonembedding_params": r["nonembedding_params"],
                "tokens_seen": r["tokens_seen"],
                "method_size": None if math.isnan(size) else int(size),
                "subset_seed": r["subset_seed"],
                "sweeps": json.loads(r["sweeps"]),
                "record": {k: r[k] for k in ("converged", "stop_reason", "steps", "best_step")},
            }
        )
    return rows


@pytest.fixture(scope="session")  # once, even when other modules run between its tests
def quickstart():
    """The quickstart's analysis under its own study file, numpy's warnings made errors."""
    from ftscale.study.config import load_study

    config = load_study("builtin:quickstart").config
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return analyse(quickstart_rows(), config)


def test_the_quickstart_analysis_warns_nothing(quickstart):
    """It used to print numpy's RuntimeWarnings (a replicate's E of exp(-2e7) reported as 0, its
    log -inf; a replicate's A of exp(800) overflowing): the fixture fails on any warning, and
    none was turned into a note either."""
    assert quickstart["n_runs"] == 195
    assert not [n for n in quickstart["notes"] if "encountered" in n or "Warning" in n]
    # Those replicates now cross like the others: FMT's multiplicative model-size law overtakes
    # prompt tuning's in every replicate pair at every rung (79 % before: the 21 % of prompt
    # replicates whose E collapsed were counted as never crossing).
    from ftscale.laws import FitResult
    from ftscale.laws.uncertainty import crossing_samples

    fits = {
        f["method"]: FitResult.from_dict(f)
        for f in quickstart["fits"]
        if f["sweep"] == "model_size" and f["form"] == "multiplicative"
    }
    rungs = np.unique(fits["fmt"].sizes[:, 0])
    assert len(rungs) == 4
    for x in rungs:
        found = crossing_samples(fits["fmt"].bootstrap, fits["prompt"].bootstrap, x, (1.0, 1e9))
        assert np.isfinite(found).mean() == 1.0


def test_heldout_error_intervals_hold_their_estimates(quickstart):
    """Finding 1's Delta_h intervals and the law choice's Delta_h differences are re-centred on
    their estimates: the quickstart's prompt Delta_h of 0.0185 had the percentile interval
    [0.0187, 0.0892], which excludes it."""
    (first,) = [f for f in quickstart["findings"] if f["number"] == 1]
    for c in first["comparisons"]:
        low, high = c["interval"]
        assert 0.0 <= low <= c["estimate"] <= high, c
    fits = {(f["method"], f["sweep"], f["form"]): f["delta_h"] for f in quickstart["fits"]}
    for choice in quickstart["law_choice"]:
        best = fits[(choice["method"], choice["sweep"], choice["best"])]
        for d in choice["differences"]:
            gap = best - fits[(choice["method"], choice["sweep"], d["rival"])]
            assert d["interval"][0] <= gap <= d["interval"][1], (choice, gap)


def test_critical_sizes_cross_each_methods_default_prediction(quickstart):
    """The report's critical data sizes cross what `fit`/`critical` and `recommend` predict with:
    each method's clear winner, else its ensemble (the quickstart's three methods have no clear
    model-size winner), the interval and share from the ensembles' mixed replicates, and
    finding 5 decided by those shares."""
    from ftscale.laws.compare import prediction_critical_points
    from ftscale.report.study_report import markdown
    from ftscale.study.recommend import _choose

    predictions = quickstart["critical_predictions"]
    choices = {c["method"]: c for c in quickstart["law_choice"] if c["sweep"] == "model_size"}
    assert {m: r["prediction"] for m, r in predictions.items()} == {
        m: c["prediction"] for m, c in choices.items()
    }
    assert "ensemble" in {r["prediction"] for r in predictions.values()}
    chosen = _choose(quickstart)  # recommend rebuilds the same predictions from the records
    assert {m: p.form for m, p in chosen.items()} == {
        m: r["prediction"] for m, r in predictions.items()
    }
    again = prediction_critical_points(list(chosen.values()), d_range=(1.0, 1e9), level=0.95)
    assert len(again) == len(quickstart["critical"]) == 12
    for point, c in zip(again, quickstart["critical"], strict=True):
        assert c["forms"] == {m: predictions[m]["prediction"] for m in (c["first"], c["second"])}
        assert point.crossing_share == c["crossing_share"]
        assert point.interval == pytest.approx(c["interval"], rel=1e-6)
    (fifth,) = [f for f in quickstart["findings"] if f["number"] == 5]
    shares = {f"{c['first']}/{c['second']} at X={c['x']:.3g}": c for c in quickstart["critical"]}
    for comparison in fifth["comparisons"]:
        share = shares[comparison["label"]]["crossing_share"]
        assert f"crosses in {share:.0%} of replicates" in comparison["why"]
    text = markdown(quickstart, "quickstart")
    assert "## Critical data sizes (each method's default model-size prediction)" in text
    assert "| fmt vs lora | ensemble vs ensemble |" in text
    assert "- fmt: ensemble (" in text
