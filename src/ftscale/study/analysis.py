"""The study's analysis of a store: joint fits, held-out errors, intervals, critical data sizes,
generalisation, the findings of Zhang et al. (ICLR 2024) checked one by one, and flagged runs.

Procedure (the study's, Section 3 and Table 4), per method and law form:

1. points: each (X, D_f) is the mean test NLL (nats per target token) over subset seeds;
2. held out: the largest model, a middle pretraining checkpoint, the largest PET size and the
   largest D_f (as the study file says);
3. a joint fit over the model-size and pretraining-data sweeps with beta and E shared and A, alpha
   per factor (:class:`ftscale.laws.JointScalingLaw`), then A and alpha refitted per factor with
   beta and E fixed; PET-size sweeps are fitted with the method's beta and E fixed (they take no
   part in estimating them);
4. Delta_e / Delta_h: mean absolute deviation on fitted / held-out points; A and alpha intervals by
   bootstrap over the fitted points (beta and E held at the joint values);
5. critical D_f between every pair of methods at each model size: crossings of each method's
   default model-size prediction (the clear winner of the law choice, else the ensemble of the
   forms), with bootstrap intervals.

The hold-out rules, fit results (Delta_e / Delta_h, intervals, bootstrap) and critical points are
the laws package's (:mod:`ftscale.laws.holdout`, :mod:`ftscale.laws.results`,
:func:`ftscale.laws.critical_points`); this module says which sweeps, runs the joint procedure and
judges the findings. Everything returned is plain JSON data: the report, the fits file and
``ftscale recommend`` read it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ftscale.errors import UserError

#: Axis column of each sweep.
X_COLUMN = {
    "model_size": "nonembedding_params",
    "pretraining": "tokens_seen",
    "pet_size": "method_size",
}
#: Shape of the analysis data (what ``fits.json`` holds and ``ftscale recommend`` reads back):
#: 3 has every fit as a :class:`ftscale.laws.FitResult` record (``bootstrap`` with its seed,
#: ``variables``, ``fixed``, ``level``, ``warnings``) plus the study's keys, every critical
#: point as a :class:`ftscale.laws.CriticalPoint` record (``leader``, ``observed``, ``forms``:
#: the default prediction each method's side used), ``critical_predictions`` (per method its
#: model-size default prediction, ``weights`` and ``reason``) and ``law`` (the study's law). 2
#: crossed the multiplicative laws (``critical_form``, a ``form`` per critical point). Data
#: without a ``format`` is of the shape before (``bootstrap_thetas``, ``better_at_small_data``).
FORMAT = 3
#: The study's law: the findings about alpha and beta and the sweep figures use its fits.
STUDY_LAW = "multiplicative"
#: D_f range searched for critical points (examples).
CRITICAL_RANGE = (1.0, 1e9)
#: Finding (3) of the study: PET-size exponents below this are "near zero".
PET_ALPHA_NEAR_ZERO = 1e-2
#: Finding (1): held-out error counts as small below this fraction of the mean loss (the study's
#: Delta_h of ~0.005 nats at losses near 1 is 0.5%; tiny models are noisier, so 2%).
SMALL_DELTA_H = 0.02


# -- the runs table ----------------------------------------------------------------------------


def _flag_improved(record: dict) -> bool | None:
    if "improved" in record and record["improved"] is not None:
        return bool(record["improved"])
    best, initial = record.get("best_dev_nll"), record.get("initial_dev_nll")
    if best is None or initial is None:
        return None
    return bool(best < initial and (record.get("best_step") or 0) > 0)


def _flag_undertrained(record: dict) -> bool | None:
    if "undertrained" in record and record["undertrained"] is not None:
        return bool(record["undertrained"])
    steps, best = record.get("steps"), record.get("best_step")
    if not steps or best is None:
        return None
    return bool(best >= steps and not record.get("stopped_early"))


def runs_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """One row per run of the store, design columns first, then the record's measurements."""
    out = []
    for row in rows:
        record = row.get("record") or {}
        out.append(
            {
                "key": row["key"],
                "status": row["status"],
                "method": row["method"],
                "rung": row["rung"],
                "nonembedding_params": row["nonembedding_params"],
                "tokens_seen": row["tokens_seen"],
                "method_size": row["method_size"],
                "examples": row["examples"],
                "subset_seed": row["subset_seed"],
                "sweeps": row["sweeps"],
                "test_nll": row["test_nll"],
                "improved": _flag_improved(record),
                "undertrained": _flag_undertrained(record),
                "converged": record.get("converged"),
                "stop_reason": record.get("stop_reason"),
                "best_step": record.get("best_step"),
                "steps": record.get("steps"),
                "initial_dev_nll": record.get("initial_dev_nll"),
                "best_dev_nll": record.get("best_dev_nll"),
                "learning_rate": record.get("learning_rate"),
                "trainable_params": record.get("trainable_params"),
                "train_s": record.get("train_s"),
                "wall_s": row.get("wall_s"),
                "gen_bleu": record.get("gen_bleu"),
                "gen_chrf": record.get("gen_chrf"),
                "gen_rouge_l": record.get("gen_rouge_l"),
                "evals": _flat_evals(record.get("evals")),
                "error": row.get("error"),
            }
        )
    columns = [
        "key",
        "status",
        "method",
        "rung",
        "nonembedding_params",
        "tokens_seen",
        "method_size",
        "examples",
        "subset_seed",
        "sweeps",
        "test_nll",
    ]
    return pd.DataFrame(out, columns=list(out[0]) if out else columns)


