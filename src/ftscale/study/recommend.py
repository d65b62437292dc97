"""Which finetuning method to use at a given base-model size and data size (beyond the paper).

From a study's model-size fits (per method its default prediction: the form that clearly wins
the study's law choice, or, where none does, the ensemble of the forms weighted by their
held-out errors: :mod:`ftscale.laws.ensemble`), for a base model of N non-embedding
parameters and D_f examples: each method's predicted test NLL with a bootstrap interval, the
critical data sizes around D_f (where two methods swap order), and the best method. With a target
loss: the D_f each method needs (solved on its law) and the training time that takes,
extrapolated from the store's measured training seconds (seconds per example per parameter, the
median over the method's runs).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from scipy.optimize import brentq

from ftscale.errors import UserError
from ftscale.study.analysis import CRITICAL_RANGE, FORMAT


def _check(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise UserError(f"{name} must be a positive number, got {value:g}")


def _analysis(study_dir: Path) -> dict:
    """The study's analysis: its ``fits.json`` when that is newer than the store and of this
    ftscale's :data:`~ftscale.study.analysis.FORMAT`, else analysed afresh (a file written by
    another version is re-analysed, not misread)."""
    from ftscale.study.store import STORE_FILE, open_store

    open_store(study_dir).close()
    fits = study_dir / "fits.json"
    if fits.is_file() and fits.stat().st_mtime >= (study_dir / STORE_FILE).stat().st_mtime:
        try:
            saved = json.loads(fits.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            saved = None
        if isinstance(saved, dict) and saved.get("format") == FORMAT:
            return saved
    from ftscale.study.reporting import analyse_dir

    return analyse_dir(study_dir)


def _choose(analysis: dict) -> dict:
    """Per method, the model-size prediction: the default prediction of the study's analysis
    (:func:`~ftscale.study.analysis.default_prediction`: the clear winner of its law choice, a
    :class:`~ftscale.laws.FitResult`, else the ensemble of the forms, an
    :class:`~ftscale.laws.ensemble.EnsembleResult`), rebuilt from the analysis' records; the
    same prediction the report's critical data sizes cross."""
    from ftscale.laws import FitResult
    from ftscale.study.analysis import default_prediction

    per: dict[str, dict[str, dict]] = {}
    for f in analysis["fits"]:
        if f["sweep"] == "model_size":
            per.setdefault(f["method"], {}).setdefault(f["form"], f)
    choice = {c["method"]: c for c in analysis.get("law_choice", []) if c["sweep"] == "model_size"}
    chosen = {}
    for method, forms in per.items():
        fits = [FitResult.from_dict(entry) for entry in forms.values()]
        chosen[method] = default_prediction(fits, choice.get(method))[0]
    return chosen


def _seconds_per_unit(study_dir: Path) -> dict[str, float]:
    """Training seconds per (example x parameter), median per method, from the store."""
    from ftscale.study.store import open_store

    per: dict[str, list[float]] = {}
    with open_store(study_dir) as store:
        for row in store.rows():
            record = row["record"] or {}
            if row["status"] == "ok" and record.get("train_s") and row["nonembedding_params"]:
                per.setdefault(row["method"], []).append(
                    record["train_s"] / (row["examples"] * row["nonembedding_params"])
                )
    return {m: float(np.median(v)) for m, v in per.items()}


def recommend(
    study_dir,
    model_size: float,
    examples: float,
    target_loss: float | None = None,
    level: float = 0.95,
) -> dict:
    """The recommendation as JSON-ready data (see the module docs)."""
    _check("--model-size", model_size)
    _check("--examples", examples)
    _check("--target-loss", target_loss)
    study_dir = Path(study_dir)
    analysis = _analysis(study_dir)
    fits = _choose(analysis)
    if not fits:
        raise UserError(f"{study_dir}: no model-size fits yet (run the study to the end first)")
    point = np.array([[model_size, examples]])
    methods = {}
    for method, fit in fits.items():
        methods[method] = _method_record(fit, point, level)
    best = min(methods, key=lambda m: methods[m]["predicted_loss"])
    sizes = np.concatenate([f.sizes for f in fits.values()])
    (x_lo, d_lo), (x_hi, d_hi) = sizes.min(axis=0), sizes.max(axis=0)
    result = {
        "study": analysis.get("study"),
        "model_size": model_size,
        "examples": examples,
        "methods": methods,
        "best": best,
        "critical": _critical(fits, model_size),
        "extrapolated": not (x_lo <= model_size <= x_hi and d_lo <= examples <= d_hi),
    }
    if target_loss is not None:
        result["target_loss"] = target_loss
        result["to_target"] = _to_target(
            fits, model_size, target_loss, _seconds_per_unit(study_dir)
        )
    return result


