"""Files of the law commands: saved fits, JSON tables, and output locations checked before work.

A ``.json`` file given to ``ftscale fit`` or ``ftscale critical`` is read by its content, never by
its name alone: a JSON object with a ``fits`` list is a fit saved by ``ftscale fit --save``; a JSON
array of records, or one record per line (JSON lines), is a table of runs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftscale.common import first_line, write_text_atomic
from ftscale.errors import UserError
from ftscale.laws.results import FitResult, Fits

#: Suffixes whose content decides between a saved fit and a table.
JSON_SUFFIXES = (".json",)
#: Figure formats ``--plot`` writes (matplotlib's, by suffix).
PLOT_SUFFIXES = (".png", ".pdf", ".svg")


@dataclass
class JsonInput:
    """What a ``.json`` file holds: saved fits, or a table of runs (column -> values)."""

    fits: Fits | None = None
    columns: dict[str, np.ndarray] | None = None


def read_json_input(path: Path) -> JsonInput:
    """Read ``path`` (a ``.json`` file) as saved fits or as a table, deciding by content."""
    text = _read_text(path)
    stripped = text.lstrip()
    if not stripped:
        raise UserError(f"{path}: file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if stripped.startswith("{") and "\n" in stripped.strip():
            return JsonInput(columns=_records(_json_lines(path, text), path))
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, dict) and "fits" in data:
        return JsonInput(fits=saved_fits(data, path))
    if isinstance(data, dict):
        return JsonInput(columns=_records([data], path))
    if isinstance(data, list):
        return JsonInput(columns=_records(data, path))
    raise UserError(
        f"{path}: expected saved fits or a table of runs, got a JSON {type(data).__name__}"
    )


def _read_text(path: Path) -> str:
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a file")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {first_line(exc)}") from None


def _json_lines(path: Path, text: str) -> list:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: line {number} is not JSON ({exc.msg})") from None
    return records


def _records(records: list, path: Path) -> dict[str, np.ndarray]:
    """JSON records (objects) -> columns; a record that is not an object is named by its row."""
    if not records:
        raise UserError(f"{path}: table has no rows")
    keys: dict[str, None] = {}
    for i, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise UserError(
                f"{path}: row {i} is a JSON {type(record).__name__}, expected an object of fields"
            )
        keys.update(dict.fromkeys(map(str, record)))
    return {k: _column([r.get(k) for r in records]) for k in keys}


def _column(values: list) -> np.ndarray:
    """Numbers as floats (None -> NaN), anything else as objects (checked where it is used)."""
    if all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in values):
        return np.array([np.nan if v is None else v for v in values], dtype=float)
    return np.array(values, dtype=object)


def saved_fits(data: Mapping, path: Path | str = "saved fit") -> Fits:
    """Fits saved by ``ftscale fit --save`` (one-line errors for what cannot be rebuilt)."""
    records = data.get("fits")
    if not isinstance(records, list) or not records:
        raise UserError(f"{path}: the saved fit holds no fits")
    fits = Fits()
    for i, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise UserError(f"{path}: fit {i} is not a JSON object")
        try:
            fits.append(FitResult.from_dict(record))
        except UserError as exc:
            raise UserError(f"{path}: fit {i}: {first_line(exc)}") from None
    fits.selections, fits.group_columns = [], list(data.get("group_columns") or [])
    return fits


def check_output(path: Path | None, option: str, suffixes: tuple[str, ...] = ()) -> None:
    """Refuse an output location before any work: a folder, a missing or unwritable folder, an
    unwritable file, or (for figures) an unknown format."""
    if path is None:
        return
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder, expected a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{option} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: folder {parent} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{option} {path}: file is not writable")
    if suffixes and path.suffix.lower() not in suffixes:
        raise UserError(
            f"{option} {path}: unknown format {path.suffix or '(none)'!r} "
            f"(known: {', '.join(suffixes)})"
        )


def check_outputs(outputs: Mapping[str, Path | None]) -> None:
    """:func:`check_output` for each ``{option: path}``; also refuses two options on one file."""
    seen: dict[Path, str] = {}
    for option, path in outputs.items():
        check_output(path, option, PLOT_SUFFIXES if option == "--plot" else ())
        if path is not None:
            key = path.resolve()
            if key in seen:
                raise UserError(f"{seen[key]} and {option} name the same file {path}")
            seen[key] = option


def write_or_rescue(path: Path, text: str, what: str) -> str | None:
    """Write ``text`` to ``path`` atomically; if that fails, keep it beside in a temporary file.

    Returns None on success, else a one-line message saying what failed and where the text went
    (the caller prints it and exits non-zero): the finished work is never lost.
    """
    try:
        write_text_atomic(path, text)
        return None
    except OSError as exc:
        reason = first_line(exc)
    rescue = Path(os.environ.get("TMPDIR", "/tmp")) / f"ftscale-{os.getpid()}-{path.name}"
    try:
        write_text_atomic(rescue, text)
    except OSError:
        sys.stdout.write(text)
        return f"could not write {what} to {path} ({reason}); printed it to stdout instead"
    return f"could not write {what} to {path} ({reason}); saved it to {rescue} instead"
