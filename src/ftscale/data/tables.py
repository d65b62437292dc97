"""Read a table of rows (CSV, TSV, Parquet, JSON lines or a JSON array) with errors a user can act
on.

Row numbers in every error of :mod:`ftscale.data` count the table's rows from 1 in file order, the
header not counted: row 1 is the first data line of a CSV file and the first object of a JSON
file. Errors about a JSON line that is not an object name the file's line (from 1) instead.
"""

from __future__ import annotations

import json
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
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
}


def read_table(path: str | Path, *, text: bool = False) -> pd.DataFrame:
    """Read a CSV, TSV, Parquet or JSON file into a DataFrame.

    The format is taken from the suffix. A JSON file (``.json``, ``.jsonl``, ``.ndjson``) is read
    by content: a JSON array of objects (``[{...}, {...}]``) or JSON lines (one object per line,
    blank lines skipped); each object is a row and its keys the columns. With ``text=True`` every
    CSV/TSV cell is read as the text written there (``NA``, ``None``, ``null`` or ``123`` stay
    text, an empty cell is ``""``), as text columns of pairs need; otherwise pandas' defaults
    apply (numbers parsed, ``NA`` and empty cells missing), as numeric tables need.

    Raises :class:`~ftscale.errors.UserError` with one line naming the file when it is missing,
    of an unknown format, unreadable (the JSON line or record at fault named) or has no rows.
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
    as_text = {"dtype": str, "keep_default_na": False} if text else {}
    try:
        if fmt == "csv":
            frame = pd.read_csv(path, **as_text)
        elif fmt == "tsv":
            frame = pd.read_csv(path, sep="\t", **as_text)
        elif fmt == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = read_json_records(path)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: file is empty") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        if isinstance(exc, UserError):
            raise
        first = first_line(exc)
        raise UserError(f"{path}: cannot read as {fmt}: {first}") from None
    if frame.empty:
        raise UserError(f"{path}: table has no rows")
    if fmt in ("csv", "tsv"):
        _check_header(path, "\t" if fmt == "tsv" else ",")
    return frame


def _check_header(path: Path, sep: str) -> None:
    """Refuse a CSV/TSV header that names one column twice (pandas would quietly rename the
    second ``test_nll.1``, and a fit would read the first without a word)."""
    import csv

    with path.open(encoding="utf-8", newline="") as handle:
        header = next(csv.reader(handle, delimiter=sep), [])
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise UserError(f"{path}: column {name!r} appears twice in the header")
        seen.add(name)


def read_json_records(path: Path) -> pd.DataFrame:
    """Rows of a JSON file: a JSON array of objects, or JSON lines (one object per line).

    Read with the standard ``json`` module, not ``pandas.read_json``, so values keep their JSON
    types (a target ``"2024"`` stays text; ``null`` is missing) and an element that is not an
    object is named by its line or position rather than failing inside pandas.
    """
    content = path.read_text(encoding="utf-8")
    if not content.strip():
        raise pd.errors.EmptyDataError
    if content.lstrip().startswith("["):
        try:
            whole = json.loads(content)
        except ValueError:
            whole = None  # not one array: JSON lines whose first line is an array, say
        if isinstance(whole, list):
            for i, record in enumerate(whole, start=1):
                if not isinstance(record, dict):
                    raise UserError(
                        f"{path}: record {i} of the JSON array is {_kind(record)}, "
                        "expected an object"
                    )
            return pd.DataFrame.from_records(whole)
    records = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise UserError(f"{path}: line {number}: not valid JSON ({first_line(exc)})") from None
        if not isinstance(record, dict):
            raise UserError(
                f"{path}: line {number}: expected a JSON object, got {_kind(record)}"
            )
        records.append(record)
    return pd.DataFrame.from_records(records)


def _kind(value: object) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def require_columns(frame: pd.DataFrame, columns: list[str], source: str | Path) -> None:
    """Raise a one-line :class:`UserError` naming the first of ``columns`` not in ``frame``."""
    for column in columns:
        if column not in frame.columns:
            have = ", ".join(map(str, frame.columns))
            raise UserError(f"{source}: column {column!r} not found (columns: {have})")
