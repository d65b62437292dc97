"""Held-out points and the study's fit-quality measures, Delta_e and Delta_h.

The study holds out the extreme of each sweep (the largest model, the largest PET size, the largest
D_f, and a middle pretraining checkpoint) and reports the mean absolute deviation of predictions
from observations on the fitted points (Delta_e) and on the held-out ones (Delta_h). Deviations
are in linear space, in nats per token, whatever space the fit used.

Rules (as typed after ``--holdout``):

* ``max:COL`` / ``min:COL``: the rows where column COL takes its largest / smallest value;
* ``middle:COL``: the rows at the middle one of COL's distinct values (sorted; of an even count,
  the upper of the two middle ones), as the study holds out a middle pretraining checkpoint;
* ``COL=VALUE``: the rows where COL equals VALUE (numbers compare as numbers: ``1e9`` matches
  ``1000000000``);
* several rules joined by ``,``: the union of their rows.

In Python a rule can also hold out a list of values (``HoldoutRule("in", "rung", values=("m64",
"m128"))``) and be skipped where it would leave fewer than ``min_left`` distinct values of its
column (``min_left=2``: never hold out the larger of only two model sizes, which would leave one
size to fit an exponent to).

With groups (e.g. one fit per method) a rule applies within each group, so ``max:examples`` holds
out each method's own largest finetuning set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ftscale.errors import UserError

#: Rule kinds that pick one value of their column by its rank among the distinct values.
RANKED = ("max", "min", "middle")


@dataclass(frozen=True)
class HoldoutRule:
    """One rule choosing held-out rows.

    Attributes:
        kind: ``"max"``, ``"min"``, ``"middle"`` (see the module docs), ``"eq"`` (COL equals
            ``value``) or ``"in"`` (COL equals one of ``values``).
        column: the column the rule reads.
        value: the value of an ``"eq"`` rule, as typed.
        values: the values of an ``"in"`` rule.
        min_left: skip the rule (hold out nothing by it) where it would leave fewer than this many
            distinct values of its column among the rows it is applied to; 0 never skips.
    """

    kind: str
    column: str
    value: str | None = None
    values: tuple = ()
    min_left: int = 0

    @classmethod
    def parse(cls, text: str) -> list[HoldoutRule]:
        """Parse ``"max:COL"``, ``"min:COL"``, ``"middle:COL"``, ``"COL=VALUE"`` or several joined
        by commas."""
        rules = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                raise UserError(f"holdout rule {text!r}: empty rule")
            head, sep, tail = part.partition(":")
            if sep and head in RANKED and tail:
                rules.append(cls(head, tail))
                continue
            column, sep, value = part.partition("=")
            if sep and column and value:
                rules.append(cls("eq", column.strip(), value.strip()))
                continue
            raise UserError(
                f"holdout rule {part!r} not understood "
                "(use max:COL, min:COL, middle:COL or COL=VALUE)"
            )
        return rules

    @property
    def text(self) -> str:
        """The rule as it is written (for messages)."""
        if self.kind in RANKED:
            return f"{self.kind}:{self.column}"
        if self.kind == "eq":
            return f"{self.column}={self.value}"
        return f"{self.column} in [{', '.join(map(str, self.values))}]"

    def mask(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """Boolean mask of the rows this rule holds out, given the table's columns."""
        if self.column not in columns:
            have = ", ".join(columns)
            raise UserError(f"holdout rule names column {self.column!r}, not in the table ({have})")
        values = np.asarray(columns[self.column])
        if values.size == 0:
            return np.zeros(0, dtype=bool)
        hit = self._hit(values)
        if self.min_left and np.unique(values[~hit]).size < self.min_left:
            return np.zeros(values.size, dtype=bool)
        return hit

    def _hit(self, values: np.ndarray) -> np.ndarray:
        if self.kind == "max":
            return values == values.max()
        if self.kind == "min":
            return values == values.min()
        if self.kind == "middle":
            distinct = np.unique(values)
            return values == distinct[distinct.size // 2]
        wanted = (self.value,) if self.kind == "eq" else tuple(self.values)
        if not np.issubdtype(values.dtype, np.number):
            return np.isin(values.astype(str), [str(v) for v in wanted])
        hit = np.zeros(values.size, dtype=bool)
        for target in wanted:
            hit |= np.isclose(values.astype(float), self._number(target), rtol=1e-9, atol=0.0)
        return hit

    def _number(self, value) -> float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise UserError(
                f"holdout rule {self.text}: column is numeric, value {value!r} is not"
            ) from None


def holdout_mask(
    rules: str | Sequence[HoldoutRule] | None,
    columns: Mapping[str, np.ndarray],
    groups: np.ndarray | None = None,
    *,
    require_match: bool = True,
) -> np.ndarray:
    """Rows held out by ``rules`` (union), applied within each group when ``groups`` is given.

    Raises :class:`~ftscale.errors.UserError` if a rule matches no row at all (a misspelt value),
    unless ``require_match`` is false (a study whose sweep lost the runs a rule names) or the
    rule has a ``min_left`` (holding out nothing is then one of its outcomes).
    """
    n = len(next(iter(columns.values())))
    if not rules:
        return np.zeros(n, dtype=bool)
    parsed = HoldoutRule.parse(rules) if isinstance(rules, str) else list(rules)
    labels = np.zeros(n, dtype=int) if groups is None else np.unique(groups, return_inverse=True)[1]
    held = np.zeros(n, dtype=bool)
    for rule in parsed:
        hit = np.zeros(n, dtype=bool)
        for g in np.unique(labels):
            rows = labels == g
            hit[rows] = rule.mask({k: np.asarray(v)[rows] for k, v in columns.items()})
        if require_match and not rule.min_left and not hit.any():
            raise UserError(f"holdout rule {rule.text} matches no row")
        held |= hit
    return held


def mean_abs_deviation(predicted: np.ndarray, observed: np.ndarray) -> float:
    """Mean absolute deviation (nats per token) of predictions from observations; nan if empty."""
    predicted, observed = np.asarray(predicted, float), np.asarray(observed, float)
    return float(np.mean(np.abs(predicted - observed))) if observed.size else float("nan")
