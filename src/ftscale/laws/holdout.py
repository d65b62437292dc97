"""Held-out points and the study's fit-quality measures, Delta_e and Delta_h.

The study holds out the extreme of each sweep (the largest model, the largest PET size, the largest
D_f, and a middle pretraining checkpoint) and reports the mean absolute deviation of predictions
from observations on the fitted points (Delta_e) and on the held-out ones (Delta_h). Deviations
are in linear space, in nats per token, whatever space the fit used.

Rules (as typed after ``--holdout``):

* ``max:COL`` / ``min:COL``: the rows where column COL takes its largest / smallest value;
* ``COL=VALUE``: the rows where COL equals VALUE (numbers compare as numbers: ``1e9`` matches
  ``1000000000``);
* several rules joined by ``,``: the union of their rows.

With groups (e.g. one fit per method) a rule applies within each group, so ``max:examples`` holds
out each method's own largest finetuning set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ftscale.errors import UserError


@dataclass(frozen=True)
class HoldoutRule:
    """One rule choosing held-out rows: ``kind`` is ``"max"``, ``"min"`` or ``"eq"``."""

    kind: str
    column: str
    value: str | None = None

    @classmethod
    def parse(cls, text: str) -> list[HoldoutRule]:
        """Parse ``"max:COL"``, ``"min:COL"``, ``"COL=VALUE"`` or several joined by commas."""
        rules = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                raise UserError(f"holdout rule {text!r}: empty rule")
            head, sep, tail = part.partition(":")
            if sep and head in ("max", "min") and tail:
                rules.append(cls(head, tail))
                continue
            column, sep, value = part.partition("=")
            if sep and column and value:
                rules.append(cls("eq", column.strip(), value.strip()))
                continue
            raise UserError(
                f"holdout rule {part!r} not understood (use max:COL, min:COL or COL=VALUE)"
            )
        return rules

    def mask(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """Boolean mask of the rows this rule holds out, given the table's columns."""
        if self.column not in columns:
            have = ", ".join(columns)
            raise UserError(f"holdout rule names column {self.column!r}, not in the table ({have})")
        values = np.asarray(columns[self.column])
        if self.kind == "max":
            return values == values.max()
        if self.kind == "min":
            return values == values.min()
        if np.issubdtype(values.dtype, np.number):
            try:
                target = float(self.value)
            except ValueError:
                raise UserError(
                    f"holdout rule {self.column}={self.value}: column is numeric, value is not"
                ) from None
            return np.isclose(values.astype(float), target, rtol=1e-9, atol=0.0)
        return values.astype(str) == self.value


def holdout_mask(
    rules: str | list[HoldoutRule] | None,
    columns: Mapping[str, np.ndarray],
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Rows held out by ``rules`` (union), applied within each group when ``groups`` is given.

    Raises :class:`~ftscale.errors.UserError` if a rule matches no row at all.
    """
    n = len(next(iter(columns.values())))
    if not rules:
        return np.zeros(n, dtype=bool)
    parsed = HoldoutRule.parse(rules) if isinstance(rules, str) else rules
    labels = np.zeros(n, dtype=int) if groups is None else np.unique(groups, return_inverse=True)[1]
    held = np.zeros(n, dtype=bool)
    for rule in parsed:
        hit = np.zeros(n, dtype=bool)
        for g in np.unique(labels):
            rows = labels == g
            hit[rows] = rule.mask({k: np.asarray(v)[rows] for k, v in columns.items()})
        if not hit.any():
            raise UserError(f"holdout rule {rule.column}={rule.value} matches no row")
        held |= hit
    return held


def mean_abs_deviation(predicted: np.ndarray, observed: np.ndarray) -> float:
    """Mean absolute deviation (nats per token) of predictions from observations; nan if empty."""
    predicted, observed = np.asarray(predicted, float), np.asarray(observed, float)
    return float(np.mean(np.abs(predicted - observed))) if observed.size else float("nan")
