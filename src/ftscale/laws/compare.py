"""Fit several law forms to a table of runs, per group, on one held-out split, and compare them.

This is what ``ftscale fit`` and ``ftscale critical`` do, as a library: the table is a mapping of
column name -> array (a pandas DataFrame works through ``{c: df[c].to_numpy() for c in df}``), so
this module needs numpy only.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ftscale.common import first_line
from ftscale.errors import DataError, UserError
from ftscale.laws.critical import D_RANGE, closed_form, crossings
from ftscale.laws.diagnostics import diagnose
from ftscale.laws.fit import FitWarning, ScalingLaw, Space
from ftscale.laws.forms import LawForm
from ftscale.laws.holdout import HoldoutRule, holdout_mask, mean_abs_deviation
from ftscale.laws.selection import Selection, select_form
from ftscale.laws.uncertainty import (
    LEVEL,
    Bootstrap,
    bootstrap_many,
    check_replicates,
    crossing_interval,
)
from ftscale.laws.userforms import resolve_form

#: Column grouped by when no ``--group`` is given and the table has it (both commands).
DEFAULT_GROUP = "method"


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
        bands: per run, the 95 % bootstrap prediction interval (low, high), when bootstrapped.
        requested: predictions at user-requested sizes, each ``{column: size, "predicted",
            "interval"}``.
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

    def coverage(self) -> dict | None:
        """Share of held-out runs inside their 95 % prediction interval (None without bands)."""
        if self.bands is None:
            return None
        held = self.heldout & np.isfinite(self.bands).all(axis=1)
        inside = (self.bands[:, 0] <= self.observed) & (self.observed <= self.bands[:, 1])
        n = int(held.sum())
        return {
            "level": LEVEL,
            "heldout": float(inside[held].mean()) if n else None,
            "n": n,
        }

    def to_dict(self, points: bool = False) -> dict:
        """The JSON record of ``ftscale fit --json`` (``points=True`` adds per-run predictions)."""
        record = {
            "form": self.form,
            "form_spec": self.form_spec or self.form,
            "group": self.group,
            "space": self.space,
            "params": dict(self.law.params_),
            "objective": _json_float(self.law.objective_),
            "converged": self.law.converged_,
            "n_fit": self.n_fit,
            "n_heldout": self.n_heldout,
            "delta_e": _json_float(self.delta_e),
            "delta_h": _json_float(self.delta_h),
            "intervals": self.intervals(),
            "variables": dict(self.variables),
            "warnings": list(self.warnings),
            "selected": self.selected,
            "selection_score": _json_float(self.selection_score),
            "coverage": self.coverage(),
            "predictions": self.requested,
        }
        if points:
            record["points"] = self._points()
        if self.bootstrap is not None:
            record["bootstrap"] = {
                "seed": self.bootstrap.seed,
                "thetas": [[_json_float(v) for v in row] for row in self.bootstrap.thetas],
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
                "predicted": _json_float(pred),
                "heldout": bool(held),
            }
            if self.bands is not None:
                point["interval"] = [_json_float(v) for v in self.bands[i]]
            out.append(point)
        return out

    @classmethod
    def from_dict(cls, record: Mapping) -> FitResult:
        """Rebuild a result saved by :meth:`to_dict` (with ``points=True``)."""
        try:
            law = ScalingLaw.from_params(
                resolve_form(record.get("form_spec") or record["form"]),
                record["params"],
                space=record["space"],
            )
            law.objective_ = _from_json_float(record.get("objective"))
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
            )
            if record.get("bootstrap"):
                thetas = [
                    [_from_json_float(v) for v in row] for row in record["bootstrap"]["thetas"]
                ]
                result.bootstrap = Bootstrap(
                    law=law, thetas=np.array(thetas, float), seed=int(record["bootstrap"]["seed"])
                )
        except KeyError as exc:
            raise UserError(f"saved fit is missing field {exc}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"saved fit has a malformed record: {first_line(exc)}") from None
        return result


class Fits(list):
    """The :class:`FitResult` list of :func:`fit_table`, with the form selection per group."""

    selections: list[Selection]
    group_columns: list[str]

    def to_dict(self, points: bool = True) -> dict:
        """The JSON document of ``ftscale fit --json`` / ``--save``."""
        return {
            "fits": [r.to_dict(points=points) for r in self],
            "selection": [s.to_dict() for s in getattr(self, "selections", [])],
            "group_columns": list(getattr(self, "group_columns", [])),
        }


def _json_float(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _from_json_float(value) -> float:
    return float("nan") if value is None else float(value)


def numeric_column(columns: Mapping[str, np.ndarray], name: str, source: str) -> np.ndarray:
    """Column ``name`` as floats, or a one-line error naming the first cell that is not a number
    (row counted from 1, the file's first data row)."""
    values = np.asarray(columns[name])
    try:
        return values.astype(float)
    except (TypeError, ValueError):
        pass
    for i, value in enumerate(values):
        try:
            float(value)
        except (TypeError, ValueError):
            raise UserError(
                f"{source}: column {name!r} must hold numbers, got {str(value)!r} at row {i + 1}"
            ) from None
    return values.astype(float)  # pragma: no cover - every cell converted above


def parse_point(text: str) -> tuple[float, ...]:
    """``"X,D"`` or ``"D"`` (sizes as numbers, e.g. ``1e9,2e5``) from ``--predict``."""
    try:
        return tuple(float(part) for part in str(text).split(","))
    except ValueError:
        raise UserError(f"--predict {text!r}: expected D or X,D as numbers, e.g. 1e9,2e5") from None


def group_columns(
    columns: Mapping[str, np.ndarray], group: str | Sequence[str] | None
) -> list[str]:
    """The grouping columns: as given, or ``method`` when the table has one (the default of both
    ``ftscale fit`` and ``ftscale critical``), else none."""
    if group is None:
        return [DEFAULT_GROUP] if DEFAULT_GROUP in columns else []
    return [group] if isinstance(group, str) else list(dict.fromkeys(group))


def check_roles(y: str, d: str, x: str | None) -> None:
    """Refuse one column in two roles: the fit would be meaningless, not wrong-looking."""
    if x is not None and x == d:
        raise UserError(f"--x and --d name the same column {x!r}; X and D_f must differ")
    for option, column in (("--d", d), ("--x", x)):
        if column is not None and column == y:
            raise UserError(f"--y and {option} name the same column {y!r}; the loss is not a size")


def _labels(columns, groups: Sequence[str], n: int) -> np.ndarray:
    if not groups:
        return np.full(n, "", dtype=object)
    parts = [np.asarray(columns[g]).astype(str) for g in groups]
    return np.array(["/".join(p) for p in zip(*parts, strict=True)], dtype=object)


@dataclass
class _Group:
    """One group's runs: the label, its rows in the table, their held-out mask."""

    label: str | None
    where: str
    rows: np.ndarray  # indices into the table
    held: np.ndarray  # bool per row of the group


def fit_table(
    columns: Mapping[str, np.ndarray],
    *,
    y: str,
    d: str,
    x: str | None = None,
    forms: Sequence[str | LawForm] = ("multiplicative",),
    group: str | Sequence[str] | None = None,
    holdout: str | None = None,
    space: Space = "log",
    n_bootstrap: int = 0,
    seed: int = 0,
    source: str = "table",
    at: Sequence[Sequence[float]] = (),
    progress: Callable[[int, int], None] | None = None,
) -> Fits:
    """Fit each form to each group of runs, choose a form per group, evaluate on held-out runs.

    Args:
        columns: the table, column name -> values.
        y: column of losses (nats per token).
        d: column of finetuning-data sizes (examples or tokens).
        x: column of the other factor (parameters, pretraining tokens, PET size) for two-variable
            forms; one-variable forms ignore it (and say so in their warnings).
        forms: form names (registered, ``FILE.py:NAME`` or ``expr:...``) or forms, compared on
            the same split.
        group: column(s) whose value combinations get one fit each; None: ``method`` if the
            table has it (see :func:`group_columns`).
        holdout: held-out rule (see :mod:`ftscale.laws.holdout`), applied within each group.
        space: residual space of the fits.
        n_bootstrap: replicates for intervals (0: none).
        seed: bootstrap seed (0 or more).
        source: name of the table in error messages (e.g. its file name).
        at: sizes to predict at, each ``(D,)`` or ``(X, D)``, with intervals when bootstrapped.
        progress: ``progress(done, total)`` over bootstrap replicates.
    """
    resolved, specs = _resolve(forms, x)
    groups = group_columns(columns, group)
    _check_columns(columns, [y, d, x, *groups], source)
    check_roles(y, d, x)
    if n_bootstrap:
        check_replicates(n_bootstrap, seed)
    numbers = {c: numeric_column(columns, c, source) for c in (y, d, x) if c is not None}
    points = [_check_point(p, x) for p in at]
    labels = _labels(columns, groups, len(numbers[y]))
    held = holdout_mask(holdout, columns, labels if groups else None)
    results = Fits()
    results.group_columns, results.selections = groups, []
    for part in _groups(columns, labels, groups, held, source):
        fits = [_fit_one(form, part, numbers, x, d, y, space) for form in resolved]
        for fit in fits:
            fit.form_spec = specs.get(fit.form)
        axis = _selection_axis(holdout, x, d)
        results.selections.append(_select(resolved, fits, part, columns, axis=axis, space=space))
        results.extend(fits)
    if n_bootstrap:
        _bootstrap(results, n_bootstrap, seed, progress)
    for result in results:
        result.requested = _requested(result, points)
    return results


def _resolve(forms, x: str | None) -> tuple[list[LawForm], dict[str, str | None]]:
    """The forms (each once) and, by name, the spelling that rebuilds them from a saved fit."""
    pairs = [(resolve_form(f), f if isinstance(f, str) else None) for f in forms]
    resolved = list({f.name: f for f, _ in pairs}.values())
    specs = {f.name: spec for f, spec in pairs}
    if not resolved:
        raise UserError("no law form given")
    for form in resolved:
        if "x" in form.variables and x is None:
            raise UserError(f"form {form.name!r} needs an X column (--x)")
    return resolved, specs


def _check_columns(columns, needed, source: str) -> None:
    for column in needed:
        if column is not None and column not in columns:
            raise UserError(
                f"{source}: column {column!r} not found (columns: {', '.join(columns)})"
            )


def _check_point(point: Sequence[float], x: str | None) -> tuple[float, ...]:
    values = tuple(float(v) for v in point)
    want = 2 if x is not None else 1
    if len(values) != want:
        shape = "X,D" if want == 2 else "D"
        raise UserError(f"--predict takes {shape} here, got {len(values)} number(s)")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise UserError(f"--predict sizes must be positive and finite, got {values}")
    return values


def _groups(columns, labels, groups, held, source) -> list[_Group]:
    out = []
    for name in dict.fromkeys(labels):  # groups in order of first appearance
        rows = np.flatnonzero(labels == name)
        shown = ", ".join(f"{g}={np.asarray(columns[g])[rows[0]]}" for g in groups)
        where = source + (f", {shown}" if groups else "")
        out.append(_Group(str(name) if groups else None, where, rows, held[rows]))
    return out


def _fit_one(form: LawForm, part: _Group, numbers, x, d, y, space) -> FitResult:
    variables = {v: (x if v == "x" else d) for v in form.variables}
    sizes = np.column_stack([numbers[c][part.rows] for c in variables.values()])
    losses = numbers[y][part.rows]
    fit = ~part.held
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FitWarning)
            law = ScalingLaw(form, space=space).fit(
                sizes[fit], losses[fit], names=list(variables.values()), rows=part.rows[fit] + 1
            )
    except DataError as exc:
        raise DataError(f"{part.where}, form {form.name}: {exc}") from None
    del caught  # non-convergence is reported by diagnose(), once
    # Held-out sizes may be invalid (a zero) without blocking the fit; predict what we can.
    with np.errstate(all="ignore"):
        ok = np.isfinite(sizes).all(axis=1) & (sizes > 0).all(axis=1)
        predicted = np.full(len(losses), np.nan)
        predicted[ok] = law.predict(sizes[ok])
    unused = {"--x": x} if x is not None and "x" not in form.variables else {}
    return FitResult(
        form=form.name,
        group=part.label,
        space=space,
        law=law,
        variables=variables,
        sizes=sizes,
        observed=losses,
        predicted=predicted,
        heldout=part.held.copy(),
        delta_e=mean_abs_deviation(predicted[fit], losses[fit]),
        delta_h=mean_abs_deviation(predicted[~fit], losses[~fit]),
        warnings=diagnose(law, sizes[fit], losses[fit], columns=variables, unused=unused),
    )