def _flat_evals(evals: Any) -> dict[str, float]:
    """Numeric scores of the record's extra eval sets, flattened to ``name.metric`` (read
    defensively: a dict of dicts, a list of dicts with ``name``, or absent)."""
    flat: dict[str, float] = {}
    if isinstance(evals, dict):
        items = evals.items()
    elif isinstance(evals, list):
        items = [(e.get("name", str(i)), e) for i, e in enumerate(evals) if isinstance(e, dict)]
    else:
        return flat
    for name, value in items:
        if isinstance(value, dict):  # e.g. {"shots": 0, "base": {"nll": ...}, "finetuned": {...}}
            for metric, number in _flat_evals(value).items():
                flat[f"{name}.{metric}"] = number
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[str(name)] = float(value)
    return flat


def usable_runs(frame: pd.DataFrame, method: str, *, converged_only: bool = False) -> pd.Series:
    """Mask of the method's ok runs with a test NLL; with ``converged_only`` only those whose
    dev loss plateaued (``converged``). Records from before convergence was recorded (no
    ``converged`` field) are kept: nothing says they did not converge."""
    mask = (frame["status"] == "ok") & (frame["method"] == method) & frame["test_nll"].notna()
    if converged_only and "converged" in frame:
        mask &= frame["converged"].map(lambda c: c is None or c is True or c == 1)
    return mask


def sweep_points(
    frame: pd.DataFrame, sweep: str, method: str, *, converged_only: bool = False
) -> pd.DataFrame:
    """Mean test NLL per (X, D_f) of one sweep and method (:func:`usable_runs`), with ``n``
    seeds."""
    x = X_COLUMN[sweep]
    mask = usable_runs(frame, method, converged_only=converged_only)
    mask &= frame["sweeps"].map(lambda s: sweep in s)
    sub = frame[mask]
    if sub.empty or sub[x].isna().any():
        return pd.DataFrame(columns=["x", "examples", "test_nll", "n", "rung"])
    grouped = sub.groupby([x, "examples"], as_index=False).agg(
        test_nll=("test_nll", "mean"), n=("test_nll", "size"), rung=("rung", "first")
    )
    return grouped.rename(columns={x: "x"}).sort_values(["x", "examples"]).reset_index(drop=True)


#: Columns that make two runs of one method the same design point (they differ in subset seed).
DESIGN = ["rung", "tokens_seen", "method_size", "examples"]


def seed_noise(frame: pd.DataFrame, method: str, *, converged_only: bool = False) -> dict:
    """Run-to-run noise of one method's test NLL (nats per token) measured on design points run
    with several subset seeds: the pooled standard deviation sqrt(sum (n_i - 1) s_i^2 /
    sum (n_i - 1)) and its degrees of freedom (``sd`` None when no point was repeated)."""
    sub = frame[usable_runs(frame, method, converged_only=converged_only)]
    if sub.empty:
        return {"sd": None, "dof": 0}
    groups = sub.groupby(DESIGN, dropna=False)["test_nll"]
    dof = int((groups.size() - 1).sum())
    if dof == 0:
        return {"sd": None, "dof": 0}
    squares = float(groups.apply(lambda v: ((v - v.mean()) ** 2).sum()).sum())
    return {"sd": math.sqrt(squares / dof), "dof": dof}


def holdout_rules(sweep: str, config) -> list:
    """The study file's held-out rules of one sweep, as :class:`~ftscale.laws.HoldoutRule`s on
    its points (columns ``x``, ``examples``, ``rung``). ``max`` and ``middle`` are skipped where
    they would leave fewer than two distinct values to fit: with fewer than three model sizes,
    checkpoints, PET sizes or D_f nothing is held out along that axis."""
    from ftscale.laws import HoldoutRule

    rule = getattr(config.sweeps, sweep).holdout
    rules = []
    if rule in ("max", "middle"):
        rules.append(HoldoutRule(rule, "x", min_left=2))
    elif isinstance(rule, list):  # rung names (model size) or token counts (pretraining)
        rules.append(
            HoldoutRule("in", "rung" if sweep == "model_size" else "x", values=tuple(rule))
        )
    if config.examples.holdout == "max":
        rules.append(HoldoutRule("max", "examples", min_left=2))
    return rules


def heldout_mask(points: pd.DataFrame, sweep: str, config) -> np.ndarray:
    """The held-out points of a sweep (see :func:`holdout_rules`). A listed value the sweep has
    no points at (its runs failed) holds out nothing rather than failing the analysis."""
    from ftscale.laws import holdout_mask

    if points.empty:
        return np.zeros(0, dtype=bool)
    columns = {c: points[c].to_numpy() for c in ("x", "examples", "rung")}
    return holdout_mask(holdout_rules(sweep, config), columns, require_match=False)


# -- fitting -----------------------------------------------------------------------------------

#: The fits' variables: the columns of a sweep's points (X renamed ``x``, D_f ``examples``).
POINT_VARIABLES = {"x": "x", "d": "examples"}


@dataclass
class SweepFit:
    """One sweep's law for one method and form (a :class:`~ftscale.laws.FitResult`, grouped by
    method) and what the study adds to its record: the sweep, the joint fit's shared values, the
    rung and seed count of every point, and the noise its intervals were drawn with."""

    method: str
    sweep: str
    shared: dict[str, float] | None
    rungs: list[str]
    result: Any  # ftscale.laws.FitResult
    seeds: list[int]
    noise: dict | None = None

    def to_dict(self) -> dict:
        """The fit's entry in the analysis data: the laws package's record plus the study's
        keys. The study compares forms by Delta_h (:func:`best_forms`), so the record's
        nested-extrapolation selection keys, never filled here, are left out."""
        record = self.result.to_dict(points=True)
        for point, rung, n in zip(record["points"], self.rungs, self.seeds, strict=True):
            point["rung"], point["n"] = rung, n
        for key in ("selected", "selection_score", "predictions"):
            del record[key]
        study = {"method": self.method, "sweep": self.sweep, "x": X_COLUMN[self.sweep]}
        return {**study, "shared": self.shared, "noise": self.noise, **record}


