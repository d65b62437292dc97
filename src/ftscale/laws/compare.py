"""Fit several law forms to a table of runs, per group, on one held-out split, and compare them.

This is what ``ftscale fit`` and ``ftscale critical`` do, as a library: the table is a mapping of
column name -> array (a pandas DataFrame works through ``{c: df[c].to_numpy() for c in df}``), so
this module needs numpy only.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ftscale.errors import DataError, UserError
from ftscale.laws.critical import D_RANGE, closed_form, crossings
from ftscale.laws.fit import ScalingLaw, Space
from ftscale.laws.forms import get_form
from ftscale.laws.holdout import holdout_mask, mean_abs_deviation
from ftscale.laws.uncertainty import Bootstrap, bootstrap, crossing_interval


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

    @property
    def n_fit(self) -> int:
        """Runs used for fitting."""
        return int((~self.heldout).sum())

    @property
    def n_heldout(self) -> int:
        """Runs held out."""
        return int(self.heldout.sum())

    def intervals(self, level: float = 0.95) -> dict[str, list[float]]:
        """Bootstrap percentile intervals per parameter (empty without a bootstrap)."""
        if self.bootstrap is None:
            return {}
        return {k: list(v) for k, v in self.bootstrap.intervals(level).items()}

    def to_dict(self, points: bool = False) -> dict:
        """The JSON record of ``ftscale fit --json`` (``points=True`` adds per-run predictions)."""
        record = {
            "form": self.form,
            "group": self.group,
            "space": self.space,
            "params": dict(self.law.params_),
            "objective": self.law.objective_,
            "converged": self.law.converged_,
            "n_fit": self.n_fit,
            "n_heldout": self.n_heldout,
            "delta_e": _json_float(self.delta_e),
            "delta_h": _json_float(self.delta_h),
            "intervals": self.intervals(),
            "variables": dict(self.variables),
        }
        if points:
            record["points"] = [
                {
                    **{col: float(v) for col, v in zip(self.variables.values(), row, strict=True)},
                    "observed": float(obs),
                    "predicted": float(pred),
                    "heldout": bool(held),
                }
                for row, obs, pred, held in zip(
                    self.sizes, self.observed, self.predicted, self.heldout, strict=True
                )
            ]
        if self.bootstrap is not None:
            record["bootstrap"] = {
                "seed": self.bootstrap.seed,
                "thetas": self.bootstrap.thetas.tolist(),
            }
        return record

    @classmethod
    def from_dict(cls, record: Mapping) -> FitResult:
        """Rebuild a result saved by :meth:`to_dict` (with ``points=True``)."""
        try:
            law = ScalingLaw.from_params(record["form"], record["params"], space=record["space"])
            law.objective_ = record.get("objective", float("nan"))
            variables = dict(record["variables"])
            points = record.get("points", [])
        except (KeyError, TypeError) as exc:
            raise UserError(f"saved fit is missing field {exc}") from None
        sizes = np.array([[p[c] for c in variables.values()] for p in points], float).reshape(
            len(points), len(variables)
        )
        result = cls(
            form=record["form"],
            group=record.get("group"),
            space=record["space"],
            law=law,
            variables=variables,
            sizes=sizes,
            observed=np.array([p["observed"] for p in points], float),
            predicted=np.array([p["predicted"] for p in points], float),
            heldout=np.array([p["heldout"] for p in points], bool),
            delta_e=_from_json_float(record.get("delta_e")),
            delta_h=_from_json_float(record.get("delta_h")),
        )
        if "bootstrap" in record:
            result.bootstrap = Bootstrap(
                law=law,
                thetas=np.array(record["bootstrap"]["thetas"], float),
                seed=int(record["bootstrap"]["seed"]),
            )
        return result


def _json_float(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _from_json_float(value) -> float:
    return float("nan") if value is None else float(value)


def fit_table(
    columns: Mapping[str, np.ndarray],
    *,
    y: str,
    d: str,
    x: str | None = None,
    forms: Sequence[str] = ("multiplicative",),
    group: str | None = None,
    holdout: str | None = None,
    space: Space = "log",
    n_bootstrap: int = 0,
    seed: int = 0,
    source: str = "table",
) -> list[FitResult]:
    """Fit each form to each group of runs and evaluate it on the held-out runs.

    Args:
        columns: the table, column name -> values.
        y: column of losses (nats per token).
        d: column of finetuning-data sizes (examples or tokens).
        x: column of the other factor (parameters, pretraining tokens, PET size) for two-variable
            forms; one-variable forms ignore it.
        forms: form names, compared side by side on the same split.
        group: column whose values get one fit each (e.g. ``method``).
        holdout: held-out rule (see :mod:`ftscale.laws.holdout`), applied within each group.
        space: residual space of the fits.
        n_bootstrap: replicates for intervals (0: none).
        seed: bootstrap seed.
        source: name of the table in error messages (e.g. its file name).
    """
    needed = [c for c in (y, d, x, group) if c is not None]
    for column in needed:
        if column not in columns:
            raise UserError(
                f"{source}: column {column!r} not found (columns: {', '.join(columns)})"
            )
    resolved = [get_form(f) for f in forms]
    for form in resolved:
        if "x" in form.variables and x is None:
            raise UserError(f"form {form.name!r} needs an X column (--x)")
    labels = np.asarray(columns[group]).astype(str) if group else np.full(len(columns[y]), "")
    held = holdout_mask(holdout, columns, labels if group else None)
    results = []
    for name in dict.fromkeys(labels):  # groups in order of first appearance
        rows = labels == name
        for form in resolved:
            variables = {v: (x if v == "x" else d) for v in form.variables}
            sizes = np.column_stack(
                [np.asarray(columns[c], float)[rows] for c in variables.values()]
            )
            losses = np.asarray(columns[y], float)[rows]
            fit_rows = ~held[rows]
            where = f"{source}" + (f", {group}={name}" if group else "") + f", form {form.name}"
            try:
                law = ScalingLaw(form, space=space).fit(
                    sizes[fit_rows], losses[fit_rows], names=list(variables.values())
                )
            except DataError as exc:
                raise DataError(f"{where}: {exc}") from None
            # Held-out sizes may be invalid (a zero) without blocking the fit; predict what we can.
            with np.errstate(all="ignore"):
                predicted = (
                    law.predict(sizes) if (sizes > 0).all() else np.full(len(losses), np.nan)
                )
            replicates = (
                bootstrap(law, sizes[fit_rows], losses[fit_rows], n_bootstrap, seed=seed)
                if n_bootstrap
                else None
            )
            results.append(
                FitResult(
                    form=form.name,
                    group=str(name) if group else None,
                    space=space,
                    law=law,
                    variables=variables,
                    sizes=sizes,
                    observed=losses,
                    predicted=predicted,
                    heldout=~fit_rows,
                    delta_e=mean_abs_deviation(predicted[fit_rows], losses[fit_rows]),
                    delta_h=mean_abs_deviation(predicted[~fit_rows], losses[~fit_rows]),
                    bootstrap=replicates,
                )
            )
    return results


@dataclass
class CriticalPoint:
    """Crossings of two groups' fitted laws at one X.

    Attributes:
        first, second: the two groups (e.g. ``fmt`` and ``lora``).
        x: the X value (None for one-variable laws).
        crossings: every D_f (same unit as the fits' D) where the predicted losses are equal.
        interval: bootstrap percentile interval of the first crossing, if bootstrapped.
        closed_form: (H, gamma) of the study's Eq. 3 when both laws are multiplicative with equal E.
        observed: the D_f range both groups' runs cover; crossings outside it are extrapolations.
    """

    first: str
    second: str
    x: float | None
    crossings: list[float]
    interval: tuple[float, float] | None = None
    closed_form: tuple[float, float] | None = None
    observed: tuple[float, float] | None = None

    def extrapolated(self) -> list[bool]:
        """For each crossing, whether it lies outside the D_f range both groups observed."""
        if self.observed is None:
            return [False] * len(self.crossings)
        low, high = self.observed
        return [not low <= c <= high for c in self.crossings]

    def to_dict(self) -> dict:
        """The JSON record of ``ftscale critical --json``."""
        return {
            "first": self.first,
            "second": self.second,
            "x": self.x,
            "crossings": self.crossings,
            "extrapolated": self.extrapolated(),
            "interval": None if self.interval is None else [_json_float(v) for v in self.interval],
            "H": None if self.closed_form is None else self.closed_form[0],
            "gamma": None if self.closed_form is None else self.closed_form[1],
        }


def critical_points(
    results: Sequence[FitResult],
    *,
    xs: Sequence[float] | None = None,
    d_range: tuple[float, float] = D_RANGE,
    form: str | None = None,
) -> list[CriticalPoint]:
    """Critical D_f between every pair of groups, at each X in ``xs``.

    ``results`` are fits of one form per group (the first form present is used unless ``form``
    names one). Without ``xs`` the distinct X values of the runs are used.
    """
    form = form or results[0].form
    fits = {r.group: r for r in results if r.form == form}
    if len(fits) < 2:
        raise UserError(f"critical points need fits of at least two groups with form {form!r}")
    two_var = "x" in get_form(form).variables
    if xs is None:
        xs = sorted({float(v) for r in fits.values() for v in r.sizes[:, 0]}) if two_var else [None]
    elif not two_var:
        xs = [None]
    out = []
    for (g1, r1), (g2, r2) in itertools.combinations(fits.items(), 2):
        try:
            closed = closed_form(r1.law, r2.law)
        except UserError:
            closed = None
        d1, d2 = r1.sizes[:, -1], r2.sizes[:, -1]
        observed = (float(max(d1.min(), d2.min())), float(min(d1.max(), d2.max())))
        for x in xs:
            interval = None
            if r1.bootstrap is not None and r2.bootstrap is not None:
                interval = crossing_interval(r1.bootstrap, r2.bootstrap, x, d_range)
            out.append(
                CriticalPoint(
                    first=str(g1),
                    second=str(g2),
                    x=x,
                    crossings=crossings(r1.law, r2.law, x, d_range),
                    interval=interval,
                    closed_form=closed,
                    observed=observed,
                )
            )
    return out