def _select(forms, fits, part, columns, *, axis: tuple[str, str, float | None], space) -> Selection:
    """Score every form by nested extrapolation on this group's fitting runs (never held-out);
    ``axis`` is :func:`_selection_axis`'s (column, direction, target)."""
    axis, direction, target = axis
    fit = ~part.held
    try:
        values = np.asarray(columns[axis])[part.rows][fit].astype(float)
    except (TypeError, ValueError):
        return Selection(part.label, None, axis, direction, reason=f"{axis} is not numeric")
    selection = select_form(
        forms,
        {r.form: r.sizes[fit] for r in fits},
        fits[0].observed[fit],
        values,
        axis=axis,
        direction=direction,
        target=target,
        space=space,
        group=part.label,
    )
    for r in fits:
        r.selection_score = selection.scores.get(r.form)
        r.selected = r.form == selection.form
    return selection


def _selection_axis(holdout, x, d) -> tuple[str, str, float | None]:
    """The held-out rule's column and direction; without a rule, X if given, else D."""
    rules = HoldoutRule.parse(holdout) if holdout else []
    if rules:
        rule = rules[0]
        if rule.kind == "eq":
            try:
                return rule.column, "eq", float(rule.value)
            except ValueError:
                return rule.column, "eq", None
        return rule.column, rule.kind, None
    return (x or d), "max", None


