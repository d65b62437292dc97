"""``ftscale fit`` and ``ftscale critical``: scaling laws on any table of runs.

Exit codes: 0 done; 2 bad input (one line, nothing written); 3 the fits were made but an output
(``--save`` or ``--plot``) could not be written: the message says where the result went instead;
130 / 143 interrupted.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ftscale.common import first_line
from ftscale.errors import UserError

#: Exit code when the work finished but an output could not be written where asked.
OUTPUT_FAILED_EXIT = 3

FORM_HELP = (
    "Law form (repeat to compare): power, multiplicative, additive, rectified, prelearned; "
    "FILE.py:NAME for a LawForm in a Python file; 'expr:A/(X^alpha*D^beta)+E' for a formula. "
    "Default: multiplicative with --x, else power."
)
X_HELP = "Column of the other factor X (parameters, pretraining tokens, PET size)."

TableArg = Annotated[
    Path,
    typer.Argument(
        help="Runs as CSV, Parquet, JSONL or JSON records (critical: or a fit saved by --save)."
    ),
]
FormOpt = Annotated[list[str] | None, typer.Option("--form", "-f", help=FORM_HELP)]
XOpt = Annotated[str | None, typer.Option("--x", help=X_HELP)]
DOpt = Annotated[str, typer.Option("--d", help="Column of the finetuning-data size D_f.")]
YOpt = Annotated[str, typer.Option("--y", help="Column of the loss (nats per token).")]
GroupOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--group",
        help="Column with one fit per value; repeat to group by several. "
        "Default: 'method' if the table has it.",
    ),
]
SpaceOpt = Annotated[str, typer.Option("--space", help="Residuals in 'log' (default) or 'linear'.")]
HoldoutOpt = Annotated[
    str | None,
    typer.Option(
        "--holdout", help="Held-out runs: max:COL, min:COL, middle:COL, COL=VALUE, comma-joined."
    ),
]
BootOpt = Annotated[
    int,
    typer.Option("--bootstrap", min=0, help="Bootstrap replicates (0: none; at most 100,000)."),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Bootstrap seed (0 or more).")]
PlotOpt = Annotated[Path | None, typer.Option("--plot", help="Write a figure (PNG, PDF, SVG).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
PredictionOpt = Annotated[
    str,
    typer.Option(
        "--prediction",
        help="Each group's default prediction with several forms: auto (the form that clearly "
        "wins its nested extrapolation, else the ensemble of the forms), ensemble, selected, "
        "or a form's name.",
    ),
]


#: The options both commands share, declared once (see :func:`_table_options`): parameter name ->
#: (annotation, default). They say how to read and fit a table of runs.
SHARED_OPTIONS = {
    "x": (XOpt, None),
    "d": (DOpt, "examples"),
    "y": (YOpt, "test_nll"),
    "group": (GroupOpt, None),
    "space": (SpaceOpt, "log"),
    "holdout": (HoldoutOpt, None),
    "bootstrap": (BootOpt, 0),
    "seed": (SeedOpt, 0),
    "prediction": (PredictionOpt, "auto"),
}


def _table_options(command):
    """``command`` with :data:`SHARED_OPTIONS` added to its signature (keyword-only, after its
    table and ``--form``, where ``--help`` lists them) and handed to it checked, as the keyword
    ``options``: the :func:`ftscale.laws.fit_table` arguments they stand for."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "options"]
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
        for name, (kind, default) in SHARED_OPTIONS.items()
    ]
    parameters = [*own[:2], *shared, *own[2:]]

    @functools.wraps(command)
    def run(*args, **kwargs):
        given = {name: kwargs.pop(name) for name in SHARED_OPTIONS}
        return command(*args, options=_fit_options(**given), **kwargs)

    run.__signature__ = signature.replace(parameters=parameters)
    run.__annotations__ = {p.name: p.annotation for p in parameters}
    return run


def _fit_options(*, x, d, y, group, space, holdout, bootstrap, seed, prediction) -> dict:
    """The shared options as :func:`ftscale.laws.fit_table` keywords, refused before any file is
    read when the space or the bootstrap cannot work."""
    from ftscale.laws.fit import SPACES
    from ftscale.laws.uncertainty import check_replicates

    if bootstrap:
        check_replicates(bootstrap, seed)
    if space not in SPACES:
        raise UserError(f"--space must be one of {', '.join(SPACES)}, got {space!r}")
    given = dict(x=x, d=d, y=y, group=group, space=space, holdout=holdout, n_bootstrap=bootstrap)
    return dict(given, seed=seed, prediction=prediction)


