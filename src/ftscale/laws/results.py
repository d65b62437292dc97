"""Fit results: one law fitted to one group of runs and judged on its held-out runs, as an object
and as the JSON record of ``ftscale fit --json`` / ``--save`` and of a study's ``fits.json``.

A result is built from a law that is already fitted (:meth:`FitResult.from_law`), whichever way it
was fitted: a plain :class:`ScalingLaw`, a law of :class:`JointScalingLaw` (beta and E shared
between sweeps) or one with fixed parameters. The JSON record is turned back into a law, its
bootstrap or a whole result in one place: :func:`law_from_record`, :func:`bootstrap_from_record`,
:meth:`FitResult.from_dict`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ftscale.common import first_line
from ftscale.errors import UserError
from ftscale.laws.diagnostics import diagnose
from ftscale.laws.fit import ScalingLaw
from ftscale.laws.holdout import mean_abs_deviation
from ftscale.laws.selection import Selection
from ftscale.laws.uncertainty import LEVEL, Bootstrap, bootstrap_many
from ftscale.laws.userforms import resolve_form


def json_float(value: float | None) -> float | None:
    """``value`` as a JSON number, None for None, NaN and infinities (JSON has neither)."""
    return None if value is None or not math.isfinite(value) else float(value)


def _from_json_float(value) -> float:
    return float("nan") if value is None else float(value)


def law_from_record(record: Mapping) -> ScalingLaw:
    """The law of a fit record (``form_spec`` or ``form``, ``params``, ``space``, ``fixed``).

    Raises KeyError, TypeError or ValueError for a record that does not hold one (the callers
    that read files turn these into one-line errors, see :meth:`FitResult.from_dict`), and
    :class:`~ftscale.errors.UserError` for a form that cannot be resolved.
    """
    law = ScalingLaw.from_params(
        resolve_form(record.get("form_spec") or record["form"]),
        record["params"],
        space=record.get("space", "log"),
        fixed=record.get("fixed") or None,
    )
    law.objective_ = _from_json_float(record.get("objective"))
    return law


def bootstrap_from_record(record: Mapping, law: ScalingLaw | None = None) -> Bootstrap | None:
    """The bootstrap replicates of a fit record (None when it was not bootstrapped)."""
    saved = record.get("bootstrap")
    if not saved:
        return None
    thetas = np.array([[_from_json_float(v) for v in row] for row in saved["thetas"]], float)
    return Bootstrap(
        law=law if law is not None else law_from_record(record),
        thetas=thetas,
        seed=int(saved["seed"]),
    )


@dataclass
class FitResult:
    """One form fitted to one group of runs, with its held-out evaluation.

    Attributes:
        form, group, space: what was fitted, to which runs, with residuals in which space.
        law: the fitted :class:`ScalingLaw`.
        variables: form variable -> table column (e.g. ``{"x": "params", "d": "examples"}``).
        sizes, observed, predicted, heldout: per run (sizes are raw counts; losses in nats/token).
        delta_e, delta_h: mean absolute deviation on fitted / held-out runs (nats per token).
        bootstrap: the replicates when uncertainty was asked for.
        warnings: one-line diagnostics of the fit (:mod:`ftscale.laws.diagnostics`).
        selected: whether the selection (:mod:`ftscale.laws.selection`) chose this form.
        selection_score: its nested-extrapolation score (nats), None if not scored.
        bands: per run, the bootstrap prediction interval (low, high) at ``level``.
        requested: predictions at user-requested sizes, each ``{column: size, "predicted",
            "interval"}``.
        level: central level of the parameter intervals and the prediction bands (0.95).
    """

    form: str
    group: str | None
    space: str
    law: ScalingLaw
    variables: dict[str, str]
    sizes: np.ndarray
    observed: np.ndarray
    predicted: np.ndarray
    heldout: np.ndarray
    delta_e: float
    delta_h: float
    bootstrap: Bootstrap | None = field(default=None, repr=False)
    warnings: list[str] = field(default_factory=list)
    selected: bool = False
    selection_score: float | None = None
    bands: np.ndarray | None = field(default=None, repr=False)
    requested: list[dict] = field(default_factory=list)
    form_spec: str | None = None
    level: float = LEVEL

    @classmethod
    def from_law(
        cls,
        law: ScalingLaw,
        sizes: np.ndarray,
        observed: np.ndarray,
        heldout: np.ndarray,
        *,
        variables: Mapping[str, str],
        group: str | None = None,
        level: float = LEVEL,
        unused: Mapping[str, str] | None = None,
    ) -> FitResult:
        """The result of ``law``, already fitted on the runs not ``heldout``: predictions,
        Delta_e / Delta_h and the diagnostics (``unused``: size options the form ignores).

        Held-out sizes may be invalid (a zero) without having blocked the fit: they are predicted
        as NaN, which leaves Delta_h NaN rather than failing.
        """
        sizes = np.asarray(sizes, float).reshape(len(observed), -1)
        observed, heldout = np.asarray(observed, float), np.asarray(heldout, bool).copy()
        with np.errstate(all="ignore"):
            ok = np.isfinite(sizes).all(axis=1) & (sizes > 0).all(axis=1)
            predicted = np.full(len(observed), np.nan)
            predicted[ok] = law.predict(sizes[ok])
        fit = ~heldout
        return cls(
            form=law.form_.name,
            group=group,
            space=law.space,
            law=law,
            variables=dict(variables),
            sizes=sizes,
            observed=observed,
            predicted=predicted,
            heldout=heldout,
            delta_e=mean_abs_deviation(predicted[fit], observed[fit]),
            delta_h=mean_abs_deviation(predicted[heldout], observed[heldout]),
            warnings=diagnose(law, sizes[fit], observed[fit], columns=variables, unused=unused),
            level=level,
        )

    @property
    def n_fit(self) -> int:
        """Runs used for fitting."""
        return int((~self.heldout).sum())

    @property
    def n_heldout(self) -> int:
        """Runs held out."""
        return int(self.heldout.sum())

    def fixed_params(self) -> set[str]:
        """Reported names of the parameters held fixed in the fit (they get no interval)."""
        form = self.law.form_
        searched = (form.search_name(name) for name in self.law.fixed)
        return {form.log_params.get(s, s) for s in searched}

    def estimated_params(self) -> list[str]:
        """Reported names of the parameters the bootstrap re-estimates: the free ones, and fixed
        ones its replicates vary (a joint bootstrap re-estimates the shared beta and E)."""
        if self.bootstrap is None:
            return []
        fixed = self.fixed_params()
        return [
            name
            for name, values in self.bootstrap.samples().items()
            if name not in fixed or np.nanmax(values) > np.nanmin(values)
        ]

    def intervals(self, level: float | None = None) -> dict[str, list[float | None]]:
        """Bootstrap percentile intervals of the estimated parameters at ``level`` (default the
        result's); empty without a bootstrap. Parameters the data cannot pin
        (:meth:`not_identified`) get none. NaN ends (no replicate could be fitted) are None."""
        if self.bootstrap is None:
            return {}
        shown = set(self.estimated_params()) - set(self.not_identified())
        return {
            name: [json_float(low), json_float(high)]
            for name, (low, high) in self.bootstrap.intervals(level or self.level).items()
            if name in shown
        }

    def not_identified(self) -> dict[str, str]:
        """Parameters the data cannot pin, each with the reason (see :func:`not_identified`)."""
        if self.bootstrap is None:
            return {}
        estimated = self.estimated_params()
        return not_identified(
            self.law.params_,
            set(self.law.form_.log_params.values()),
            {k: v for k, v in self.bootstrap.samples().items() if k in estimated},
            self.bootstrap.intervals(self.level),
            float(np.min(self.observed)) if self.observed.size else 1.0,
        )

    def coverage(self) -> dict | None:
        """Share of held-out runs inside their prediction interval (None without bands)."""
        return band_coverage(self.bands, self.observed, self.heldout, self.level)

    def mixture(self) -> list[tuple[float, Bootstrap]] | None:
        """The bootstrap replicates behind this prediction as (weight, replicates) pairs: its
        own, weight 1 (None without a bootstrap). An ensemble's are its forms', each with its
        weight (:meth:`ftscale.laws.ensemble.EnsembleResult.mixture`): critical points read
        either alike."""
        return None if self.bootstrap is None else [(1.0, self.bootstrap)]

    def to_dict(self, points: bool = False) -> dict:
        """The JSON record of ``ftscale fit --json`` (``points=True`` adds per-run predictions)."""
        record = {
            "form": self.form,
            "form_spec": self.form_spec or self.form,
            "group": self.group,
            "space": self.space,
            "params": {k: float(v) for k, v in self.law.params_.items()},
            "fixed": {k: float(v) for k, v in self.law.fixed.items()},
            "objective": json_float(self.law.objective_),
            "converged": bool(self.law.converged_),
            "n_fit": self.n_fit,
            "n_heldout": self.n_heldout,
            "delta_e": json_float(self.delta_e),
            "delta_h": json_float(self.delta_h),
            "level": self.level,
            "intervals": self.intervals(),
            "not_identified": self.not_identified(),
            "variables": dict(self.variables),
            "warnings": list(self.warnings),
            "selected": self.selected,
            "selection_score": json_float(self.selection_score),
            "coverage": self.coverage(),
            "predictions": self.requested,
        }
        if points:
            record["points"] = self._points()
        if self.bootstrap is not None:
            record["bootstrap"] = {
                "seed": self.bootstrap.seed,
                "thetas": [[json_float(v) for v in row] for row in self.bootstrap.thetas],
            }
        return record

    def _points(self) -> list[dict]:
        out = []
        for i, (row, obs, pred, held) in enumerate(
            zip(self.sizes, self.observed, self.predicted, self.heldout, strict=True)
        ):
            point = {
                **{col: float(v) for col, v in zip(self.variables.values(), row, strict=True)},
                "observed": float(obs),
                "predicted": json_float(pred),
                "heldout": bool(held),
            }
            if self.bands is not None:
                point["interval"] = [json_float(v) for v in self.bands[i]]
            out.append(point)
        return out

    @classmethod
    def from_dict(cls, record: Mapping) -> FitResult:
        """Rebuild a result saved by :meth:`to_dict` (with ``points=True``)."""
        try:
            law = law_from_record(record)
            variables = dict(record["variables"])
            points = record.get("points", [])
            sizes = np.array([[p[c] for c in variables.values()] for p in points], float)
            result = cls(
                form=record["form"],
                group=record.get("group"),
                space=record["space"],
                law=law,
                variables=variables,
                sizes=sizes.reshape(len(points), len(variables)),
                observed=np.array([p["observed"] for p in points], float),
                predicted=np.array([_from_json_float(p["predicted"]) for p in points], float),
                heldout=np.array([p["heldout"] for p in points], bool),
                delta_e=_from_json_float(record.get("delta_e")),
                delta_h=_from_json_float(record.get("delta_h")),
                warnings=list(record.get("warnings", [])),
                form_spec=record.get("form_spec"),
                level=float(record.get("level", LEVEL)),
            )
            result.bootstrap = bootstrap_from_record(record, law)
        except KeyError as exc:
            raise UserError(f"saved fit is missing field {exc}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"saved fit has a malformed record: {first_line(exc)}") from None
        return result


def band_coverage(bands, observed: np.ndarray, heldout: np.ndarray, level: float) -> dict | None:
    """Share of held-out runs inside their interval ``bands`` (n, 2) (None without bands)."""
    if bands is None:
        return None
    held = heldout & np.isfinite(bands).all(axis=1)
    inside = (bands[:, 0] <= observed) & (observed <= bands[:, 1])
    n = int(held.sum())
    return {"level": level, "heldout": float(inside[held].mean()) if n else None, "n": n}


class Fits(list):
    """The :class:`FitResult` list of :func:`~ftscale.laws.fit_table`, with the form selection
    per group and, with several forms, each group's ensemble
    (:class:`~ftscale.laws.ensemble.EnsembleResult`, its default prediction included)."""

    selections: list[Selection]
    group_columns: list[str]
    ensembles: list

    def restricted(self, forms: Sequence[str]) -> Fits:
        """The fits of ``forms`` only, with their groups' selections, and the ensembles whose
        weighted forms are all among them (an ensemble of other forms is not what was asked)."""
        out = Fits(r for r in self if r.form in forms)
        out.selections = list(getattr(self, "selections", []))
        out.group_columns = list(getattr(self, "group_columns", []))
        out.ensembles = [
            e
            for e in getattr(self, "ensembles", [])
            if all(form in forms for form, weight in e.weights.items() if weight > 0)
        ]
        return out

    def to_dict(self, points: bool = True) -> dict:
        """The JSON document of ``ftscale fit --json`` / ``--save``."""
        return {
            "fits": [r.to_dict(points=points) for r in self],
            "selection": [s.to_dict() for s in getattr(self, "selections", [])],
            "ensemble": [e.to_dict(points=points) for e in getattr(self, "ensembles", [])],
            "group_columns": list(getattr(self, "group_columns", [])),
        }


#: A parameter whose replicates correlate beyond this with another's is not identified: the data
#: pin only a combination of the two (e.g. alpha and beta when X and D_f vary together).
MAX_CORRELATION = 0.99
#: E below this share of the smallest observed loss has collapsed to its bound (zero): the law
#: puts all of the loss in its reducible part, and E's value says nothing.
E_FLOOR = 1e-2
#: An interval narrower than this share of its value is zero-width: the refits do not move the
#: parameter (its gradient is nil at this design), which is not precision.
MIN_WIDTH = 1e-4
#: An interval of a log-searched parameter (A, E, ...) spanning more than this factor is
#: unbounded for practical purposes; for the others (exponents) a width above this many units.
MAX_SPAN = {"log": 1e6, "linear": 10.0}


def not_identified(
    params: Mapping[str, float],
    log_names: set[str],
    samples: Mapping[str, np.ndarray],
    intervals: Mapping[str, tuple[float, float]],
    min_loss: float,
) -> dict[str, str]:
    """Reason per parameter the bootstrap cannot pin: E at its bound (zero), a zero-width,
    missing or unbounded interval, or replicates that move with another parameter's
    (|corr| > :data:`MAX_CORRELATION`). Only parameters in ``samples`` are judged; ``log_names``
    are those searched through their log (A, E), whose spans are judged as ratios. Correlation
    is judged between exponents only: a prefactor always moves with its exponent (log A with
    alpha, as X is not centred), which says nothing about what the data pin."""
    out: dict[str, str] = {}
    for name in samples:
        reason = _unpinned(name, params[name], intervals[name], min_loss, name in log_names)
        if reason:
            out[name] = reason
    names = [n for n in samples if n not in out and n not in log_names]
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            r = _correlation(samples[a], samples[b])
            if abs(r) > MAX_CORRELATION:
                text = f"moves with {{other}} in the refits (corr {r:+.3f})"
                out.setdefault(a, text.format(other=b))
                out.setdefault(b, text.format(other=a))
    return out


def _unpinned(name: str, value: float, interval, min_loss: float, log: bool) -> str:
    low, high = interval
    if name == "E" and value < E_FLOOR * min_loss:
        return f"E collapsed to its bound ({value:.2g}, the loss floor is not resolved)"
    if not (math.isfinite(low) and math.isfinite(high)):
        return "no interval (the refits failed)"
    if high - low <= MIN_WIDTH * max(abs(value), 1e-12):
        return "zero-width interval (the refits do not move it)"
    if name == "E" and low < E_FLOOR * min_loss:
        return "the refits put E at its bound (zero)"
    if log and low > 0 and high / low > MAX_SPAN["log"]:
        return f"unbounded interval [{low:.2g}, {high:.2g}]"
    if not log and high - low > MAX_SPAN["linear"]:
        return f"unbounded interval [{low:.2g}, {high:.2g}]"
    return ""


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return 0.0
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def fit_residuals(result: FitResult) -> np.ndarray:
    """The fit's residuals on its fitting runs in its own space (log or linear), for prediction
    intervals."""
    fit = ~result.heldout
    predicted = result.law.predict(result.sizes[fit])
    observed = result.observed[fit]
    return np.log(predicted / observed) if result.law.space == "log" else predicted - observed


def bootstrap_results(
    results: Sequence[FitResult],
    n: int,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Bootstrap every result's law on its fitting runs, in one pool of worker processes, and
    set each result's ``bootstrap``, prediction ``bands`` and warnings about failed refits.

    Replicate i of every law uses the seed pair (seed, i) (:func:`bootstrap_many`), so a result's
    replicates do not depend on which other results share the call.
    """
    items = [(r.law, r.sizes[~r.heldout], r.observed[~r.heldout]) for r in results]
    replicates = bootstrap_many(items, n, seed=seed, progress=progress)
    for result, boot in zip(results, replicates, strict=True):
        attach_bootstrap(result, boot)


def attach_bootstrap(result: FitResult, boot: Bootstrap) -> None:
    """Set ``result``'s bootstrap, its per-run prediction ``bands`` and warnings about refits
    that stopped early or failed."""
    n = len(boot.thetas)
    result.bootstrap = boot
    bands = np.full((len(result.observed), 2), np.nan)
    ok = np.isfinite(result.predicted)
    if ok.any() and boot.n_failed < n:
        low, high = boot.predict_interval(
            result.sizes[ok], result.level, residuals=fit_residuals(result)
        )
        bands[ok] = np.column_stack([low, high])
    result.bands = bands
    if boot.n_unconverged:
        result.warnings.append(
            f"{boot.n_unconverged} of {n} bootstrap refits stopped at their iteration limit"
        )
    if boot.n_failed:
        result.warnings.append(f"{boot.n_failed} of {n} bootstrap resamples could not be fitted")
