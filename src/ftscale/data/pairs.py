"""(source, target) pairs: the unit of every finetuning task."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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

    ``source`` and ``target`` name the columns (JSON keys) holding the two texts; CSV/TSV cells
    are read as written (``NA`` or ``None`` is text, see :func:`read_table`). Raises a one-line
    :class:`~ftscale.errors.UserError` for a missing file or column, an empty file, a row whose
    source or target is missing or not text, or pairs with a blank source or target (with the
    count and the first row).
    """
    pairs = pairs_from_frame(read_table(path, text=True), source, target, path)
    check_nonempty(pairs, path)
    return pairs


def check_nonempty(pairs: list[Pair], origin: str | Path) -> None:
    """Raise one :class:`UserError` line when some pairs have a blank source or target, with the
    count and the first such row (rows counted from 1): nothing can be learnt from them."""
    empty = [i for i, p in enumerate(pairs, 1) if not p.source.strip() or not p.target.strip()]
    if empty:
        raise UserError(
            f"{origin}: {len(empty)} empty pair(s) (blank source or target), "
            f"first at row {empty[0]}"
        )


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


def nested_subset(pairs: Sequence[Pair], n: int, subset_seed: int) -> list[Pair]:
    """The first ``n`` examples of a random order of ``pairs`` fixed by ``subset_seed``.

    Nested: for one seed, the ``n``-subset is contained in every larger subset (it is a prefix of
    the same permutation). The order depends only on ``len(pairs)`` and the seed. Raises a one-line
    :class:`~ftscale.errors.UserError` when ``n`` is not in ``1..len(pairs)``.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise UserError(f"examples must be a positive integer, got {n!r}")
    if n > len(pairs):
        raise UserError(f"examples {n} is larger than the training data ({len(pairs)} pairs)")
    order = np.random.default_rng(subset_seed).permutation(len(pairs))
    return [pairs[i] for i in order[:n]]