@dataclass
class _Resample:
    """The fits one bootstrap redraws together: one sweep's, or a joint fit's sweeps with the
    joint law (``joint``) so that the shared beta and E are re-estimated too."""

    fits: list[SweepFit]
    joint: Any = None  # ftscale.laws.JointScalingLaw


def _sizes(points: pd.DataFrame) -> np.ndarray:
    return points[["x", "examples"]].to_numpy(float)


def _losses(points: pd.DataFrame) -> np.ndarray:
    return points["test_nll"].to_numpy(float)


def _sweep_fit(law, points, held, config, method: str, *, sweep: str, shared) -> SweepFit:
    from ftscale.laws import FitResult

    result = FitResult.from_law(
        law,
        _sizes(points),
        _losses(points),
        held,
        variables=POINT_VARIABLES,
        group=method,
        level=config.analysis.level,
    )
    rungs, seeds = [str(r) for r in points["rung"]], [int(n) for n in points["n"]]
    return SweepFit(method, sweep, shared, rungs, result, seeds)


def _fit_law(form: str, points, held, config, notes: list[str], *, where: str, fixed=None):
    """One law fitted on the points not held out; None (and a note) when it cannot be."""
    from ftscale.laws import ScalingLaw

    analysis = config.analysis
    try:
        return ScalingLaw(form, space=analysis.space, fixed=fixed, n_refine=analysis.refine).fit(
            _sizes(points)[~held], _losses(points)[~held]
        )
    except UserError as exc:
        notes.append(f"{where}: not fitted ({exc})")
        return None


def _joint(data: dict, config, method: str, form: str, notes: list[str]):
    """The joint fit of the model-size and pretraining sweeps (a fitted
    :class:`~ftscale.laws.JointScalingLaw`), or None with one sweep or when it cannot be fitted
    (then each is fitted alone)."""
    from ftscale.laws import JointScalingLaw

    if len(data) != 2:
        return None
    analysis = config.analysis
    try:
        return JointScalingLaw(form, space=analysis.space, n_refine=analysis.refine).fit(
            {s: (_sizes(p)[~h], _losses(p)[~h]) for s, (p, h) in data.items()}
        )
    except UserError as exc:
        notes.append(f"{method} {form}: joint fit skipped ({exc}); sweeps fitted separately")
        return None


def fit_method(frame, config, method: str, form: str, notes: list[str]) -> list[_Resample]:
    """Every sweep's law for one method and form (the study's joint procedure), grouped as they
    are bootstrapped."""
    converged_only = config.analysis.converged_only
    data = {}
    for sweep in ("model_size", "pretraining"):
        points = sweep_points(frame, sweep, method, converged_only=converged_only)
        if len(points) and points["x"].nunique() >= 2 and points["examples"].nunique() >= 2:
            data[sweep] = (points, heldout_mask(points, sweep, config))
    joint = _joint(data, config, method, form, notes)
    shared = None if joint is None else {k: float(v) for k, v in joint.shared_.items()}
    fits = []
    for sweep, (points, held) in data.items():
        law = joint.laws_[sweep] if joint is not None else None
        law = law or _fit_law(form, points, held, config, notes, where=f"{method} {form} {sweep}")
        if law is not None:
            fits.append(_sweep_fit(law, points, held, config, method, sweep=sweep, shared=shared))
    out = [_Resample(fits, joint)] if joint is not None else [_Resample([f]) for f in fits]
    if method in config.sweeps.pet_size.sizes and config.sweeps.pet_size.enabled:
        out += [_Resample([f]) for f in _fit_pet(frame, config, method, form, shared, notes)]
    return out


def _fit_pet(frame, config, method, form, shared, notes) -> list[SweepFit]:
    """The PET-size sweep, with the method's joint beta and E held fixed (they take no part in
    estimating them)."""
    converged_only = config.analysis.converged_only
    points = sweep_points(frame, "pet_size", method, converged_only=converged_only)
    if len(points) == 0 or points["x"].nunique() < 2:
        return []
    held = heldout_mask(points, "pet_size", config)
    fixed = {k: v for k, v in (shared or {}).items() if k in ("beta", "E")}
    where = f"{method} {form} pet_size"
    law = _fit_law(form, points, held, config, notes, where=where, fixed=fixed)
    if law is None:
        return []
    return [_sweep_fit(law, points, held, config, method, sweep="pet_size", shared=shared or None)]


# -- intervals -----------------------------------------------------------------------------------


def fit_noise(fit: SweepFit, seeds: dict) -> np.ndarray:
    """Noise (nats per token) of each fitted point for the parametric bootstrap
    (:func:`ftscale.laws.uncertainty.parametric_noise`: the method's measured run-to-run noise
    over the point's seeds, or the fit's residual RMS where larger, counting all the form's
    parameters), recorded on ``fit.noise`` with which of the two set it."""
    from ftscale.laws.uncertainty import parametric_noise

    result = fit.result
    fitted = ~result.heldout
    residuals = result.observed[fitted] - result.predicted[fitted]
    n_params = len(result.law.form_.params)
    n = np.asarray(fit.seeds, float)[fitted]
    noise = parametric_noise(residuals, n_params, seeds["sd"], n)
    rms = float(parametric_noise(residuals, n_params)[0]) if residuals.size else 0.0
    own = (seeds["sd"] or 0.0) / np.sqrt(n)  # the seed part of each point's noise
    fit.noise = {
        "seed_sd": seeds["sd"],
        "seed_dof": seeds["dof"],
        "residual_rms": rms,
        # which of the two set the noise: at every point, at none, or at some
        "source": "residuals" if (rms >= own).all() else "seeds" if (rms < own).all() else "both",
    }
    return noise