def _default_forms(x: str | None) -> list[str]:
    """The form of both commands without ``--form``: the study's law with an X, else a power
    law in D_f."""
    return ["multiplicative"] if x else ["power"]


def _read_input(table: Path):
    """The fits a ``.json`` file saved by ``ftscale fit --save`` holds (told by its content), or
    else the table's columns (name -> values), read by the one table reader of ``ftscale.data``."""
    from ftscale.data.tables import read_table
    from ftscale.laws.io import JSON_SUFFIXES, read_saved_fits

    if table.suffix.lower() in JSON_SUFFIXES:
        fits = read_saved_fits(table)
        if fits is not None:
            return fits
    frame = read_table(table)
    return {str(c): frame[c].to_numpy() for c in frame.columns}


@contextmanager
def _progress(quiet: bool):
    """A rich progress bar on stderr for bootstrap replicates; silent off a terminal."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "bootstrap",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("bootstrap", total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


#: What numpy's floating-point warnings mean when they escape a fit.
_NUMERIC = {
    "overflow": "a law overflowed far from the data (a start or a replicate with extreme "
    "parameters); those evaluations were discarded",
    "divide by zero": "a law divided by zero at some sizes; those evaluations were discarded",
    "invalid value": "a law gave NaN at some sizes; those evaluations were discarded",
}


def _warning_line(warning) -> str:
    text = (
        first_line(warning.message)
        if isinstance(warning.message, Exception)
        else str(warning.message)
    )
    if issubclass(warning.category, RuntimeWarning):
        for key, meaning in _NUMERIC.items():
            if key in text:
                return meaning
    return text


def _fitted(table: Path, options: dict, quiet: bool):
    """Read the table and fit it (a saved fit is refused: there is nothing to fit)."""
    data = _read_input(table)
    if not isinstance(data, dict):
        raise UserError(f"{table}: holds saved fits, not runs; give it to `ftscale critical`")
    return _fit_columns(table, data, options, quiet)


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}"


def _fit_table_view(results, title: str) -> Table:
    grid = Table(title=title)
    grid.add_column("group", no_wrap=True)
    grid.add_column("form", no_wrap=True)
    # The one column that wraps on a narrow terminal; wide enough for "alpha=0.03247".
    grid.add_column("parameters", min_width=14)
    for column in ("sel", "Δe", "Δh", "fit", "held"):
        grid.add_column(column, justify="right", no_wrap=True)
    for r in results:
        intervals = r.intervals()
        shown = []
        for name, value in r.law.params_.items():
            text = f"{name}={_fmt(value)}"
            if name in intervals:
                text += f" [{_fmt(intervals[name][0], 3)}, {_fmt(intervals[name][1], 3)}]"
            shown.append(text)
        grid.add_row(
            str(r.group or "-"),
            r.form + (" !" if r.warnings else ""),
            "  ".join(shown),
            _fmt(r.selection_score, 3) + ("*" if r.selected else ""),
            _fmt(r.delta_e, 3),
            _fmt(r.delta_h, 3),
            str(r.n_fit),
            str(r.n_heldout),
        )
    return grid


def _ensemble_rows(grid: Table, ensembles) -> None:
    """One ``ensemble`` row per group: its weights, Δe and Δh."""
    for e in ensembles:
        weights = "  ".join(f"{k}={v:.2f}" for k, v in e.weights.items())
        mark = "*" if e.used == "ensemble" else ""
        n_held = int(e.heldout.sum())
        grid.add_row(
            str(e.group or "-"),
            "ensemble",
            f"weights {weights}",
            mark or "-",
            _fmt(e.delta_e, 3),
            _fmt(e.delta_h, 3),
            str(len(e.heldout) - n_held),
            str(n_held),
        )


def _render_fits(results, table: Path, space: str) -> None:
    console = Console()
    grid = _fit_table_view(results, f"Scaling-law fits to {table} ({space}-space Huber, Δ in nats)")
    ensembles = getattr(results, "ensembles", [])
    _ensemble_rows(grid, ensembles)
    console.print(grid)
    chosen = [s for s in results.selections if s.form is not None]
    if chosen and len({r.form for r in results}) > 1:
        console.print(
            f"* chosen without the held-out runs: {chosen[0].criterion}; 'sel' is its score"
        )
    for s in results.selections:
        if s.form is None and len({r.form for r in results}) > 1:
            console.print(f"no form chosen for {s.group or 'the table'}: {s.reason}")
    for e in ensembles:
        console.print(f"default prediction for {e.group or 'the table'}: {e.used} ({e.reason})")
    for r in results:
        for warning in r.warnings:
            console.print(f"! {r.group or '-'} {r.form}: {warning}", markup=False)
    _render_requested(console, results, ensembles)


def _render_requested(console: Console, results, ensembles) -> None:
    """The predictions at ``--predict`` sizes: every form's, then each ensemble's, the default
    prediction marked."""
    used = {e.group: e.used for e in ensembles}
    for r in [*results, *ensembles]:
        default = " (default)" if used.get(r.group) == r.form else ""
        for p in r.requested:
            interval = p.get("interval")
            band = f" [{_fmt(interval[0])}, {_fmt(interval[1])}]" if interval else ""
            where = ", ".join(
                f"{k}={_fmt(v)}" for k, v in p.items() if k not in ("predicted", "interval")
            )
            console.print(
                f"{r.group or '-'} {r.form}{default}: at {where} predicted "
                f"{_fmt(p['predicted'])}{band}"
            )


def _finish(outputs: list[tuple[Path, object]]) -> None:
    """Write each output (after the result reached stdout); exit 3 naming any that failed."""
    failed = []
    for path, write in outputs:
        message = write(path)
        if message:
            failed.append(message)
    for message in failed:
        typer.echo(f"ftscale: error: {message}", err=True)
    if failed:
        raise typer.Exit(OUTPUT_FAILED_EXIT)


def _plot_writer(plotter, *args, **kwargs):
    def write(path: Path) -> str | None:
        try:
            plotter(*args, path, **kwargs)
        except (UserError, OSError, ValueError, RuntimeError) as exc:
            reason = first_line(exc)
            return f"could not draw the figure {path} ({reason}); the results above are complete"
        return None

    return write


@_table_options
def fit(
    table: TableArg,
    *,
    form: FormOpt = None,
    options: dict,
    predict: Annotated[
        list[str] | None,
        typer.Option("--predict", help="Predict at X,D (or D) with its interval; repeatable."),
    ] = None,
    plot: PlotOpt = None,
    json_out: JsonOpt = False,
    save: Annotated[
        Path | None, typer.Option("--save", help="Save the fits as JSON, for `ftscale critical`.")
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Fit scaling laws to a table of runs, choose a form per group without the held-out runs,
    and report parameters, warnings and held-out errors."""
    from ftscale.laws.compare import parse_point
    from ftscale.laws.io import check_outputs, write_or_rescue

    check_outputs({"--plot": plot, "--save": save})
    forms = form or _default_forms(options["x"])
    at = [parse_point(p) for p in predict or []]
    results = _fitted(table, {**options, "forms": forms, "at": at}, quiet)
    document = json.dumps(results.to_dict(points=True), indent=1)
    if json_out:
        typer.echo(document)
    else:
        _render_fits(results, table, options["space"])
    outputs = []
    if save is not None:
        outputs.append((save, lambda path: write_or_rescue(path, document, "the fits")))
    if plot is not None:
        from ftscale.report.figures import plot_fits

        outputs.append((plot, _plot_writer(plot_fits, results, y_label=options["y"])))
    _finish(outputs)