def _method_record(fit, point: np.ndarray, level: float) -> dict:
    """One method's prediction at ``point``: its form (or ``ensemble`` with the weights), the
    predicted loss and its interval (an ensemble's: the mixture of its forms' predictive
    draws)."""
    interval = None
    if getattr(fit, "weights", None) is not None:
        mixture = fit.predict_interval(point, level)
        if mixture is not None:
            interval = [float(mixture[0][0]), float(mixture[1][0])]
        extra = {"weights": dict(fit.weights), "reason": fit.reason}
    else:
        if fit.bootstrap is not None:
            lo, hi = fit.bootstrap.predict_interval(point, level)
            interval = [float(lo[0]), float(hi[0])]
        extra = {"params": dict(fit.law.params_)}
    return {
        "form": fit.form,
        "predicted_loss": float(fit.law.predict(point)[0]),
        "interval": interval,
        **extra,
    }


def _critical(fits: dict, x: float) -> list[dict]:
    """Crossings of every pair of the chosen laws at X = ``x``. The chosen forms may differ
    between methods, so this crosses the laws themselves rather than one form's fits
    (:func:`ftscale.laws.critical_points`)."""
    from itertools import combinations

    from ftscale.laws import crossings

    out = []
    for (m1, f1), (m2, f2) in combinations(fits.items(), 2):
        found = crossings(f1.law, f2.law, x, CRITICAL_RANGE)
        out.append({"first": m1, "second": m2, "crossings": found})
    return out


def _to_target(fits, x: float, target: float, seconds: dict[str, float]) -> dict[str, dict]:
    out = {}
    lo, hi = CRITICAL_RANGE
    for method, fit in fits.items():
        law = fit.law

        def gap(log_d: float, law=law) -> float:
            return float(law.predict(np.array([[x, math.exp(log_d)]]))[0]) - target

        if gap(math.log(hi)) > 0:
            out[method] = {"examples": None, "reachable": False, "train_s": None}
            continue
        d = lo if gap(math.log(lo)) <= 0 else math.exp(brentq(gap, math.log(lo), math.log(hi)))
        rate = seconds.get(method)
        out[method] = {
            "examples": d,
            "reachable": True,
            "train_s": None if rate is None else rate * d * x,
        }
    return out


def render(result: dict) -> str:
    """The recommendation as text lines."""
    lines = [
        f"study {result['study']}: base model N = {result['model_size']:.4g} non-embedding "
        f"parameters, D_f = {result['examples']:.4g} examples"
        + (" (extrapolated beyond the study's runs)" if result["extrapolated"] else "")
    ]
    for method, m in sorted(result["methods"].items(), key=lambda kv: kv[1]["predicted_loss"]):
        iv = m["interval"]
        shown = f" [{iv[0]:.4f}, {iv[1]:.4f}]" if iv else ""
        law = f"{m['form']} law"
        if "weights" in m:
            weights = ", ".join(f"{k} {v:.2f}" for k, v in m["weights"].items())
            law = f"ensemble of {weights}: {m['reason']}"
        lines.append(f"  {method:<8} predicted test NLL {m['predicted_loss']:.4f}{shown} ({law})")
    for c in result["critical"]:
        where = ", ".join(f"{v:,.0f}" for v in c["crossings"]) or "none in range"
        lines.append(f"  {c['first']} = {c['second']} at D_f: {where}")
    lines.append(f"best method here: {result['best']}")
    if "to_target" in result:
        lines.append(f"to reach test NLL {result['target_loss']:g}:")
        for method, t in result["to_target"].items():
            if not t["reachable"]:
                lines.append(f"  {method:<8} not reachable (its law levels off above the target)")
                continue
            cost = "" if t["train_s"] is None else f", about {t['train_s']:,.0f} s of training"
            lines.append(f"  {method:<8} {t['examples']:,.0f} examples{cost}")
        reach = {m: t for m, t in result["to_target"].items() if t["reachable"] and t["train_s"]}
        if reach:
            cheapest = min(reach, key=lambda m: reach[m]["train_s"])
            lines.append(f"cheapest way to the target: {cheapest}")
    return "\n".join(lines)
