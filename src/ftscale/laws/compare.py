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
from dataclasses import dataclass

import numpy as np

from ftscale.common import first_line
from ftscale.errors import DataError, UserError
from ftscale.laws.critical import D_RANGE, closed_form, crossings, loss_at
from ftscale.laws.ensemble import (
    AUTO,
    attach_bands,
    build_ensemble,
    check_prediction,
    request,
)
from ftscale.laws.fit import FitWarning, ScalingLaw, Space
from ftscale.laws.forms import LawForm
from ftscale.laws.holdout import HoldoutRule, holdout_mask
from ftscale.laws.results import FitResult, Fits, bootstrap_results, fit_residuals, json_float
from ftscale.laws.selection import Selection, select_form
from ftscale.laws.uncertainty import (
    LEVEL,
    check_replicates,
    mixture_crossing_samples,
    weighted_percentile_interval,
)
from ftscale.laws.userforms import resolve_form

#: Column grouped by when no ``--group`` is given and the table has it (both commands).
DEFAULT_GROUP = "method"


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


@dataclass(frozen=True)
class _Roles:
    """The table's numeric columns by name, which of them play X, D_f and the loss, and the
    residual space every fit uses."""

    numbers: dict[str, np.ndarray]
    x: str | None
    d: str
    y: str
    space: Space