#: Shared options a saved fit cannot use, by their ``fit_table`` keyword.
_REFITTING = {"--x": "x", "--holdout": "holdout", "--bootstrap": "n_bootstrap", "--group": "group"}


def _saved_or_fitted(table, forms, options, quiet):
    """Saved fits (refusing the fitting options they cannot use) or fits of a table of runs."""
    data = _read_input(table)
    if isinstance(data, dict):
        forms = forms or _default_forms(options["x"])
        return _fit_columns(table, data, {**options, "forms": forms}, quiet)
    given = [option for option, key in _REFITTING.items() if options[key]]
    if options["prediction"] != "auto":
        given.append("--prediction")
    if given:
        raise UserError(
            f"{table} holds saved fits: {', '.join(given)} would be ignored; refit the runs "
            "with `ftscale fit --save` to change them"
        )
    return data.restricted(forms) if forms else data


def _fit_columns(table, columns, options, quiet):
    from ftscale.laws import fit_table

    with warnings.catch_warnings(record=True) as caught, _progress(quiet) as progress:
        warnings.simplefilter("always")
        results = fit_table(columns, source=str(table), progress=progress, **options)
    for line in dict.fromkeys(_warning_line(w) for w in caught):
        typer.echo(f"ftscale: warning: {line}", err=True)
    return results