def _bootstrap(results: Fits, n: int, seed: int, progress) -> None:
    items = [(r.law, r.sizes[~r.heldout], r.observed[~r.heldout]) for r in results]
    replicates = bootstrap_many(items, n, seed=seed, progress=progress)
    for result, boot in zip(results, replicates, strict=True):
        result.bootstrap = boot
        fit = ~result.heldout
        residuals = _residuals(result.law, result.sizes[fit], result.observed[fit])
        bands = np.full((len(result.observed), 2), np.nan)
        ok = np.isfinite(result.predicted)
        if ok.any() and boot.n_failed < len(boot.thetas):
            low, high = boot.predict_interval(result.sizes[ok], residuals=residuals)
            bands[ok] = np.column_stack([low, high])
        result.bands = bands
        if boot.n_unconverged:
            result.warnings.append(
                f"{boot.n_unconverged} of {n} bootstrap refits stopped at their iteration limit"
            )
        if boot.n_failed:
            result.warnings.append(
                f"{boot.n_failed} of {n} bootstrap resamples could not be fitted"
            )


def _residuals(law: ScalingLaw, sizes: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """The fit's residuals in its own space (log or linear), for prediction intervals."""
    predicted = law.predict(sizes)
    return np.log(predicted / losses) if law.space == "log" else predicted - losses


def _requested(result: FitResult, points: Sequence[tuple[float, ...]]) -> list[dict]:
    out = []
    names = list(result.variables.values())
    for point in points:
        sizes = np.array([point[-len(names) :]], float)  # one-variable forms take D only
        with np.errstate(all="ignore"):
            predicted = float(result.law.predict(sizes)[0])
        record = {**dict(zip(names, sizes[0].tolist(), strict=True)), "predicted": predicted}
        if result.bootstrap is not None:
            fit = ~result.heldout
            low, high = result.bootstrap.predict_interval(
                sizes, residuals=_residuals(result.law, result.sizes[fit], result.observed[fit])
            )
            record["interval"] = [_json_float(low[0]), _json_float(high[0])]
        out.append(record)
    return out


@dataclass
class CriticalPoint:
    """Crossings of two groups' fitted laws at one X.

    Attributes:
        first, second: the two groups (e.g. ``fmt`` and ``lora``).
        x: the X value (None for one-variable laws).
        crossings: every D_f (same unit as the fits' D) where the predicted losses are equal.
        interval: bootstrap percentile interval of the first crossing, if bootstrapped.
        closed_form: (H, gamma) of the study's Eq. 3 for two multiplicative laws: exact when their
            E's are equal; with unequal E's, where the reducible parts A / (X^alpha D^beta) are
            equal (as the study's Table 5 reports such pairs), see ``closed_form_note``.
        closed_form_note: why the closed form is missing or only approximate ("" when exact).
        observed: the D_f range both groups' runs cover; observed_x: their common X range.
    """

    first: str
    second: str
    x: float | None
    crossings: list[float]
    interval: tuple[float, float] | None = None
    closed_form: tuple[float, float] | None = None
    observed: tuple[float, float] | None = None
    observed_x: tuple[float, float] | None = None
    closed_form_note: str = ""

    @property
    def x_extrapolated(self) -> bool:
        """Whether X lies outside the model sizes (or X values) both groups observed."""
        if self.x is None or self.observed_x is None:
            return False
        low, high = self.observed_x
        return not low * (1 - 1e-9) <= self.x <= high * (1 + 1e-9)

    def extrapolated(self) -> list[bool]:
        """For each crossing, whether it lies outside the D_f range both groups observed, or its
        X outside their X range."""
        if self.observed is None:
            return [self.x_extrapolated] * len(self.crossings)
        low, high = self.observed
        return [self.x_extrapolated or not low <= c <= high for c in self.crossings]

    def to_dict(self) -> dict:
        """The JSON record of ``ftscale critical --json``."""
        return {
            "first": self.first,
            "second": self.second,
            "x": self.x,
            "crossings": self.crossings,
            "extrapolated": self.extrapolated(),
            "x_extrapolated": self.x_extrapolated,
            "interval": None if self.interval is None else [_json_float(v) for v in self.interval],
            "H": None if self.closed_form is None else self.closed_form[0],
            "gamma": None if self.closed_form is None else self.closed_form[1],
            "closed_form_note": self.closed_form_note or None,
        }


def check_critical_inputs(xs: Sequence[float] | None, d_range: tuple[float, float]) -> None:
    """Refuse X values and D_f ranges that cannot hold a crossing, naming the option."""
    for value in xs or ():
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"--at must be a positive, finite size, got {value:g}")
    low, high = d_range
    if not (math.isfinite(low) and math.isfinite(high)):
        raise UserError(f"--d-min/--d-max must be finite, got {low:g}, {high:g}")
    if not 0 < low < high:
        raise UserError(f"--d-min/--d-max must satisfy 0 < min < max, got {low:g}, {high:g}")


