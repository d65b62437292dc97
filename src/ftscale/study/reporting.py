"""The report of a study directory: analyse its store, write the HTML, Markdown and fits files."""

from __future__ import annotations

import os
from pathlib import Path

from ftscale.common import first_line
from ftscale.errors import UserError
from ftscale.study.store import open_store


def study_config(meta: dict, where: Path):
    """The :class:`~ftscale.study.config.StudyConfig` saved in a store's meta table."""
    from pydantic import ValidationError

    from ftscale.study.config import StudyConfig

    if "config" not in meta:
        raise UserError(f"{where}: the store has no study config (not written by `study run`)")
    try:
        return StudyConfig.model_validate(meta["config"])
    except ValidationError:
        raise UserError(
            f"{where}: the stored study config is not readable by this ftscale"
        ) from None


def analyse_dir(study_dir: str | Path) -> dict:
    """The analysis of a study directory's store (see :mod:`ftscale.study.analysis`)."""
    from ftscale.study.analysis import analyse

    study_dir = Path(study_dir)
    with open_store(study_dir) as store:
        rows = store.rows()
        meta = store.meta()
    config = study_config(meta, study_dir)
    if not any(r["status"] == "ok" for r in rows):
        raise UserError(
            f"{study_dir}: no finished run yet ({len(rows)} planned); "
            "`ftscale study run` runs them"
        )
    return analyse(rows, config)


def write_report(study_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Analyse ``study_dir`` and write its report files (into ``out_dir``, default the study
    directory); returns their paths."""
    from ftscale.report.study_report import write_report as write

    study_dir = Path(study_dir)
    out = Path(out_dir) if out_dir is not None else study_dir
    if not out.is_dir():
        raise UserError(f"{out}: no such folder")
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"{out}: cannot write in it (permission denied or read-only)")
    analysis = analyse_dir(study_dir)
    try:
        return write(analysis, out, f"ftscale study {analysis['study']}")
    except OSError as exc:
        raise UserError(f"{out}: cannot write the report: {first_line(exc)}") from None
