"""Read a table of rows (CSV, Parquet or JSONL) with errors a user can act on."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ftscale.common import first_line
from ftscale.errors import UserError

#: File suffixes understood by :func:`read_table`, mapped to their format name.
TABLE_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV, TSV, Parquet or JSONL (one JSON object per line) file into a DataFrame.

    The format is taken from the suffix. Raises :class:`~ftscale.errors.UserError` with one line
    naming the file when it is missing, of an unknown format, unreadable or has no rows.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a table file")
    fmt = TABLE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(TABLE_FORMATS))
        raise UserError(f"{path}: unknown table format {path.suffix!r} (known: {known})")
    try:
        if fmt == "csv":
            frame = pd.read_csv(path)
        elif fmt == "tsv":
            frame = pd.read_csv(path, sep="\t")
        elif fmt == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_json(path, lines=True)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: file is empty") from None
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        first = first_line(exc)
        raise UserError(f"{path}: cannot read as {fmt}: {first}") from None
    if frame.empty:
        raise UserError(f"{path}: table has no rows")
    return frame


def require_columns(frame: pd.DataFrame, columns: list[str], source: str | Path) -> None:
    """Raise a one-line :class:`UserError` naming the first of ``columns`` not in ``frame``."""
    for column in columns:
        if column not in frame.columns:
            have = ", ".join(map(str, frame.columns))
            raise UserError(f"{source}: column {column!r} not found (columns: {have})")