def fit_table(
    columns: Mapping[str, np.ndarray],
    *,
    y: str,
    d: str,
    x: str | None = None,
    forms: Sequence[str | LawForm] = ("multiplicative",),
    group: str | Sequence[str] | None = None,
    holdout: str | Sequence[HoldoutRule] | None = None,
    space: Space = "log",
    n_bootstrap: int = 0,
    seed: int = 0,
    source: str = "table",
    at: Sequence[Sequence[float]] = (),
    progress: Callable[[int, int], None] | None = None,
    prediction: str = AUTO,
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
        holdout: held-out rules, as text or :class:`HoldoutRule` objects (see
            :mod:`ftscale.laws.holdout`), applied within each group.
        space: residual space of the fits.
        n_bootstrap, seed: bootstrap replicates for intervals (0: none) and their seed (0 or more).
        source: name of the table in error messages (e.g. its file name).
        at: sizes to predict at, each ``(D,)`` or ``(X, D)``, with intervals when bootstrapped.
        progress: ``progress(done, total)`` over bootstrap replicates.
        prediction: each group's default with several forms (:mod:`ftscale.laws.ensemble`).
    """
    resolved, specs = _resolve(forms, x)
    check_prediction(prediction, [f.name for f in resolved])
    groups = group_columns(columns, group)
    _check_columns(columns, [y, d, x, *groups], source)
    check_roles(y, d, x)
    if n_bootstrap:
        check_replicates(n_bootstrap, seed)
    numbers = {c: numeric_column(columns, c, source) for c in (y, d, x) if c is not None}
    roles = _Roles(numbers, x, d, y, space)
    points = [_check_point(p, x) for p in at]
    labels = _labels(columns, groups, len(numbers[y]))
    held = holdout_mask(holdout, columns, labels if groups else None)
    axis = _selection_axis(holdout, x, d)
    parts = _groups(columns, labels, groups, held, source)
    results = _fit_groups(parts, resolved, specs, roles, columns, axis=axis, prediction=prediction)
    results.group_columns = groups
    if n_bootstrap:
        bootstrap_results(results, n_bootstrap, seed, progress)
    _predict_at(results, points)
    return results


def _predict_at(results: Fits, points) -> None:
    """Every fit's and ensemble's predictions at the requested sizes (the ensembles' mixture
    bands first, as their members' bootstraps are now in place)."""
    for result in results:
        result.requested = _requested(result, points)
    for combined in results.ensembles:
        attach_bands(combined)
        combined.requested = request(combined, points)


def _fit_groups(parts, resolved, specs, roles: _Roles, columns, *, axis, prediction) -> Fits:
    """Every form fitted to every group, the selection and the ensemble of each group."""
    results = Fits()
    results.selections, results.ensembles = [], []
    for part in parts:
        fits = [_fit_one(form, part, roles, specs.get(form.name)) for form in resolved]
        selection = _select(resolved, fits, part, columns, axis=axis, space=roles.space)
        results.selections.append(selection)
        results.extend(fits)
        combined = build_ensemble(fits, selection, prediction=prediction)
        if combined is not None:
            results.ensembles.append(combined)
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


def _fit_one(form: LawForm, part: _Group, roles: _Roles, spec: str | None) -> FitResult:
    """One form fitted to one group's fitting runs; ``spec`` is how the form was named (see
    :func:`_resolve`)."""
    variables = {v: (roles.x if v == "x" else roles.d) for v in form.variables}
    sizes = np.column_stack([roles.numbers[c][part.rows] for c in variables.values()])
    losses = roles.numbers[roles.y][part.rows]
    fit = ~part.held
    try:
        # Recorded and dropped: non-convergence is reported once, by the result's diagnostics.
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always", FitWarning)
            law = ScalingLaw(form, space=roles.space).fit(
                sizes[fit], losses[fit], names=list(variables.values()), rows=part.rows[fit] + 1
            )
    except DataError as exc:
        raise DataError(f"{part.where}, form {form.name}: {exc}") from None
    unused = {"--x": roles.x} if roles.x is not None and "x" not in form.variables else {}
    result = FitResult.from_law(
        law, sizes, losses, part.held, variables=variables, group=part.label, unused=unused
    )
    result.form_spec = spec
    return result


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
    """The first held-out rule's column and direction (a ``middle``, ``=`` or list rule
    interpolates: interior values are left out); without a rule, X if given, else D."""
    rules = HoldoutRule.parse(holdout) if isinstance(holdout, str) else list(holdout or [])
    if not rules:
        return (x or d), "max", None
    rule = rules[0]
    if rule.kind in ("max", "min"):
        return rule.column, rule.kind, None
    value = rule.value if rule.kind == "eq" else next(iter(rule.values), None)
    try:
        return rule.column, "eq", None if value is None else float(value)
    except ValueError:
        return rule.column, "eq", None


def _requested(result: FitResult, points: Sequence[tuple[float, ...]]) -> list[dict]:
    out = []
    names = list(result.variables.values())
    residuals = fit_residuals(result) if result.bootstrap is not None else None
    for point in points:
        sizes = np.array([point[-len(names) :]], float)  # one-variable forms take D only
        with np.errstate(all="ignore"):
            predicted = float(result.law.predict(sizes)[0])
        record = {**dict(zip(names, sizes[0].tolist(), strict=True)), "predicted": predicted}
        if result.bootstrap is not None:
            low, high = result.bootstrap.predict_interval(sizes, result.level, residuals=residuals)
            record["interval"] = [json_float(low[0]), json_float(high[0])]
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
        leader: the group with the lower predicted loss at this X and the smallest D_f both
            groups ran (None without runs or where a law gives no finite loss there).
        crossing_share: share of bootstrap replicate pairs whose laws cross in the D_f range
            (None without a bootstrap): whether a crossing exists at all is uncertain too. For
            an ensemble, the pairs are drawn from its forms' replicates with its weights.
        forms: the prediction each group's side uses: a form's name, or ``ensemble``.
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
    leader: str | None = None
    crossing_share: float | None = None
    forms: tuple[str, str] | None = None

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
        closed = self.closed_form or (None, None)
        return {
            "first": self.first,
            "second": self.second,
            "x": self.x,
            "crossings": self.crossings,
            "extrapolated": self.extrapolated(),
            "x_extrapolated": self.x_extrapolated,
            "interval": None if self.interval is None else [json_float(v) for v in self.interval],
            "H": closed[0],
            "gamma": closed[1],
            "closed_form_note": self.closed_form_note or None,
            "observed": None if self.observed is None else list(self.observed),
            "leader": self.leader,
            "crossing_share": self.crossing_share,
            "forms": None
            if self.forms is None
            else {self.first: self.forms[0], self.second: self.forms[1]},
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
    level: float = LEVEL,
) -> list[CriticalPoint]:
    """Critical D_f between every pair of groups, at each X in ``xs``.

    ``results`` are fits of one form per group (the first form present is used unless ``form``
    names one). Without ``xs`` each pair is evaluated at the distinct X values either group ran.
    Crossing intervals (when both fits are bootstrapped) are central at ``level``.
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
    out = []
    for first, second in itertools.combinations(fits.values(), 2):
        out += _pair_points(first, second, xs=xs, d_range=d_range, level=level)
    return out


def default_laws(results: Fits) -> list:
    """Each group's default prediction (:mod:`ftscale.laws.ensemble`): its ensemble, or the fit
    of the form it uses; a group without an ensemble (one form) gives its first fit."""
    ensembles = {e.group: e for e in getattr(results, "ensembles", [])}
    out = {}
    for r in results:
        e = ensembles.get(r.group)
        if e is not None and e.used == "ensemble":
            out[r.group] = e
        elif r.group not in out or (e is not None and r.form == e.used):
            out[r.group] = r
    return list(out.values())


def default_critical_points(
    results: Fits,
    *,
    xs: Sequence[float] | None = None,
    d_range: tuple[float, float] = D_RANGE,
    level: float = LEVEL,
) -> list[CriticalPoint]:
    """Critical D_f between every pair of groups' default predictions (:func:`default_laws`):
    an ensemble's crossings are those of its weighted mean law, its crossing interval and share
    those of its forms' replicates mixed with its weights (:func:`_crossing_spread`)."""
    return prediction_critical_points(default_laws(results), xs=xs, d_range=d_range, level=level)


def prediction_critical_points(
    predictions: Sequence,
    *,
    xs: Sequence[float] | None = None,
    d_range: tuple[float, float] = D_RANGE,
    level: float = LEVEL,
) -> list[CriticalPoint]:
    """Critical D_f between every pair of ``predictions``, one per group: fits
    (:class:`FitResult`) or ensembles, whatever their forms (see :func:`default_critical_points`
    for the intervals of ensembles)."""
    check_critical_inputs(xs, d_range)
    if len(predictions) < 2:
        raise UserError(
            f"critical points need fits of at least two groups, got {len(predictions)} (group "
            f"the runs with --group COL; the default is {DEFAULT_GROUP!r})"
        )
    out = []
    for first, second in itertools.combinations(predictions, 2):
        out += _pair_points(first, second, xs=xs, d_range=d_range, level=level)
    return out


def _pair_points(
    r1: FitResult, r2: FitResult, *, xs, d_range: tuple[float, float], level: float
) -> list[CriticalPoint]:
    """The critical points of one pair of fits at each X (see :func:`critical_points`)."""
    two_var = "x" in r1.law.form_.variables
    if not two_var:
        xs = [None]
    elif xs is None:
        xs = sorted({float(v) for r in (r1, r2) for v in r.sizes[:, 0]})
    closed, note = _closed(r1.law, r2.law)
    observed = _common_range(r1.sizes[:, -1], r2.sizes[:, -1])
    pair = {  # the same at every X
        "first": str(r1.group),
        "second": str(r2.group),
        "closed_form": closed,
        "closed_form_note": note,
        "observed": observed,
        "observed_x": _common_range(r1.sizes[:, 0], r2.sizes[:, 0]) if two_var else None,
        "forms": (r1.form, r2.form),
    }
    out = []
    for x in xs:
        interval, share = _crossing_spread(r1, r2, x, d_range, level)
        with np.errstate(all="ignore"):
            found = crossings(r1.law, r2.law, x, d_range)
        leader = _leader(r1, r2, x, observed)
        out.append(
            CriticalPoint(
                x=x, crossings=found, interval=interval, leader=leader, crossing_share=share, **pair
            )
        )
    return out


def _crossing_spread(r1, r2, x, d_range, level: float) -> tuple[tuple | None, float | None]:
    """(interval of the first crossing, share of replicate pairs that cross) of two predictions,
    fits or ensembles: the crossings of their replicates, an ensemble's being its forms'
    replicates each weighing the form's weight (their ``mixture()``); (None, None) when a side
    was not bootstrapped."""
    first, second = r1.mixture(), r2.mixture()
    if first is None or second is None:
        return None, None
    samples, weights, share = mixture_crossing_samples(first, second, x, d_range)
    if not samples.size:
        return None, None
    return weighted_percentile_interval(samples, weights, level), share


def _leader(r1: FitResult, r2: FitResult, x, observed) -> str | None:
    """The group predicted lower at X and the smallest D_f both ran (see CriticalPoint)."""
    if observed is None:
        return None
    d = np.array([observed[0]])
    with np.errstate(all="ignore"):
        first, second = (float(loss_at(r.law, x, d)[0]) for r in (r1, r2))
    if not (math.isfinite(first) and math.isfinite(second)):
        return None
    return str(r1.group) if first < second else str(r2.group)


def _common_range(a: np.ndarray, b: np.ndarray) -> tuple[float, float] | None:
    if a.size == 0 or b.size == 0:
        return None
    return float(max(a.min(), b.min())), float(min(a.max(), b.max()))