def _bootstrap(resamples: list[_Resample], frame, config, notes: list[str]) -> None:
    """Intervals for every fit. ``[analysis] resample = "parametric"`` (the default): each
    replicate redraws the fitted points around the fitted curve with the measured noise
    (:func:`fit_noise`) and refits, jointly where the fit was joint; ``"runs"``: resample the
    fitted points with replacement. Replicate i of each law uses the seed pair (seed, i)."""
    from ftscale.laws import bootstrap_results

    analysis = config.analysis
    fits = [f for r in resamples for f in r.fits]
    if analysis.bootstrap <= 0 or not fits:
        return
    try:
        if analysis.resample == "runs":
            bootstrap_results([f.result for f in fits], analysis.bootstrap, analysis.seed)
            return
        _parametric(resamples, frame, config)
    except UserError as exc:
        notes.append(f"no bootstrap intervals ({exc})")


def _parametric(resamples: list[_Resample], frame, config) -> None:
    """The parametric bootstraps: single fits in one pool, then each joint fit."""
    from ftscale.laws import attach_bootstrap, bootstrap_joint, bootstrap_many

    analysis = config.analysis
    n, seed, only = analysis.bootstrap, analysis.seed, analysis.converged_only
    seeds = {m: seed_noise(frame, m, converged_only=only) for m in config.methods}
    singles = [r.fits[0] for r in resamples if r.joint is None]
    items = [(*_fitted(f), fit_noise(f, seeds[f.method])) for f in singles]
    for fit, boot in zip(singles, bootstrap_many(items, n, seed=seed), strict=True):
        attach_bootstrap(fit.result, boot)
    for r in (r for r in resamples if r.joint is not None):
        groups = {f.sweep: _fitted(f)[1:] for f in r.fits}
        noise = {f.sweep: fit_noise(f, seeds[f.method]) for f in r.fits}
        boots = bootstrap_joint(r.joint, groups, noise, n, seed=seed)
        for fit in r.fits:
            attach_bootstrap(fit.result, boots[fit.sweep])


def _fitted(fit: SweepFit) -> tuple:
    """(law, sizes, losses) of the points a fit was fitted on."""
    result = fit.result
    return result.law, result.sizes[~result.heldout], result.observed[~result.heldout]


def fit_all(frame: pd.DataFrame, config, notes: list[str]) -> list[SweepFit]:
    """Every method's and form's fits with their bootstrap; warnings raised while fitting become
    notes."""
    resamples: list[_Resample] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for method in config.methods:
            for form in config.analysis.forms:
                resamples += fit_method(frame, config, method, form, notes)
        _bootstrap(resamples, frame, config, notes)
    notes += sorted({str(w.message) for w in caught})
    return [f for r in resamples for f in r.fits]


# -- critical data sizes --------------------------------------------------------------------------


def default_prediction(results: Sequence, choice: dict | None, law: str = STUDY_LAW):
    """One method's default prediction on one sweep, as ``ftscale fit`` and ``ftscale critical``
    make it, from the study's law choice (:func:`law_choice`): the clear winner's fit, else the
    ensemble of the forms weighted by their Delta_h (:func:`ftscale.laws.ensemble.combine`).
    One form fitted: its fit; no law choice (no held-out runs to choose by): the fit of ``law``
    (the study's), else the first.

    Args:
        results: the method's fits on the sweep, one per form (:class:`~ftscale.laws.FitResult`).
        choice: the method's and sweep's entry of :func:`law_choice`, or None.

    Returns: (the prediction, a fit or an ensemble; its record: ``prediction``, ``weights``,
    ``reason``).
    """
    from ftscale.laws.ensemble import ENSEMBLE, combine

    by_form = {r.form: r for r in results}
    if len(by_form) == 1 or choice is None:
        form = law if law in by_form else next(iter(by_form))
        why = "the only form fitted" if len(by_form) == 1 else "no held-out runs to choose by"
        return by_form[form], {"prediction": form, "weights": None, "reason": why}
    used, weights = choice["prediction"], choice.get("weights")
    if used != ENSEMBLE:
        why = f"{used} clearly wins the law choice (every Delta_h difference interval below 0)"
        return by_form[used], {"prediction": used, "weights": None, "reason": why}
    why = "no form clearly wins the law choice (the Delta_h difference intervals overlap)"
    combined = combine(list(by_form.values()), weights, used=ENSEMBLE, reason=why)
    return combined, {"prediction": ENSEMBLE, "weights": dict(weights), "reason": why}


def default_predictions(fits: list[SweepFit], choices: list[dict], sweep: str = "model_size"):
    """Per method, its :func:`default_prediction` on ``sweep``: ``{method: (prediction,
    record)}``."""
    per: dict[str, list] = {}
    for f in fits:
        if f.sweep == sweep:
            per.setdefault(f.method, []).append(f.result)
    chosen = {(c["method"], c["sweep"]): c for c in choices}
    return {m: default_prediction(r, chosen.get((m, sweep))) for m, r in per.items()}


