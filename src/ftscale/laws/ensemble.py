"""Combining law forms by their extrapolation evidence, instead of letting one pick take all.

Choosing one form by nested extrapolation (:mod:`ftscale.laws.selection`) scores each form on
two or three folds of the fitting runs; with so few folds the pick is noisy, and a wrong pick
costs the whole prediction. The **ensemble** of a group predicts the weighted mean of the forms'
predictions, with weights from the same nested-extrapolation scores s_f (mean absolute error in
nats, never a held-out run):

    w_f = s_f^-2 / sum_g s_g^-2

(inverse squared error: a form twice as accurate on the folds gets four times the weight; forms
that could not be scored get none). A form **clearly wins** when its score is at most
:data:`CLEAR_RATIO` of every rival's; the group's default prediction (``prediction="auto"``) is
then that form, otherwise the ensemble.

Its prediction interval mixes the forms' bootstrap predictive draws, form f contributing the
share w_f: where the forms disagree, their draws sit apart and the interval spans them (the
interval of one form only holds its own parameter and noise uncertainty).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ftscale.common import first_line
from ftscale.errors import UserError
from ftscale.laws.holdout import mean_abs_deviation
from ftscale.laws.results import FitResult, band_coverage, fit_residuals, json_float
from ftscale.laws.selection import Selection
from ftscale.laws.uncertainty import LEVEL, Bootstrap, percentile_interval

#: A form clearly wins when its nested-extrapolation score is at most this share of every
#: rival's (with the weights above, at least four times any rival's weight).
CLEAR_RATIO = 0.5
#: The name of the ensemble's row, and of the prediction that uses it.
ENSEMBLE = "ensemble"
#: The default prediction: the clear winner where there is one, else the ensemble.
AUTO = "auto"
#: The prediction that always takes the selected form.
SELECTED = "selected"
#: Smallest score a weight is computed from (a form that fits its folds exactly is not
#: infinitely better).
MIN_SCORE = 1e-9


def ensemble_weights(scores: Mapping[str, float | None]) -> dict[str, float]:
    """Weights per form from nested-extrapolation scores (module docs); {} when none is finite."""
    inverse = {
        name: 1.0 / max(float(s), MIN_SCORE) ** 2
        for name, s in scores.items()
        if s is not None and math.isfinite(s)
    }
    total = sum(inverse.values())
    if not total:
        return {}
    return {name: inverse.get(name, 0.0) / total for name in scores}


def clear_winner(scores: Mapping[str, float | None]) -> str | None:
    """The form whose score is at most :data:`CLEAR_RATIO` of every rival's, else None (the only
    scored form wins when it is the only form)."""
    finite = {k: float(v) for k, v in scores.items() if v is not None and math.isfinite(v)}
    if not finite:
        return None
    best = min(finite, key=finite.get)
    rivals = [v for k, v in scores.items() if k != best]
    if all(v is None or not math.isfinite(v) or finite[best] <= CLEAR_RATIO * v for v in rivals):
        return best
    return None


@dataclass(frozen=True)
class EnsembleForm:
    """What the critical-point search reads of a law's form: its name and its variables."""

    name: str
    variables: tuple[str, ...]


class EnsembleLaw:
    """The weighted mean of fitted laws' predictions.

    Args:
        laws: fitted :class:`~ftscale.laws.ScalingLaw` objects (forms of ``("d",)`` or
            ``("x", "d")``).
        weights: one weight per law, 0 or more, summing to 1.
    """

    def __init__(self, laws: Sequence, weights: Sequence[float]) -> None:
        weights = np.asarray(weights, float)
        if len(laws) != weights.size or not len(laws):
            raise UserError(f"an ensemble needs one weight per law, got {weights.size}")
        valid = np.isfinite(weights).all() and (weights >= 0).all()
        if not valid or not np.isclose(weights.sum(), 1):
            raise UserError(f"ensemble weights must be 0 or more, summing to 1: {weights.tolist()}")
        self.laws, self.weights = list(laws), weights
        has_x = any("x" in law.form_.variables for law in self.laws)
        self.form_ = EnsembleForm(ENSEMBLE, ("x", "d") if has_x else ("d",))
        self.params_: dict[str, float] = {}

    def predict(self, X) -> np.ndarray:
        """The weighted mean prediction at sizes ``X`` (columns: this law's variables)."""
        sizes = np.asarray(X, float).reshape(-1, len(self.form_.variables))
        out = np.zeros(len(sizes))
        for law, weight in zip(self.laws, self.weights, strict=True):
            if weight > 0:
                columns = [self.form_.variables.index(v) for v in law.form_.variables]
                out += weight * law.predict(sizes[:, columns])
        return out