@_table_options
def critical(
    table: TableArg,
    *,
    form: Annotated[
        list[str] | None,
        typer.Option(
            "--form",
            "-f",
            help="Law form (default: multiplicative with --x, else power); repeat to combine "
            "forms (see --prediction).",
        ),
    ] = None,
    options: dict,
    at: Annotated[
        list[float] | None, typer.Option("--at", help="X values to evaluate at (repeatable).")
    ] = None,
    d_min: Annotated[float, typer.Option("--d-min", help="Smallest D_f searched.")] = 1.0,
    d_max: Annotated[float, typer.Option("--d-max", help="Largest D_f searched.")] = 1e12,
    plot: PlotOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Critical finetuning-data sizes: where two methods' fitted losses cross."""
    from ftscale.laws import critical_points
    from ftscale.laws.compare import check_critical_inputs, default_critical_points
    from ftscale.laws.io import check_outputs

    check_outputs({"--plot": plot})
    check_critical_inputs(at, (d_min, d_max))
    results = _saved_or_fitted(table, form, options, quiet)
    ensembles = getattr(results, "ensembles", [])
    if ensembles:
        points = default_critical_points(results, xs=at, d_range=(d_min, d_max))
    else:
        first = form[0] if form else None
        points = critical_points(results, xs=at, d_range=(d_min, d_max), form=first)
    if json_out:
        used = [{"group": e.group, "used": e.used, "reason": e.reason} for e in ensembles]
        document = {"critical": [p.to_dict() for p in points], "prediction": used}
        typer.echo(json.dumps(document, indent=1))
    else:
        _render_critical(points, results)
        for e in ensembles:
            typer.echo(f"default prediction for {e.group or 'the table'}: {e.used} ({e.reason})")
    if plot is not None:
        from ftscale.report.figures import plot_critical

        x_label = results[0].variables.get("x", "X")
        _finish([(plot, _plot_writer(plot_critical, points, x_label=x_label))])


def _render_critical(points, results) -> None:
    grid = Table(title=f"Critical finetuning-data sizes ({results[0].variables['d']})")
    for column in ("pair", "prediction", "X", "crossings", "95% interval", "H·X^γ"):
        grid.add_column(column)
    notes = {}
    for p in points:
        closed = "-"
        if p.closed_form is not None:
            closed = f"{_fmt(p.closed_form[0])}·X^{_fmt(p.closed_form[1], 3)}"
        if p.closed_form_note:
            notes[f"{p.first} vs {p.second}"] = p.closed_form_note
            closed = ("≈ " + closed + " †") if p.closed_form is not None else "- †"
        x_text = _fmt(p.x) + (" (extrapolated)" if p.x_extrapolated else "")
        grid.add_row(
            f"{p.first} vs {p.second}",
            " vs ".join(p.forms or ("-", "-")),
            x_text,
            ", ".join(
                _fmt(c) + (" (extrapolated)" if out else "")
                for c, out in zip(p.crossings, p.extrapolated(), strict=True)
            )
            or "none in range",
            "-" if p.interval is None else f"[{_fmt(p.interval[0])}, {_fmt(p.interval[1])}]",
            closed,
        )
    console = Console()
    console.print(grid)
    for pair, note in notes.items():
        console.print(f"† {pair}: {note}", markup=False)
    for r in results:
        for warning in r.warnings:
            console.print(f"! {r.group or '-'} {r.form}: {warning}", markup=False)


def register(app: typer.Typer) -> None:
    """Attach ``fit`` and ``critical`` to the ``ftscale`` app."""
    app.command("fit")(fit)
    app.command("critical")(critical)
