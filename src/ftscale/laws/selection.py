"""Choosing a law form from the fitting runs alone, by nested extrapolation.

Delta_h judges a form on the held-out runs; choosing the form by Delta_h uses the very rows it is
judged on, so the choice cannot fail. Here the choice never sees a held-out row. It asks the
question a user of the law asks, one step earlier: *fitted on the smaller values of an axis, how
well does the form predict the next one?*

Procedure (per group):

1. The **axis** is the column of the held-out rule (``max:COL`` / ``min:COL`` / ``COL=VALUE``);
   without a rule, X when it is given, else D.
2. Among the fitting runs the axis has distinct values v1 < ... < vm. For ``max`` rules, fold k
   (k = 1 .. K) fits each form to the runs with axis below v(m-k+1) and scores it on the runs at
   v(m-k+1); ``min`` mirrors this; ``COL=VALUE`` (an interior value) leaves out one interior value
   at a time (interpolation). K = min(3, m - 2), so every fold keeps at least two values to fit.
3. A form's **score** is the mean absolute deviation (nats), the measure of Delta_h, over the
   scored runs of every fold. Only folds that every candidate form can fit count. The form with
   the lowest score is chosen; ties go to the form with fewer parameters.

The chosen form, its score, the axis and the folds are reported; Delta_h remains a report of how
the chosen form then did on the held-out runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ftscale.errors import DataError, UserError
from ftscale.laws.fit import ScalingLaw, Space
from ftscale.laws.forms import LawForm

#: Most folds per group: each costs one fit per form.
MAX_FOLDS = 3


@dataclass
class Selection:
    """The form chosen for one group, and how.

    Attributes:
        group: the group label (None without groups).
        form: the chosen form's name (None when no fold could be fitted).
        axis: the column extrapolated along; direction: ``"max"``, ``"min"`` or ``"eq"``.
        folds: the axis value scored in each fold that counted.
        scores: form name -> mean absolute deviation (nats) on the folds' scored runs.
        reason: why no form was chosen, when none was.
    """

    group: str | None
    form: str | None
    axis: str
    direction: str
    folds: list[float] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    reason: str = ""

    @property
    def criterion(self) -> str:
        """The criterion in words, for tables and JSON."""
        step = {
            "max": "the next larger",
            "min": "the next smaller",
            "eq": "a left-out interior",
        }[self.direction]
        return (
            f"nested extrapolation on the fitting runs: fit below each fold, predict {step} "
            f"{self.axis}; mean |predicted - observed| in nats over {len(self.folds)} fold(s)"
        )

    @classmethod
    def from_dict(cls, record: Mapping) -> Selection:
        """Rebuild a selection saved by :meth:`to_dict` (one-line errors)."""
        if record.get("direction") not in ("max", "min", "eq"):
            raise UserError(
                f"saved selection has direction {record.get('direction')!r}, expected max, min "
                "or eq"
            )
        try:
            scores = {
                str(k): float("inf") if v is None else float(v)
                for k, v in dict(record.get("scores") or {}).items()
            }
            return cls(
                group=record.get("group"),
                form=record.get("form"),
                axis=str(record["axis"]),
                direction=str(record["direction"]),
                folds=[float(v) for v in record.get("folds") or []],
                scores=scores,
                reason=str(record.get("reason") or ""),
            )
        except KeyError as exc:
            raise UserError(f"saved selection is missing field {exc}") from None
        except (TypeError, ValueError) as exc:
            raise UserError(f"saved selection has a malformed record: {exc}") from None

    def to_dict(self) -> dict:
        """The JSON record (``selection`` in ``ftscale fit --json``)."""
        return {
            "group": self.group,
            "form": self.form,
            "criterion": self.criterion,
            "axis": self.axis,
            "direction": self.direction,
            "folds": self.folds,
            "scores": {k: (None if not np.isfinite(v) else v) for k, v in self.scores.items()},
            "reason": self.reason or None,
        }


def folds(values: np.ndarray, direction: str, target: float | None = None) -> list[np.ndarray]:
    """Boolean masks of the scored runs of each fold; the fit uses the runs on the near side."""
    distinct = np.unique(values)
    k = min(MAX_FOLDS, distinct.size - 2)
    if k < 1:
        return []
    if direction == "max":
        picked = distinct[::-1][:k]
    elif direction == "min":
        picked = distinct[:k]
    else:
        inner = distinct[1:-1]
        near = inner if target is None else inner[np.argsort(np.abs(inner - target))]
        picked = near[:k]
    return [values == v for v in picked]


def _fold_train(values: np.ndarray, scored: np.ndarray, direction: str) -> np.ndarray:
    value = values[scored][0]
    if direction == "max":
        return values < value
    if direction == "min":
        return values > value
    return ~scored


def select_form(
    forms: Sequence[LawForm],
    sizes: Mapping[str, np.ndarray],
    losses: np.ndarray,
    axis_values: np.ndarray,
    *,
    axis: str,
    direction: str = "max",
    target: float | None = None,
    space: Space = "log",
    group: str | None = None,
) -> Selection:
    """Choose among ``forms`` by nested extrapolation on fitting runs only (see the module docs).

    Args:
        forms: candidate forms.
        sizes: form name -> sizes of the fitting runs in that form's variables.
        losses: losses of the fitting runs (nats per token).
        axis_values: the axis column on the fitting runs (numbers).
        axis, direction, target: the axis's name, ``max``/``min``/``eq``, and for ``eq`` the
            held-out value (folds leave out the interior values nearest to it).
        space: residual space of the fits.
        group: label carried into the result.
    """
    selection = Selection(group=group, form=None, axis=axis, direction=direction)
    masks = folds(np.asarray(axis_values, float), direction, target)
    if not masks:
        selection.reason = f"fewer than 3 distinct {axis} values among the fitting runs"
        return selection
    errors: dict[str, list[np.ndarray]] = {f.name: [] for f in forms}
    for scored in masks:
        train = _fold_train(np.asarray(axis_values, float), scored, direction)
        fold = _fold_errors(forms, sizes, losses, train, scored, space)
        if fold is None:
            continue
        selection.folds.append(float(np.asarray(axis_values, float)[scored][0]))
        for name, err in fold.items():
            errors[name].append(err)
    if not selection.folds:
        selection.reason = "no fold could be fitted by every form (too few runs below each fold)"
        return selection
    selection.scores = {name: float(np.mean(np.concatenate(e))) for name, e in errors.items()}
    ranked = sorted(forms, key=lambda f: (selection.scores[f.name], len(f.params)))
    selection.form = ranked[0].name
    return selection


def _fold_errors(forms, sizes, losses, train, scored, space) -> dict[str, np.ndarray] | None:
    """Absolute errors of every form on one fold's scored runs; None if a form cannot fit."""
    out = {}
    for form in forms:
        try:
            with warnings.catch_warnings():  # a fold's non-convergence is not the fit's
                warnings.simplefilter("ignore")
                law = ScalingLaw(form, space=space).fit(sizes[form.name][train], losses[train])
        except DataError:
            return None
        with np.errstate(all="ignore"):
            predicted = law.predict(sizes[form.name][scored])
        error = np.abs(predicted - losses[scored])
        out[form.name] = np.where(np.isfinite(error), error, np.inf)
    return out