def _closed(law1: ScalingLaw, law2: ScalingLaw) -> tuple[tuple[float, float] | None, str]:
    """The closed form and a note saying why it is missing or only approximate."""
    try:
        return closed_form(law1, law2), ""
    except UserError as exc:
        reason = first_line(exc)
    if "equal E" not in reason:
        return None, reason
    e1, e2 = law1.params_["E"], law2.params_["E"]
    try:
        approx = closed_form(law1, law2, check_e=False)
    except UserError as exc:
        return None, first_line(exc)
    return approx, (
        f"E differs ({e1:.3g} vs {e2:.3g}): H*X^gamma is where the reducible parts "
        "A/(X^alpha D^beta) are equal, not where the losses cross"
    )


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
    check_critical_inputs(xs, d_range)
    if not results:
        raise UserError("no fits to compare")
    form = form or results[0].form
    fits = {r.group: r for r in results if r.form == form}
    if len(fits) < 2:
        raise UserError(
            f"critical points need fits of at least two groups with form {form!r}, got "
            f"{len(fits)} (group the runs with --group COL; the default is {DEFAULT_GROUP!r})"
        )
    two_var = "x" in results[[r.form for r in results].index(form)].law.form_.variables
    if xs is None:
        xs = sorted({float(v) for r in fits.values() for v in r.sizes[:, 0]}) if two_var else [None]
    elif not two_var:
        xs = [None]
    out = []
    for (g1, r1), (g2, r2) in itertools.combinations(fits.items(), 2):
        closed, note = _closed(r1.law, r2.law)
        observed = _common_range(r1.sizes[:, -1], r2.sizes[:, -1])
        observed_x = _common_range(r1.sizes[:, 0], r2.sizes[:, 0]) if two_var else None
        for x in xs:
            interval = None
            if r1.bootstrap is not None and r2.bootstrap is not None:
                interval = crossing_interval(r1.bootstrap, r2.bootstrap, x, d_range)
            with np.errstate(all="ignore"):
                found = crossings(r1.law, r2.law, x, d_range)
            out.append(
                CriticalPoint(
                    first=str(g1),
                    second=str(g2),
                    x=x,
                    crossings=found,
                    interval=interval,
                    closed_form=closed,
                    observed=observed,
                    observed_x=observed_x,
                    closed_form_note=note,
                )
            )
    return out


def _common_range(a: np.ndarray, b: np.ndarray) -> tuple[float, float] | None:
    if a.size == 0 or b.size == 0:
        return None
    return float(max(a.min(), b.min())), float(min(a.max(), b.max()))