@dataclass
class EnsembleResult:
    """The ensemble of one group's forms, judged like one fit, and the group's default
    prediction.

    Attributes:
        group: the group label (None without groups).
        weights: form name -> weight (:func:`ensemble_weights`).
        law: the :class:`EnsembleLaw`.
        members: the forms' fits (same runs, same order).
        variables: the ensemble's variables -> table columns.
        sizes, observed, predicted, heldout, delta_e, delta_h: as in
            :class:`~ftscale.laws.FitResult`.
        used: the group's default prediction: ``"ensemble"`` or a form's name.
        reason: why that one, in words.
        bands: per run, the mixture prediction interval at ``level`` (None without bootstraps).
        requested: predictions at user-requested sizes (``{column: size, "predicted",
            "interval"}``).
    """

    group: str | None
    weights: dict[str, float]
    law: EnsembleLaw
    members: list[FitResult] = field(repr=False)
    variables: dict[str, str]
    sizes: np.ndarray
    observed: np.ndarray
    predicted: np.ndarray
    heldout: np.ndarray
    delta_e: float
    delta_h: float
    used: str = ENSEMBLE
    reason: str = ""
    bands: np.ndarray | None = field(default=None, repr=False)
    requested: list[dict] = field(default_factory=list)
    level: float = LEVEL
    form: str = ENSEMBLE

    @property
    def bootstrap(self):
        """None: the ensemble's intervals are its members' mixture (:meth:`predict_interval`)."""
        return None

    def predictive_draws(self, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(draws (N, n), weight per draw (N,)) at ``sizes`` (the ensemble's variables): every
        weighted member's bootstrap predictive draws, member f's sharing the weight w_f; None
        when a weighted member was not bootstrapped."""
        draws, weights = [], []
        for member in self.members:
            weight = self.weights.get(member.form, 0.0)
            if weight <= 0:
                continue
            boot = member.bootstrap
            if boot is None or boot.n_failed == len(boot.thetas):
                return None
            columns = [list(self.law.form_.variables).index(v) for v in member.law.form_.variables]
            with np.errstate(all="ignore"):
                own = member.bootstrap.predictive_draws(
                    sizes[:, columns], residuals=fit_residuals(member)
                )
            draws.append(own)
            weights.append(np.full(len(own), weight / len(own)))
        if not draws:
            return None
        return np.vstack(draws), np.concatenate(weights)

    def mixture(self) -> list[tuple[float, Bootstrap]] | None:
        """The bootstrap replicates behind this prediction, as (weight, replicates) pairs: each
        weighted form's, with the form's weight (the mixture its intervals read off); None when
        a weighted form was not bootstrapped. A fit's is its own, weight 1
        (:meth:`ftscale.laws.FitResult.mixture`)."""
        out = []
        for member in self.members:
            weight = self.weights.get(member.form, 0.0)
            if weight > 0:
                if member.bootstrap is None:
                    return None
                out.append((weight, member.bootstrap))
        return out or None

    def predict_interval(self, sizes, level: float | None = None):
        """Pointwise mixture prediction interval (low, high) at ``sizes``; None without
        bootstraps."""
        mixture = self.predictive_draws(np.asarray(sizes, float).reshape(-1, len(self.variables)))
        if mixture is None:
            return None
        return weighted_interval(*mixture, level or self.level)

    def coverage(self) -> dict | None:
        """Share of held-out runs inside their mixture interval (None without bands)."""
        return band_coverage(self.bands, self.observed, self.heldout, self.level)

    def to_dict(self, points: bool = False) -> dict:
        """The ``ensemble`` record of ``ftscale fit --json``."""
        record = {
            "form": ENSEMBLE,
            "group": self.group,
            "weights": {k: float(v) for k, v in self.weights.items()},
            "used": self.used,
            "reason": self.reason,
            "delta_e": json_float(self.delta_e),
            "delta_h": json_float(self.delta_h),
            "level": self.level,
            "variables": dict(self.variables),
            "coverage": self.coverage(),
            "predictions": self.requested,
        }
        if points:
            record["points"] = [
                {
                    "predicted": json_float(p),
                    "observed": float(o),
                    "heldout": bool(h),
                    **({} if self.bands is None else {"interval": [json_float(v) for v in b]}),
                }
                for p, o, h, b in zip(
                    self.predicted,
                    self.observed,
                    self.heldout,
                    self.bands if self.bands is not None else [None] * len(self.observed),
                    strict=True,
                )
            ]
        return record


def weighted_interval(
    draws: np.ndarray, weights: np.ndarray, level: float = LEVEL
) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise central interval of weighted draws (N, n) at ``level``: the weighted
    quantiles (1 - level) / 2 and (1 + level) / 2 of each column (non-finite draws sort last)."""
    percentile_interval(np.zeros(1), level)  # validates the level
    draws = np.where(np.isnan(draws), np.inf, draws)
    order = np.argsort(draws, axis=0, kind="stable")
    ordered = np.take_along_axis(draws, order, axis=0)
    cumulative = np.cumsum(weights[order], axis=0) / weights.sum()
    out = []
    for q in ((1 - level) / 2, (1 + level) / 2):
        index = np.minimum(np.argmax(cumulative >= q - 1e-12, axis=0), len(draws) - 1)
        out.append(np.take_along_axis(ordered, index[None], axis=0)[0])
    return out[0], out[1]


def check_prediction(prediction: str, forms: Sequence[str]) -> str:
    """``prediction`` if it is ``auto``, ``ensemble``, ``selected`` or one of ``forms``, else a
    one-line error naming ``--prediction``."""
    if prediction in (AUTO, ENSEMBLE, SELECTED, *forms):
        return prediction
    choices = ", ".join([AUTO, ENSEMBLE, SELECTED, *forms])
    raise UserError(f"--prediction {prediction!r}: expected one of {choices}")


def build_ensemble(
    fits: Sequence[FitResult], selection: Selection, *, prediction: str = AUTO
) -> EnsembleResult | None:
    """The ensemble of one group's fits (one per form, same runs) weighted by ``selection``'s
    scores, with the group's default prediction per ``prediction`` (``auto``, ``ensemble``,
    ``selected`` or a form); None with one form or without scores."""
    weights = ensemble_weights({r.form: selection.scores.get(r.form) for r in fits})
    if len(fits) < 2 or not weights:
        return None
    used, reason = _used(selection, prediction)
    return combine(fits, weights, used=used, reason=reason)


def combine(
    fits: Sequence[FitResult], weights: Mapping[str, float], *, used: str, reason: str = ""
) -> EnsembleResult:
    """The ensemble of one group's fits (one per form, same runs) with the given weights (form
    -> weight, summing to 1); ``used`` is the group's default prediction (``ensemble`` or one of
    the forms) and ``reason`` why."""
    names = [r.form for r in fits]
    unknown = [name for name in weights if name not in names]
    if unknown or used not in (ENSEMBLE, *names):
        what = f"weight for {unknown[0]!r}" if unknown else f"default prediction {used!r}"
        raise UserError(f"ensemble: {what} names no fitted form ({', '.join(names)})")
    share = [float(weights.get(name, 0.0)) for name in names]
    law = EnsembleLaw([r.law for r in fits], share)
    anchor = next((r for r in fits if "x" in r.variables), fits[0])
    predicted = np.zeros(len(anchor.observed))
    for r, weight in zip(fits, share, strict=True):
        if weight > 0:
            predicted = predicted + weight * r.predicted
    held = anchor.heldout
    return EnsembleResult(
        group=anchor.group,
        weights=dict(zip(names, share, strict=True)),
        law=law,
        members=list(fits),
        variables=dict(anchor.variables),
        sizes=anchor.sizes,
        observed=anchor.observed,
        predicted=predicted,
        heldout=held,
        delta_e=mean_abs_deviation(predicted[~held], anchor.observed[~held]),
        delta_h=mean_abs_deviation(predicted[held], anchor.observed[held]),
        used=used,
        reason=reason,
        level=anchor.level,
    )


def ensemble_from_dict(record: Mapping, fits: Sequence[FitResult]) -> EnsembleResult:
    """Rebuild an ensemble saved by :meth:`EnsembleResult.to_dict` (``points=True``) from its
    group's fits (``fits``: every fit of the saved document; those of its group are used)."""
    try:
        members = [r for r in fits if r.group == record["group"]]
        if len(members) < 2:
            group = record["group"]
            raise UserError(f"saved ensemble of group {group!r} has no two fits to combine")
        weights = {str(k): float(v) for k, v in dict(record["weights"]).items()}
        reason = str(record.get("reason") or "")
        result = combine(members, weights, used=str(record["used"]), reason=reason)
        result.level = float(record.get("level", result.level))
        result.requested = list(record.get("predictions") or [])
        result.bands = _saved_bands(record.get("points") or [], len(result.observed))
    except KeyError as exc:
        raise UserError(f"saved ensemble is missing field {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"saved ensemble has a malformed record: {first_line(exc)}") from None
    return result


def _saved_bands(points: Sequence[Mapping], n: int) -> np.ndarray | None:
    """The saved per-run mixture intervals (None when the ensemble was not bootstrapped)."""
    if not points or "interval" not in points[0]:
        return None
    if len(points) != n:
        raise ValueError(f"{len(points)} points for {n} runs")
    return np.array(
        [[np.nan if v is None else float(v) for v in p["interval"]] for p in points], float
    ).reshape(n, 2)


def _used(selection: Selection, prediction: str) -> tuple[str, str]:
    """The default prediction of a group and why."""
    if prediction == ENSEMBLE:
        return ENSEMBLE, "--prediction ensemble"
    if prediction == SELECTED:
        return (selection.form or ENSEMBLE), "--prediction selected"
    if prediction != AUTO:
        return prediction, f"--prediction {prediction}"
    winner = clear_winner(selection.scores)
    if winner is not None:
        return winner, (
            f"{winner} clearly wins: its nested-extrapolation error is at most "
            f"{CLEAR_RATIO:g} of every rival's"
        )
    ranked = sorted((v, k) for k, v in selection.scores.items() if math.isfinite(v))
    shown = ", ".join(f"{k} {v:.3g}" for v, k in ranked)
    return ENSEMBLE, f"no form clearly wins (nested-extrapolation errors: {shown})"


def attach_bands(ensemble: EnsembleResult) -> None:
    """Set the ensemble's per-run mixture prediction ``bands`` (when its members were
    bootstrapped)."""
    ok = np.isfinite(ensemble.predicted)
    if not ok.any():
        return
    interval = ensemble.predict_interval(ensemble.sizes[ok])
    if interval is None:
        return
    bands = np.full((len(ensemble.observed), 2), np.nan)
    bands[ok] = np.column_stack(interval)
    ensemble.bands = bands


def request(ensemble: EnsembleResult, points: Sequence[Sequence[float]]) -> list[dict]:
    """The ensemble's predictions at user-requested sizes, each with its mixture interval when
    the members were bootstrapped."""
    out = []
    names = list(ensemble.variables.values())
    for point in points:
        sizes = np.array([point[-len(names) :]], float)
        with np.errstate(all="ignore"):
            predicted = float(ensemble.law.predict(sizes)[0])
        record = {**dict(zip(names, sizes[0].tolist(), strict=True)), "predicted": predicted}
        interval = ensemble.predict_interval(sizes)
        if interval is not None:
            record["interval"] = [json_float(interval[0][0]), json_float(interval[1][0])]
        out.append(record)
    return out
