"""(source, target) pairs: the unit of every finetuning task."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ftscale.data.tables import read_table, require_columns
from ftscale.errors import UserError


@dataclass(frozen=True, slots=True)
class Pair:
    """One task example: a source text (the input) and its target text (what the model learns)."""

    source: str
    target: str


def read_pairs(path: str | Path, source: str = "source", target: str = "target") -> list[Pair]:
    """Read (source, target) pairs from a JSONL, CSV or Parquet file.

    ``source`` and ``target`` name the columns (JSON keys) holding the two texts. Raises a one-line
    :class:`~ftscale.errors.UserError` for a missing file or column, an empty file, or a row whose
    source or target is missing or not text.
    """
    return pairs_from_frame(read_table(path), source, target, path)


def pairs_from_frame(
    frame: pd.DataFrame, source: str, target: str, origin: str | Path
) -> list[Pair]:
    """(source, target) pairs from two columns of a table, in row order.

    ``origin`` names the table in errors. Raises a one-line :class:`~ftscale.errors.UserError` for
    a missing column or a row whose source or target is not text (rows are counted from 1).
    """
    require_columns(frame, [source, target], origin)
    pairs = []
    for row, (src, tgt) in enumerate(zip(frame[source], frame[target], strict=True), start=1):
        for column, value in ((source, src), (target, tgt)):
            if not isinstance(value, str):
                raise UserError(f"{origin}: row {row}: {column!r} is {value!r}, expected text")
        pairs.append(Pair(src, tgt))
    return pairs
