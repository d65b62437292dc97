"""Files of the law commands: saved fits, and output locations checked before any work.

A ``.json`` file given to ``ftscale fit`` or ``ftscale critical`` is read by its content, never by
its name alone: a JSON object with a ``fits`` list is a fit saved by ``ftscale fit --save``
(:func:`read_saved_fits`); anything else is a table of runs, read by the one table reader,
:func:`ftscale.data.tables.read_table` (the command layer puts the two together: ``laws`` does not
import ``data``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from ftscale.common import first_line, write_text_atomic
from ftscale.errors import UserError
from ftscale.laws.ensemble import ensemble_from_dict
from ftscale.laws.results import FitResult, Fits
from ftscale.laws.selection import Selection

#: Suffixes whose content decides between a saved fit and a table.
JSON_SUFFIXES = (".json",)
#: Figure formats ``--plot`` writes (matplotlib's, by suffix).
PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def read_saved_fits(path: Path) -> Fits | None:
    """The fits ``path`` holds when it is a fit saved by ``ftscale fit --save``, else None (a
    table of runs, or a file the table reader will report as missing, unreadable or not UTF-8).

    Saved fits are one JSON document whose top level is an object with a ``fits`` key. A document
    that is valid JSON but can be neither saved fits nor a table is refused here, with a message
    naming both: a number, string or other scalar, or an object without ``fits`` spread over
    several lines (a one-line object is a one-row table in JSON lines).
    """
    try:
        text = path.read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not text or text.startswith("["):
        return None  # empty, or a JSON array of records
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None  # JSON lines, or broken JSON: the table reader names the line at fault
    if isinstance(data, dict) and "fits" in data:
        return saved_fits(data, path)
    if isinstance(data, dict) and "\n" not in text:
        return None
    got = "an object without 'fits'" if isinstance(data, dict) else f"a JSON {type(data).__name__}"
    raise UserError(f"{path}: expected saved fits or a table of runs, got {got}")


def saved_fits(data: Mapping, path: Path | str = "saved fit") -> Fits:
    """Fits saved by ``ftscale fit --save``, with each group's form selection and ensemble (and
    so its default prediction); one-line errors for what cannot be rebuilt."""
    records = data.get("fits")
    if not isinstance(records, list) or not records:
        raise UserError(f"{path}: the saved fit holds no fits")
    fits = Fits()
    for i, record in enumerate(_records(data, "fits", path), 1):
        try:
            fits.append(FitResult.from_dict(record))
        except UserError as exc:
            raise UserError(f"{path}: fit {i}: {first_line(exc)}") from None
    fits.selections, fits.ensembles = [], []
    for i, record in enumerate(_records(data, "selection", path), 1):
        try:
            fits.selections.append(Selection.from_dict(record))
        except UserError as exc:
            raise UserError(f"{path}: selection {i}: {first_line(exc)}") from None
    for i, record in enumerate(_records(data, "ensemble", path), 1):
        try:
            fits.ensembles.append(ensemble_from_dict(record, fits))
        except UserError as exc:
            raise UserError(f"{path}: ensemble {i}: {first_line(exc)}") from None
    fits.group_columns = list(data.get("group_columns") or [])
    return fits


def _records(data: Mapping, key: str, path) -> list[dict]:
    """The list of JSON objects under ``key`` (none when absent, as in fits saved before it)."""
    records = data.get(key) or []
    if not isinstance(records, list):
        raise UserError(f"{path}: {key!r} is not a list")
    singular = {"fits": "fit"}.get(key, key)
    for i, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise UserError(f"{path}: {singular} {i} is not a JSON object")
    return records


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
