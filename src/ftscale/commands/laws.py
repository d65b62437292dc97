"""``ftscale fit`` and ``ftscale critical``: scaling laws on any table of runs."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ftscale.errors import UserError

FORM_HELP = "Law form (repeat to compare): power, multiplicative, additive, rectified."
X_HELP = "Column of the other factor X (parameters, pretraining tokens, PET size)."

TableArg = Annotated[
    Path, typer.Argument(help="Runs as CSV, Parquet or JSONL (critical: or a fit saved by --save).")
]
FormOpt = Annotated[list[str] | None, typer.Option("--form", "-f", help=FORM_HELP)]
XOpt = Annotated[str | None, typer.Option("--x", help=X_HELP)]
DOpt = Annotated[str, typer.Option("--d", help="Column of the finetuning-data size D_f.")]
YOpt = Annotated[str, typer.Option("--y", help="Column of the loss (nats per token).")]
GroupOpt = Annotated[str | None, typer.Option("--group", help="Column with one fit per value.")]
SpaceOpt = Annotated[str, typer.Option("--space", help="Residuals in 'log' (default) or 'linear'.")]
HoldoutOpt = Annotated[
    str | None,
    typer.Option("--holdout", help="Held-out runs: max:COL, min:COL, COL=VALUE, comma-joined."),
]
BootOpt = Annotated[int, typer.Option("--bootstrap", min=0, help="Bootstrap replicates (0: none).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Bootstrap seed.")]
PlotOpt = Annotated[Path | None, typer.Option("--plot", help="Write a figure (PNG, PDF, SVG).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _check_outputs(*paths: Path | None) -> None:
    """Fail before any work if an output file cannot be written where asked."""
    for path in paths:
        if path is not None and not path.parent.is_dir():
            raise UserError(f"{path}: folder {path.parent} does not exist")


def _fit(table, forms, x, d, y, group, space, holdout, n_bootstrap, seed):
    """Read the table and fit: shared by both commands."""
    from ftscale.data.tables import read_table
    from ftscale.laws import fit_table
    from ftscale.laws.fit import SPACES

    if space not in SPACES:
        raise UserError(f"--space must be one of {', '.join(SPACES)}, got {space!r}")
    frame = read_table(table)
    columns = {str(c): frame[c].to_numpy() for c in frame.columns}
    forms = forms or (["multiplicative"] if x else ["power"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = fit_table(
            columns,
            y=y,
            d=d,
            x=x,
            forms=forms,
            group=group,
            holdout=holdout,
            space=space,
            n_bootstrap=n_bootstrap,
            seed=seed,
            source=str(table),
        )
    for warning in caught:
        typer.echo(f"ftscale: warning: {warning.message}", err=True)
    return results


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}"


def _best_forms(results) -> dict:
    """Group -> the form with the lowest held-out error Δh (groups with no held-out runs: none)."""
    best: dict = {}
    for r in results:
        if not math.isnan(r.delta_h) and (r.group not in best or r.delta_h < best[r.group][0]):
            best[r.group] = (r.delta_h, r.form)
    return {group: form for group, (_, form) in best.items()}


def _write_json(path: Path, payload: dict) -> None:
    if not path.parent.exists():
        raise UserError(f"{path}: folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)  # atomic: a kill leaves the old file or the new one, never half of one


def fit(
    table: TableArg,
    form: FormOpt = None,
    x: XOpt = None,
    d: DOpt = "examples",
    y: YOpt = "test_nll",
    group: GroupOpt = None,
    space: SpaceOpt = "log",
    holdout: HoldoutOpt = None,
    bootstrap: BootOpt = 0,
    seed: SeedOpt = 0,
    plot: PlotOpt = None,
    json_out: JsonOpt = False,
    save: Annotated[
        Path | None, typer.Option("--save", help="Save the fits as JSON, for `ftscale critical`.")
    ] = None,
) -> None:
    """Fit scaling laws to a table of runs and report parameters and held-out errors."""
    _check_outputs(plot, save)
    results = _fit(table, form, x, d, y, group, space, holdout, bootstrap, seed)
    if plot is not None:
        from ftscale.report.figures import plot_fits

        plot_fits(results, plot, y_label=y)
    if save is not None:
        _write_json(save, {"fits": [r.to_dict(points=True) for r in results]})
    if json_out:
        typer.echo(json.dumps({"fits": [r.to_dict(points=True) for r in results]}, indent=1))
        return
    console = Console()
    grid = Table(title=f"Scaling-law fits to {table} ({space}-space Huber, Δ in nats)")
    grid.add_column("group", no_wrap=True)
    grid.add_column("form", no_wrap=True)
    # The one column that wraps on a narrow terminal; wide enough for "alpha=0.03247".
    grid.add_column("parameters", min_width=14)
    for column in ("Δe", "Δh", "fit", "held"):
        grid.add_column(column, justify="right", no_wrap=True)
    winners = _best_forms(results) if len({r.form for r in results}) > 1 else {}
    for r in results:
        intervals = r.intervals()
        shown = []
        for name, value in r.law.params_.items():
            text = f"{name}={_fmt(value)}"
            if name in intervals:
                text += f" [{_fmt(intervals[name][0], 3)}, {_fmt(intervals[name][1], 3)}]"
            shown.append(text)
        mark = " *" if winners.get(r.group) == r.form else ""
        grid.add_row(
            str(r.group or "-"),
            r.form + mark,
            "  ".join(shown),
            _fmt(r.delta_e, 3),
            _fmt(r.delta_h, 3),
            str(r.n_fit),
            str(r.n_heldout),
        )
    console.print(grid)
    if winners:
        console.print("* lowest held-out error Δh in its group")


def critical(
    table: TableArg,
    form: Annotated[
        str | None,
        typer.Option("--form", "-f", help="Law form (default: multiplicative with --x)."),
    ] = None,
    x: XOpt = None,
    d: DOpt = "examples",
    y: YOpt = "test_nll",
    group: Annotated[
        str, typer.Option("--group", help="Column of the methods to compare.")
    ] = "method",
    space: SpaceOpt = "log",
    holdout: HoldoutOpt = None,
    at: Annotated[
        list[float] | None, typer.Option("--at", help="X values to evaluate at (repeatable).")
    ] = None,
    d_min: Annotated[float, typer.Option("--d-min", help="Smallest D_f searched.")] = 1.0,
    d_max: Annotated[float, typer.Option("--d-max", help="Largest D_f searched.")] = 1e12,
    bootstrap: BootOpt = 0,
    seed: SeedOpt = 0,
    plot: PlotOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Critical finetuning-data sizes: where two methods' fitted losses cross."""
    from ftscale.laws import FitResult, critical_points

    _check_outputs(plot)
    if not 0 < d_min < d_max:
        raise UserError(f"--d-min/--d-max must satisfy 0 < min < max, got {d_min:g}, {d_max:g}")
    if table.suffix.lower() == ".json" and table.exists():
        try:
            saved = json.loads(table.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{table}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(saved, dict) or "fits" not in saved:
            raise UserError(f"{table}: not a saved fit (no 'fits' field); save one with fit --save")
        results = [FitResult.from_dict(r) for r in saved["fits"]]
        if form is not None:
            results = [r for r in results if r.form == form]
    else:
        results = _fit(
            table, [form] if form else None, x, d, y, group, space, holdout, bootstrap, seed
        )
    points = critical_points(results, xs=at, d_range=(d_min, d_max), form=form)
    if plot is not None:
        from ftscale.report.figures import plot_critical

        plot_critical(points, plot, x_label=results[0].variables.get("x", "X"))
    if json_out:
        typer.echo(json.dumps({"critical": [p.to_dict() for p in points]}, indent=1))
        return
    grid = Table(title=f"Critical finetuning-data sizes ({results[0].variables['d']})")
    for column in ("pair", "X", "crossings", "95% interval", "H·X^γ"):
        grid.add_column(column)
    for p in points:
        grid.add_row(
            f"{p.first} vs {p.second}",
            _fmt(p.x),
            ", ".join(
                _fmt(c) + (" (extrapolated)" if out else "")
                for c, out in zip(p.crossings, p.extrapolated(), strict=True)
            )
            or "none in range",
            "-" if p.interval is None else f"[{_fmt(p.interval[0])}, {_fmt(p.interval[1])}]",
            "-"
            if p.closed_form is None
            else f"{_fmt(p.closed_form[0])}·X^{_fmt(p.closed_form[1], 3)}",
        )
    Console().print(grid)


def register(app: typer.Typer) -> None:
    """Attach ``fit`` and ``critical`` to the ``ftscale`` app."""
    app.command("fit")(fit)
    app.command("critical")(critical)