def critical_sizes(predictions: dict, level: float) -> list[dict]:
    """Crossings of every pair of methods' default model-size predictions (fits or ensembles,
    :func:`default_predictions`) at each model size either of them ran
    (:func:`ftscale.laws.compare.prediction_critical_points`): an ensemble's interval and
    crossing share come from its forms' replicates mixed with its weights."""
    from ftscale.laws.compare import prediction_critical_points

    chosen = [prediction for prediction, _ in predictions.values()]
    if len(chosen) < 2:
        return []
    points = prediction_critical_points(chosen, d_range=CRITICAL_RANGE, level=level)
    return [p.to_dict() for p in points]


# -- trends, generalisation, flags ----------------------------------------------------------------


def trends(frame: pd.DataFrame) -> dict:
    """Does loss fall with model size (per method and D_f) and with D_f (per method and rung)?
    Counted over adjacent pairs of the model-size sweep's mean losses."""
    out = {}
    ok = frame[(frame["status"] == "ok") & frame["test_nll"].notna()]
    ok = ok[ok["sweeps"].map(lambda s: "model_size" in s)]
    for name, across, within in (
        ("model_size", "nonembedding_params", "examples"),
        ("data_size", "examples", "nonembedding_params"),
    ):
        falls = total = 0
        for _, sub in ok.groupby(["method", within]):
            means = sub.groupby(across)["test_nll"].mean().sort_index().to_numpy()
            diffs = np.diff(means)
            falls += int((diffs < 0).sum())
            total += int(diffs.size)
        out[name] = {
            "falling_pairs": falls,
            "pairs": total,
            "falls": bool(total and falls / total >= 0.75),
        }
    return out


def generalisation(frame: pd.DataFrame) -> list[dict]:
    """Generation scores and extra eval sets per method, model size and D_f (ok runs)."""
    ok = frame[(frame["status"] == "ok")]
    rows = []
    for (method, rung, params, examples), sub in ok.groupby(
        ["method", "rung", "nonembedding_params", "examples"], dropna=False
    ):
        sub = sub[sub["sweeps"].map(lambda s: "model_size" in s)]
        if sub.empty:
            continue
        row = {
            "method": method,
            "rung": rung,
            "nonembedding_params": params,
            "examples": int(examples),
        }
        for metric in ("gen_bleu", "gen_chrf", "gen_rouge_l"):
            values = sub[metric].dropna()
            if len(values):
                row[metric] = float(values.mean())
        evals = pd.DataFrame(list(sub["evals"]))
        for column in evals.columns:
            row[f"eval.{column}"] = float(evals[column].mean())
        rows.append(row)
    return rows


def flagged(frame: pd.DataFrame) -> list[dict]:
    """Runs that never beat the base model on dev, or whose best dev step was their last."""
    out = []
    for _, row in frame[frame["status"] == "ok"].iterrows():
        reasons = []
        if row["improved"] is False:
            reasons.append("never beat the base model")
        if row["undertrained"] is True:
            reasons.append("best at its last step (still improving)")
        if reasons:
            out.append(
                {
                    "key": row["key"],
                    "method": row["method"],
                    "rung": row["rung"],
                    "tokens_seen": _int(row["tokens_seen"]),
                    "method_size": _int(row["method_size"]),
                    "examples": int(row["examples"]),
                    "reasons": reasons,
                }
            )
    return out


