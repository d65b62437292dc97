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
5. critical D_f between every pair of methods at each model size (crossings of the model-size
   laws), with bootstrap intervals.

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
from dataclasses import dataclass
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
#: 2 has every fit as a :class:`ftscale.laws.FitResult` record (``bootstrap`` with its seed,
#: ``variables``, ``fixed``, ``level``, ``warnings``) plus the study's keys, and every critical
#: point as a :class:`ftscale.laws.CriticalPoint` record (``leader``, ``observed``). Data without
#: a ``format`` is of the shape before (``bootstrap_thetas``, ``better_at_small_data``).
FORMAT = 2
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


def sweep_points(frame: pd.DataFrame, sweep: str, method: str) -> pd.DataFrame:
    """Mean test NLL per (X, D_f) of one sweep and method (ok runs only), with ``n`` seeds."""
    x = X_COLUMN[sweep]
    mask = (frame["status"] == "ok") & (frame["method"] == method) & frame["test_nll"].notna()
    mask &= frame["sweeps"].map(lambda s: sweep in s)
    sub = frame[mask]
    if sub.empty or sub[x].isna().any():
        return pd.DataFrame(columns=["x", "examples", "test_nll", "n", "rung"])
    grouped = sub.groupby([x, "examples"], as_index=False).agg(
        test_nll=("test_nll", "mean"), n=("test_nll", "size"), rung=("rung", "first")
    )
    return grouped.rename(columns={x: "x"}).sort_values(["x", "examples"]).reset_index(drop=True)


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
    method) and what the study adds to its record: the sweep, the joint fit's shared values and
    the rung of every point."""

    method: str
    sweep: str
    shared: dict[str, float] | None
    rungs: list[str]
    result: Any  # ftscale.laws.FitResult

    def to_dict(self) -> dict:
        """The fit's entry in the analysis data: the laws package's record plus the study's
        keys. The study compares forms by Delta_h (:func:`best_forms`), so the record's
        nested-extrapolation selection keys, never filled here, are left out."""
        record = self.result.to_dict(points=True)
        for point, rung in zip(record["points"], self.rungs, strict=True):
            point["rung"] = rung
        for key in ("selected", "selection_score", "predictions"):
            del record[key]
        study = {"method": self.method, "sweep": self.sweep, "x": X_COLUMN[self.sweep]}
        return {**study, "shared": self.shared, **record}


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
    return SweepFit(method, sweep, shared, [str(r) for r in points["rung"]], result)


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
    """The joint fit of the model-size and pretraining sweeps: (law per sweep, shared beta and
    E), or ({}, None) with one sweep or when it cannot be fitted (then each is fitted alone)."""
    from ftscale.laws import JointScalingLaw

    if len(data) != 2:
        return {}, None
    analysis = config.analysis
    try:
        joint = JointScalingLaw(form, space=analysis.space, n_refine=analysis.refine).fit(
            {s: (_sizes(p)[~h], _losses(p)[~h]) for s, (p, h) in data.items()}
        )
    except UserError as exc:
        notes.append(f"{method} {form}: joint fit skipped ({exc}); sweeps fitted separately")
        return {}, None
    return dict(joint.laws_), {k: float(v) for k, v in joint.shared_.items()}


def fit_method(frame, config, method: str, form: str, notes: list[str]) -> list[SweepFit]:
    """Every sweep's law for one method and form (the study's joint procedure)."""
    data = {}
    for sweep in ("model_size", "pretraining"):
        points = sweep_points(frame, sweep, method)
        if len(points) and points["x"].nunique() >= 2 and points["examples"].nunique() >= 2:
            data[sweep] = (points, heldout_mask(points, sweep, config))
    laws, shared = _joint(data, config, method, form, notes)
    fits = []
    for sweep, (points, held) in data.items():
        law = laws.get(sweep) or _fit_law(
            form, points, held, config, notes, where=f"{method} {form} {sweep}"
        )
        if law is not None:
            fits.append(_sweep_fit(law, points, held, config, method, sweep=sweep, shared=shared))
    if method in config.sweeps.pet_size.sizes and config.sweeps.pet_size.enabled:
        fits += _fit_pet(frame, config, method, form, shared, notes)
    return fits


def _fit_pet(frame, config, method, form, shared, notes) -> list[SweepFit]:
    """The PET-size sweep, with the method's joint beta and E held fixed (they take no part in
    estimating them)."""
    points = sweep_points(frame, "pet_size", method)
    if len(points) == 0 or points["x"].nunique() < 2:
        return []
    held = heldout_mask(points, "pet_size", config)
    fixed = {k: v for k, v in (shared or {}).items() if k in ("beta", "E")}
    where = f"{method} {form} pet_size"
    law = _fit_law(form, points, held, config, notes, where=where, fixed=fixed)
    if law is None:
        return []
    return [_sweep_fit(law, points, held, config, method, sweep="pet_size", shared=shared or None)]


def _bootstrap(fits: list[SweepFit], analysis, notes: list[str]) -> None:
    """Intervals for every fit at once (replicate i of each law resamples with the seed pair
    (seed, i), so each law's replicates are those of a bootstrap of it alone)."""
    from ftscale.laws import bootstrap_results

    if analysis.bootstrap <= 0 or not fits:
        return
    try:
        bootstrap_results([f.result for f in fits], analysis.bootstrap, analysis.seed)
    except UserError as exc:
        notes.append(f"no bootstrap intervals ({exc})")


def fit_all(frame: pd.DataFrame, config, notes: list[str]) -> list[SweepFit]:
    """Every method's and form's fits with their bootstrap; warnings raised while fitting become
    notes."""
    fits: list[SweepFit] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for method in config.methods:
            for form in config.analysis.forms:
                fits += fit_method(frame, config, method, form, notes)
        _bootstrap(fits, config.analysis, notes)
    notes += sorted({str(w.message) for w in caught})
    return fits


# -- critical data sizes --------------------------------------------------------------------------


def critical_sizes(fits: list[SweepFit], form: str, level: float) -> list[dict]:
    """Crossings of every pair of methods' model-size laws at each model size either of them ran
    (:func:`ftscale.laws.critical_points`), with the form added to each record."""
    from ftscale.laws import critical_points

    model_size = [f.result for f in fits if f.sweep == "model_size" and f.result.form == form]
    if len(model_size) < 2:
        return []
    points = critical_points(model_size, d_range=CRITICAL_RANGE, form=form, level=level)
    return [{**p.to_dict(), "form": form} for p in points]


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
    """What every finding reads: all fits, the critical points, the study's methods, and the
    multiplicative fits by ``(method, sweep)``."""

    fits: list[dict]
    critical: list[dict]
    methods: list[str]
    get: dict[tuple[str, str], dict]


def register_finding(number: int):
    def wrap(fn):
        FINDINGS[number] = fn
        return fn

    return wrap


def findings(fits: list[dict], critical: list[dict], config) -> list[dict]:
    """The study's five findings, each marked reproduced, not reproduced or not testable."""
    mult = [f for f in fits if f["form"] == "multiplicative"]
    inputs = _FindingInputs(
        fits=fits,
        critical=critical,
        methods=list(config.methods),
        get={(f["method"], f["sweep"]): f for f in mult},
    )
    return [FINDINGS[number](inputs) for number in sorted(FINDINGS)]


@register_finding(1)
def _small_heldout_error(inp: _FindingInputs) -> dict:
    """(1) the multiplicative law fits with small held-out error."""
    claim = "The multiplicative law fits with small held-out error"
    get = inp.get
    held = [(m, get[(m, "model_size")]) for m in inp.methods if (m, "model_size") in get]
    held = [(m, f) for m, f in held if f["delta_h"] is not None]
    if not held:
        return _finding(1, claim, None, "no held-out model-size points")
    detail = {m: f["delta_h"] for m, f in held}
    add = {
        f["method"]: f["delta_h"]
        for f in inp.fits
        if f["form"] == "additive" and f["sweep"] == "model_size" and f["delta_h"] is not None
    }
    mean_loss = np.mean([p["observed"] for _, f in held for p in f["points"]])
    ok = all(f["delta_h"] <= SMALL_DELTA_H * mean_loss for _, f in held)
    wins = sum(1 for m, f in held if m in add and f["delta_h"] <= add[m])
    text = (
        f"multiplicative Delta_h (model size) {_fmt_map(detail)}; additive "
        f"{_fmt_map(add)}; the multiplicative law has the lower held-out error for "
        f"{wins} of {len(held)} methods (threshold for 'small': "
        f"{SMALL_DELTA_H:.0%} of the mean loss, {SMALL_DELTA_H * mean_loss:.3f} nats)"
    )
    return _finding(1, claim, ok, text)


def _by_method(inp: _FindingInputs, sweep: str, param: str) -> dict[str, float]:
    """One parameter of each method's multiplicative fit of ``sweep``, in the study's order."""
    get = inp.get
    return {m: get[(m, sweep)]["params"][param] for m in inp.methods if (m, sweep) in get}


@register_finding(2)
def _model_size_beats_pretraining(inp: _FindingInputs) -> dict:
    """(2) alpha for model size > alpha for pretraining data."""
    data = _by_method(inp, "pretraining", "alpha")
    model = _by_method(inp, "model_size", "alpha")
    pairs = {m: (a, data[m]) for m, a in model.items() if m in data}
    ok = bool(pairs) and all(a > b for a, b in pairs.values())
    text = "; ".join(
        f"{m}: alpha(model) {a:.3g} vs alpha(pretraining) {b:.3g}" for m, (a, b) in pairs.items()
    )
    claim = "Model size helps more than pretraining data (alpha_model > alpha_data)"
    return _finding(2, claim, ok if pairs else None, text or "needs both sweeps")


@register_finding(3)
def _pet_size_near_zero(inp: _FindingInputs) -> dict:
    """(3) PET-size exponents near zero."""
    pet = _by_method(inp, "pet_size", "alpha")
    ok = bool(pet) and all(abs(a) < PET_ALPHA_NEAR_ZERO for a in pet.values())
    text = "; ".join(f"{m}: alpha(PET size) {a:.3g}" for m, a in pet.items())
    claim = f"PET size buys almost nothing (|alpha_PET| < {PET_ALPHA_NEAR_ZERO:g})"
    return _finding(3, claim, ok if pet else None, text or "no PET-size sweep")


@register_finding(4)
def _beta_order(inp: _FindingInputs) -> dict:
    """(4) beta: FMT > PET; LoRA > prompt (methods grouped by the registry's families, so DoRA
    counts as LoRA-like and P-tuning as prompt-like)."""
    betas = _by_method(inp, "model_size", "beta")
    family = _families(betas)
    checks = [
        betas[a] > betas[b]
        for high, lows in (("full", ("low-rank", "prompt")), ("low-rank", ("prompt",)))
        for a in family[high]
        for low in lows
        for b in family[low]
    ]
    return _finding(
        4,
        "beta is larger for FMT than for PET, and for LoRA than for prompt",
        all(checks) if checks else None,
        "beta (model-size fits): " + _fmt_map(betas),
    )


@register_finding(5)
def _critical_sizes_exist(inp: _FindingInputs) -> dict:
    """(5) critical data sizes exist; PET first at small data."""
    critical = inp.critical
    found = [c for c in critical if c["crossings"]]
    full = set(_families(inp.methods)["full"])
    fmt_pairs = [c for c in critical if full & {c["first"], c["second"]}]
    # The leader is the method with the lower predicted loss at the smallest D_f both ran.
    pet_first = [c for c in fmt_pairs if c["leader"] is not None and c["leader"] not in full]
    text = (
        f"{len(found)} of {len(critical)} (pair, model size) cases cross in "
        f"[{CRITICAL_RANGE[0]:g}, {CRITICAL_RANGE[1]:g}] examples; PET ahead of FMT at the "
        f"smallest D_f in {len(pet_first)} of {len(fmt_pairs)} cases"
    )
    first = [
        f"{c['first']}/{c['second']} at X={c['x']:.3g}: {c['crossings'][0]:.0f}" for c in found[:6]
    ]
    if first:
        text += "; e.g. " + ", ".join(first)
    return _finding(
        5,
        "Critical data sizes exist (PET first at small data, FMT later)",
        bool(found) and bool(pet_first) if critical else None,
        text,
    )


def _families(methods) -> dict[str | None, list[str]]:
    """The study's methods by family (:func:`ftscale.finetune.methods.method_family`):
    ``{"full": [...], "low-rank": [...], "prompt": [...], None: [...]}``."""
    from ftscale.finetune.methods import method_family

    out: dict[str | None, list[str]] = {"full": [], "low-rank": [], "prompt": [], None: []}
    for method in methods:
        out[method_family(method)].append(method)
    return out


def _finding(number: int, claim: str, ok: bool | None, detail: str) -> dict:
    status = "not testable" if ok is None else ("reproduced" if ok else "not reproduced")
    return {"number": number, "claim": claim, "status": status, "detail": detail}


def _fmt_map(values: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in values.items() if v is not None) or "-"


# -- everything -----------------------------------------------------------------------------------


def analyse(rows: Sequence[dict], config) -> dict:
    """The whole analysis of a store's rows under a study config, as JSON-ready data (its shape
    is :data:`FORMAT`)."""
    frame = runs_frame(rows)
    notes: list[str] = []
    fitted = fit_all(frame, config, notes) if len(frame) else []
    form = (
        "multiplicative" if "multiplicative" in config.analysis.forms else config.analysis.forms[0]
    )
    critical = critical_sizes(fitted, form, config.analysis.level)
    fits = [f.to_dict() for f in fitted]
    counts = frame["status"].value_counts().to_dict() if len(frame) else {}
    return {
        "format": FORMAT,
        "study": config.name,
        "counts": {k: int(v) for k, v in counts.items()},
        "n_runs": len(frame),
        "fits": fits,
        "critical": critical,
        "critical_form": form,
        "trends": trends(frame) if len(frame) else {},
        "generalisation": generalisation(frame) if len(frame) else [],
        "flagged": flagged(frame) if len(frame) else [],
        "findings": findings(fits, critical, config),
        "best_forms": best_forms(fits),
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