def _int(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else int(value)


# -- findings ------------------------------------------------------------------------------------

#: Finding number -> checker, in the study's order; filled by :func:`register_finding`. A checker
#: takes a :class:`_FindingInputs` and returns the finding's dict (see :func:`_finding`).
FINDINGS: dict[int, Callable[[_FindingInputs], dict]] = {}


@dataclass(frozen=True)
class _FindingInputs:
    """What every finding reads: all fits, the critical points, the study's methods, the
    multiplicative fits by ``(method, sweep)``, the bootstrap replicates of every fit by
    ``(method, sweep, form)`` (:func:`replicate_samples`) and the interval level."""

    fits: list[dict]
    critical: list[dict]
    methods: list[str]
    get: dict[tuple[str, str], dict]
    samples: dict[tuple[str, str, str], dict] = field(default_factory=dict)
    level: float = 0.95


def register_finding(number: int):
    def wrap(fn):
        FINDINGS[number] = fn
        return fn

    return wrap


def replicate_samples(fits: list[SweepFit]) -> dict[tuple[str, str, str], dict]:
    """Per fit, its bootstrap replicates as the findings compare them: ``params`` (name ->
    array over replicates, NaN where a replicate failed, so replicate i of two fits pair up),
    ``delta_h`` (each replicate's held-out error against the observed runs) and the parameters
    that are ``not_identified``."""
    out = {}
    for fit in fits:
        result, boot = fit.result, fit.result.bootstrap
        if boot is None:
            continue
        form = result.law.form_
        held = result.sizes[result.heldout]
        delta_h = None
        if len(held):
            with np.errstate(all="ignore"):
                predicted = np.exp(form.log_predict(boot.thetas, np.log(held)))
            delta_h = np.mean(np.abs(predicted - result.observed[result.heldout]), axis=1)
        out[(fit.method, fit.sweep, result.form)] = {
            "params": boot.samples(),
            "delta_h": delta_h,
            "not_identified": result.not_identified(),
        }
    return out


def findings(fits: list[dict], critical: list[dict], config, samples=None) -> list[dict]:
    """The study's five findings, each decided by intervals (:func:`decide`): reproduced,
    not reproduced, inconclusive, or not testable."""
    mult = [f for f in fits if f["form"] == "multiplicative"]
    inputs = _FindingInputs(
        fits=fits,
        critical=critical,
        methods=list(config.methods),
        get={(f["method"], f["sweep"]): f for f in mult},
        samples=samples or {},
        level=config.analysis.level,
    )
    return [FINDINGS[number](inputs) for number in sorted(FINDINGS)]


def decide(interval, low_bound: float | None = None, high_bound: float | None = None) -> str:
    """The verdict of one comparison whose paper side is ``low_bound < q < high_bound``:
    reproduced when the interval of q lies inside, not reproduced when it lies outside (beyond
    either bound), otherwise inconclusive (also without an interval)."""
    if interval is None or None in interval or not all(map(math.isfinite, interval)):
        return "inconclusive"
    low, high = interval
    lo_b = -math.inf if low_bound is None else low_bound
    hi_b = math.inf if high_bound is None else high_bound
    if lo_b < low and high < hi_b:
        return "reproduced"
    if high < lo_b or low > hi_b:
        return "not reproduced"
    return "inconclusive"


def _combine(verdicts: list[str]) -> str | None:
    """A finding over several comparisons (it claims all of them): not reproduced if any is,
    reproduced if all are, otherwise inconclusive; None (not testable) without comparisons."""
    if not verdicts:
        return None
    if "not reproduced" in verdicts:
        return "not reproduced"
    return "reproduced" if all(v == "reproduced" for v in verdicts) else "inconclusive"


def _quantile_interval(values, level: float) -> list[float] | None:
    """The central interval of replicate ``values`` (None with fewer than two finite ones)."""
    from ftscale.laws.uncertainty import percentile_interval

    if values is None or np.isfinite(np.asarray(values, float)).sum() < 2:
        return None
    return list(percentile_interval(np.asarray(values, float), level))


def _error_interval(values, estimate, level: float, floor: float | None = None):
    """The interval of a held-out error (or a difference of two) from its replicates, re-centred
    on the estimate (:func:`ftscale.laws.uncertainty.recentred_interval`: the replicates' errors
    are biased upward); None with fewer than two finite replicates or no estimate."""
    from ftscale.laws.uncertainty import recentred_interval

    if estimate is None or values is None or np.isfinite(np.asarray(values, float)).sum() < 2:
        return None
    return list(recentred_interval(np.asarray(values, float), estimate, level, floor=floor))


def _param(inp: _FindingInputs, method: str, sweep: str, name: str):
    """A multiplicative fit's parameter: (estimate, replicates or None, why it is not
    identified or "")."""
    fit = inp.get.get((method, sweep))
    if fit is None:
        return None, None, "not fitted"
    sample = inp.samples.get((method, sweep, "multiplicative"), {})
    why = sample.get("not_identified", {}).get(name, "")
    return fit["params"][name], sample.get("params", {}).get(name), why


def _compare(
    label: str, estimate, draws, inp: _FindingInputs, bounds, why: str = "", *, error=False
) -> dict:
    """One comparison: its estimate, its interval at the study's level (percentiles of the
    replicates; for a held-out ``error``, re-centred on the estimate: :func:`_error_interval`)
    and its verdict."""
    if why:
        interval = None
    elif error:
        interval = _error_interval(draws, estimate, inp.level, floor=0.0)
    else:
        interval = _quantile_interval(draws, inp.level)
    verdict = decide(interval, *bounds)
    return {
        "label": label,
        "estimate": None if estimate is None else float(estimate),
        "interval": interval,
        "verdict": verdict,
        "why": why or ("" if interval else "no bootstrap interval"),
    }


def _finding(number: int, claim: str, comparisons: list[dict], detail: str = "") -> dict:
    status = _combine([c["verdict"] for c in comparisons])
    shown = "; ".join(_shown(c) for c in comparisons)
    return {
        "number": number,
        "claim": claim,
        "status": "not testable" if status is None else status,
        "detail": "; ".join(t for t in (shown, detail) if t) or "-",
        "comparisons": comparisons,
    }


def _shown(c: dict) -> str:
    estimate = "-" if c["estimate"] is None else f"{c['estimate']:.3g}"
    if c["interval"] is None:
        return f"{c['label']} {estimate} ({c['why']}): {c['verdict']}"
    low, high = c["interval"]
    why = f" ({c['why']})" if c["why"] else ""
    return f"{c['label']} {estimate} [{low:.3g}, {high:.3g}]{why}: {c['verdict']}"


@register_finding(1)
def _small_heldout_error(inp: _FindingInputs) -> dict:
    """(1) the multiplicative law fits with small held-out error: each method's model-size
    Delta_h, with its interval over the replicates (re-centred on the estimate), below
    :data:`SMALL_DELTA_H` of the mean loss."""
    claim = "The multiplicative law fits with small held-out error"
    held = [(m, inp.get[(m, "model_size")]) for m in inp.methods if (m, "model_size") in inp.get]
    held = [(m, f) for m, f in held if f["delta_h"] is not None]
    if not held:
        return _finding(1, claim, [], "no held-out model-size points")
    mean_loss = float(np.mean([p["observed"] for _, f in held for p in f["points"]]))
    limit = SMALL_DELTA_H * mean_loss
    comparisons = [
        _compare(
            f"{m} Delta_h",
            f["delta_h"],
            inp.samples.get((m, "model_size", "multiplicative"), {}).get("delta_h"),
            inp,
            (None, limit),
            error=True,
        )
        for m, f in held
    ]
    return _finding(
        1,
        claim,
        comparisons,
        f"'small': below {SMALL_DELTA_H:.0%} of the mean loss, {limit:.3f} nats",
    )


@register_finding(2)
def _model_size_beats_pretraining(inp: _FindingInputs) -> dict:
    """(2) alpha for model size > alpha for pretraining data: the difference, replicate by
    replicate of the joint bootstrap (both sweeps' alphas come from the same replicate)."""
    comparisons = []
    for m in inp.methods:
        model, model_draws, why_m = _param(inp, m, "model_size", "alpha")
        data, data_draws, why_d = _param(inp, m, "pretraining", "alpha")
        if model is None or data is None:
            continue
        draws = _difference(model_draws, data_draws)
        why = "; ".join(w for w in (why_m, why_d) if w)
        label = f"{m}: alpha(model) - alpha(pretraining)"
        comparisons.append(_compare(label, model - data, draws, inp, (0.0, None), why))
    claim = "Model size helps more than pretraining data (alpha_model > alpha_data)"
    return _finding(2, claim, comparisons, "" if comparisons else "needs both sweeps")


def _difference(a, b):
    if a is None or b is None or len(a) != len(b):
        return None
    return np.asarray(a) - np.asarray(b)


@register_finding(3)
def _pet_size_near_zero(inp: _FindingInputs) -> dict:
    """(3) PET-size exponents near zero: inside (-c, c), c = :data:`PET_ALPHA_NEAR_ZERO`."""
    comparisons = []
    for m in inp.methods:
        value, draws, why = _param(inp, m, "pet_size", "alpha")
        if value is not None:
            bounds = (-PET_ALPHA_NEAR_ZERO, PET_ALPHA_NEAR_ZERO)
            comparisons.append(_compare(f"{m}: alpha(PET size)", value, draws, inp, bounds, why))
    claim = f"PET size buys almost nothing (|alpha_PET| < {PET_ALPHA_NEAR_ZERO:g})"
    return _finding(3, claim, comparisons, "" if comparisons else "no PET-size sweep")


@register_finding(4)
def _beta_order(inp: _FindingInputs) -> dict:
    """(4) beta: FMT > PET; LoRA > prompt (methods grouped by the registry's families, so DoRA
    counts as LoRA-like and P-tuning as prompt-like); each difference of the model-size fits'
    betas, replicate i of one method against replicate i of the other."""
    betas = {m: _param(inp, m, "model_size", "beta") for m in inp.methods}
    betas = {m: b for m, b in betas.items() if b[0] is not None}
    family = _families(betas)
    comparisons = []
    for high, lows in (("full", ("low-rank", "prompt")), ("low-rank", ("prompt",))):
        for a in family[high]:
            for b in (b for low in lows for b in family[low]):
                (va, da, wa), (vb, db, wb) = betas[a], betas[b]
                why = "; ".join(w for w in (wa, wb) if w)
                label = f"beta({a}) - beta({b})"
                comparisons.append(
                    _compare(label, va - vb, _difference(da, db), inp, (0.0, None), why)
                )
    claim = "beta is larger for FMT than for PET, and for LoRA than for prompt"
    return _finding(4, claim, comparisons)


@register_finding(5)
def _critical_sizes_exist(inp: _FindingInputs) -> dict:
    """(5) critical data sizes exist; PET first at small data. Per FMT-vs-PET case (each
    method's default model-size prediction, :func:`critical_sizes`): the share of replicate
    pairs whose laws cross in the searched range, with PET ahead at the smallest D_f both ran.
    Reproduced when some case crosses in at least (1 + level) / 2 of the pairs with PET ahead;
    not reproduced when every case crosses in at most (1 - level) / 2 of them or crosses with
    FMT ahead; otherwise inconclusive."""
    full = set(_families(inp.methods)["full"])
    cases = [c for c in inp.critical if full & {c["first"], c["second"]}]
    comparisons = [_critical_case(c, full, inp.level) for c in cases]
    verdicts = [c["verdict"] for c in comparisons]
    if not verdicts:
        status = None
    elif "reproduced" in verdicts:
        status = "reproduced"
    elif all(v == "not reproduced" for v in verdicts):
        status = "not reproduced"
    else:
        status = "inconclusive"
    finding = _finding(
        5, "Critical data sizes exist (PET first at small data, FMT later)", comparisons
    )
    finding["status"] = "not testable" if status is None else status
    return finding


def _critical_case(c: dict, full: set, level: float) -> dict:
    share = c.get("crossing_share")
    pet_first = c["leader"] is not None and c["leader"] not in full
    label = f"{c['first']}/{c['second']} at X={c['x']:.3g}"
    estimate = c["crossings"][0] if c["crossings"] else None
    if share is None:
        verdict, why = "inconclusive", "no bootstrap interval"
    elif share >= (1 + level) / 2:
        verdict = "reproduced" if pet_first else "not reproduced"
        why = f"crosses in {share:.0%} of replicates, {c['leader']} ahead at small D_f"
    elif share <= (1 - level) / 2:
        verdict, why = "not reproduced", f"crosses in {share:.0%} of replicates"
    else:
        verdict, why = "inconclusive", f"crosses in {share:.0%} of replicates"
    interval = c.get("interval")
    if interval is not None and None in interval:
        interval = None
    return {
        "label": label,
        "estimate": estimate,
        "interval": interval,
        "verdict": verdict,
        "why": why,
    }


def _families(methods) -> dict[str | None, list[str]]:
    """The study's methods by family (:func:`ftscale.finetune.methods.method_family`):
    ``{"full": [...], "low-rank": [...], "prompt": [...], None: [...]}``."""
    from ftscale.finetune.methods import method_family

    out: dict[str | None, list[str]] = {"full": [], "low-rank": [], "prompt": [], None: []}
    for method in methods:
        out[method_family(method)].append(method)
    return out


# -- everything -----------------------------------------------------------------------------------


def analyse(rows: Sequence[dict], config) -> dict:
    """The whole analysis of a store's rows under a study config, as JSON-ready data (its shape
    is :data:`FORMAT`)."""
    frame = runs_frame(rows)
    notes: list[str] = []
    fitted = fit_all(frame, config, notes) if len(frame) else []
    fits = [f.to_dict() for f in fitted]
    samples = replicate_samples(fitted)
    choices = law_choice(fits, samples, config.analysis.level)
    predictions = default_predictions(fitted, choices)
    critical = critical_sizes(predictions, config.analysis.level)
    counts = frame["status"].value_counts().to_dict() if len(frame) else {}
    if config.analysis.converged_only and len(frame):
        notes.insert(0, _converged_note(frame))
    return {
        "format": FORMAT,
        "study": config.name,
        "counts": {k: int(v) for k, v in counts.items()},
        "n_runs": len(frame),
        "fits": fits,
        "critical": critical,
        "critical_predictions": {m: record for m, (_, record) in predictions.items()},
        "law": STUDY_LAW if STUDY_LAW in config.analysis.forms else config.analysis.forms[0],
        "trends": trends(frame) if len(frame) else {},
        "generalisation": generalisation(frame) if len(frame) else [],
        "flagged": flagged(frame) if len(frame) else [],
        "findings": findings(fits, critical, config, samples),
        "best_forms": best_forms(fits),
        "law_choice": choices,
        "convergence": convergence(frame) if len(frame) else [],
        "notes": notes,
    }


def best_forms(fits: list[dict]) -> dict[str, str]:
    """Per ``method/sweep``, the form with the lowest held-out error (Delta_h)."""
    best: dict[str, tuple[float, str]] = {}
    for f in fits:
        if f["delta_h"] is None:
            continue
        key = f"{f['method']}/{f['sweep']}"
        if key not in best or f["delta_h"] < best[key][0]:
            best[key] = (f["delta_h"], f["form"])
    return {k: v[1] for k, v in best.items()}


def law_choice(fits: list[dict], samples: dict, level: float) -> list[dict]:
    """Per ``method/sweep``, which form predicts the held-out runs best and whether the
    replicates say so: the best form's Delta_h minus each rival's, replicate by replicate (the
    parametric replicates of two forms share their noise draws, so the pairs are matched), its
    interval re-centred on the difference of the estimates (:func:`_error_interval`: each
    form's replicate errors are biased upward, the more variable form's more). ``winner`` is
    the best form when every difference's interval lies below zero, else None."""
    out = []
    best = best_forms(fits)
    for key, form in best.items():
        method, sweep = key.split("/")
        own = [f for f in fits if (f["method"], f["sweep"]) == (method, sweep)]
        rivals = [f for f in own if f["form"] != form]
        mine = samples.get((method, sweep, form), {}).get("delta_h")
        best_delta = next(f["delta_h"] for f in own if f["form"] == form)
        differences = []
        for rival in rivals:
            theirs = samples.get((method, sweep, rival["form"]), {}).get("delta_h")
            gap = None if rival["delta_h"] is None else best_delta - rival["delta_h"]
            interval = _error_interval(_difference(mine, theirs), gap, level)
            differences.append({"rival": rival["form"], "interval": interval})
        clear = bool(differences) and all(
            d["interval"] is not None and d["interval"][1] < 0 for d in differences
        )
        out.append(
            {
                "method": method,
                "sweep": sweep,
                "best": form,
                "differences": differences,
                "winner": form if clear else None,
                **_default_prediction(form if clear else None, [*rivals, *_best_fit(fits, key)]),
            }
        )
    return out


def _best_fit(fits: list[dict], key: str) -> list[dict]:
    """The fits of one ``method/sweep`` key with the form of lowest Delta_h."""
    best = best_forms(fits)[key]
    return [f for f in fits if f"{f['method']}/{f['sweep']}" == key and f["form"] == best][:1]


def _default_prediction(winner: str | None, fits: list[dict]) -> dict:
    """The prediction ``ftscale recommend`` makes for one method and sweep: the clear winner,
    else with several forms their ensemble (:mod:`ftscale.laws.ensemble`) weighted by their
    Delta_h, the leave-largest-out error."""
    from ftscale.laws.ensemble import ENSEMBLE, ensemble_weights

    if winner is not None or len(fits) < 2:
        return {"prediction": winner or fits[0]["form"], "weights": None}
    weights = ensemble_weights({f["form"]: f["delta_h"] for f in fits})
    return {"prediction": ENSEMBLE if weights else fits[0]["form"], "weights": weights or None}


def convergence(frame: pd.DataFrame) -> list[dict]:
    """Per sweep and method: ok runs, how many converged (dev loss plateaued), and why the others
    stopped (``stop_reason`` counts)."""
    ok = frame[frame["status"] == "ok"]
    rows = []
    for sweep in X_COLUMN:
        sub = ok[ok["sweeps"].map(lambda s, sweep=sweep: sweep in s)]
        for method, runs in sub.groupby("method", sort=False):
            known = runs["converged"].map(lambda c: c is not None)
            reasons = runs["stop_reason"].fillna("unknown").value_counts().to_dict()
            rows.append(
                {
                    "sweep": sweep,
                    "method": method,
                    "runs": len(runs),
                    "converged": int((runs["converged"] == True).sum()),  # noqa: E712
                    "unknown": int((~known).sum()),
                    "stop_reasons": {str(k): int(v) for k, v in reasons.items()},
                }
            )
    return rows


def _converged_note(frame: pd.DataFrame) -> str:
    ok = frame[frame["status"] == "ok"]
    converged = int((ok["converged"] == True).sum())  # noqa: E712
    unknown = int(ok["converged"].isna().sum())
    text = (
        f"fits use converged runs only ({converged} of {len(ok)} ok runs plateaued"
        + (f"; {unknown} older records without the flag are kept" if unknown else "")
        + "); set [analysis] converged_only = false to fit every run"
    )
    return text
