"""Figures of fitted laws and critical data sizes (matplotlib, written to PNG/PDF/SVG files)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

from ftscale.common import first_line
from ftscale.errors import UserError
from ftscale.laws.compare import CriticalPoint
from ftscale.laws.results import FitResult

_LINESTYLES = ("-", "--", ":", "-.")


#: Most labelled ticks :func:`log_ticks` puts at given values (more collide in a 4-inch panel).
_MAX_VALUE_TICKS = 6


def log_ticks(axis, values: Sequence[float] | None = None) -> None:
    """Readable labels on a log axis: no minor labels (they collide on short ranges such as
    250-1000, printing 2x10^2 3x10^2 ... on top of each other). With ``values`` (e.g. the D_f
    actually run), major ticks sit at those values (at most six, evenly thinned) as plain
    numbers; without, at 1, 2 and 5 per decade."""
    axis.set_minor_formatter(NullFormatter())
    if values is None:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        return
    ticks = sorted({float(v) for v in values})
    step = -(-len(ticks) // _MAX_VALUE_TICKS)  # ceiling division
    axis.set_major_locator(FixedLocator(ticks[::step]))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: _plain(v)))


def _plain(value: float) -> str:
    """A tick label without powers of ten: 250, 1,000, 64,000; 1.2e+06 from a million up."""
    return f"{value:,.0f}" if abs(value) < 1e6 else f"{value:.3g}"


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise UserError(f"{path}: folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.part{path.suffix}")
    try:
        fig.savefig(tmp, dpi=150, bbox_inches="tight")
        tmp.replace(path)  # atomic: no half-written figure under the real name
    except ValueError as exc:  # unknown image format
        raise UserError(f"{path}: {first_line(exc)}") from None
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def plot_fits(results: Sequence[FitResult], path: str | Path, *, y_label: str = "") -> Path:
    """Observed runs and fitted curves, one panel per group, like the study's Figure 2.

    Loss against finetuning-data size on log x; for two-variable forms one colour per X value,
    one-variable forms (which ignore X) one black curve. Held-out runs are drawn hollow; each
    form's Delta_e and Delta_h (nats) are in the legend, the selected form is starred, and a form
    with diagnostics is marked and its warnings are printed under the panel. With several forms
    (``results.ensembles``), each group's ensemble is drawn too, thick and translucent, with its
    mixture prediction interval as a band where the forms were bootstrapped; the legend marks
    the group's default prediction.
    """
    groups = list(dict.fromkeys(r.group for r in results))
    forms = list(dict.fromkeys(r.form for r in results))
    ensembles = {e.group: e for e in getattr(results, "ensembles", [])}
    fig, axes = plt.subplots(
        1, len(groups), figsize=(5.6 * len(groups), 4.6), squeeze=False, sharey=False
    )
    for ax, group in zip(axes[0], groups, strict=True):
        panel = [r for r in results if r.group == group]
        _panel(ax, panel, forms, ensembles.get(group))
        ax.set_ylabel(y_label or "loss (nats/token)")
        ax.set_title(group if group is not None else "")
    fig.tight_layout()
    return _save(fig, path)


def _panel(ax, panel: Sequence[FitResult], forms: list[str], ensemble=None) -> None:
    # Colour by X from a two-variable fit when there is one: its sizes carry X.
    ref = next((r for r in panel if r.sizes.shape[1] == 2), panel[0])
    d_col = ref.sizes[:, -1]
    d_line = np.geomspace(d_col.min() / 1.2, d_col.max() * 1.2, 200)
    _draw_runs(ax, panel, ref, forms, d_line)
    notes = _draw_laws(ax, panel, forms, d_line, None if ensemble is None else ensemble.used)
    if ensemble is not None:
        _draw_ensemble(ax, ensemble, ref, d_line)
    ax.scatter([], [], facecolors="none", edgecolors="black", label="held out")
    ax.set_xscale("log")
    log_ticks(ax.xaxis)
    ax.set_xlabel(ref.variables["d"])
    # Below the panel: flat curves (prompt tuning) leave no empty corner inside it.
    legend = ax.legend(
        fontsize=6.5, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2
    )
    if notes:
        _annotate_notes(ax, legend, notes)


def _draw_runs(ax, panel: Sequence[FitResult], ref: FitResult, forms: list[str], d_line) -> None:
    """The runs (filled: fitted, hollow: held out) and two-variable laws, one colour per X."""
    d_col = ref.sizes[:, -1]
    two_var = ref.sizes.shape[1] == 2
    xs = np.unique(ref.sizes[:, 0]) if two_var else np.array([np.nan])
    colours = plt.cm.viridis(np.linspace(0.1, 0.85, len(xs)))
    for x, colour in zip(xs, colours, strict=True):
        rows = ref.sizes[:, 0] == x if two_var else np.ones(len(d_col), bool)
        fit_rows, held_rows = rows & ~ref.heldout, rows & ref.heldout
        label = f"{ref.variables['x']}={x:.3g}" if two_var else "runs"
        ax.scatter(d_col[fit_rows], ref.observed[fit_rows], color=colour, s=18, label=label)
        ax.scatter(
            d_col[held_rows],
            ref.observed[held_rows],
            facecolors="none",
            edgecolors=colour,
            s=40,
            linewidths=1.4,
        )
        for result in panel:
            if result.sizes.shape[1] == 2:
                style = _LINESTYLES[forms.index(result.form) % len(_LINESTYLES)]
                grid = np.column_stack([np.full_like(d_line, x), d_line])
                with np.errstate(all="ignore"):
                    ax.plot(d_line, result.law.predict(grid), style, color=colour, lw=1.1)


def _draw_laws(
    ax, panel: Sequence[FitResult], forms: list[str], d_line, used: str | None = None
) -> list[str]:
    """One-variable laws in black and a legend entry per form (``used``: the group's default
    prediction, marked); returns the fits' warnings."""
    notes = []
    for result in panel:
        style = _LINESTYLES[forms.index(result.form) % len(_LINESTYLES)]
        one_var = result.sizes.shape[1] == 1
        if one_var:
            with np.errstate(all="ignore"):
                ax.plot(d_line, result.law.predict(d_line), style, color="black", lw=1.1)
        mark = (" *" if result.selected else "") + (" (!)" if result.warnings else "")
        mark += " (default)" if result.form == used else ""
        ax.plot(
            [],
            [],
            style,
            color="black",
            label=f"{result.form}{mark}: Δe={result.delta_e:.4f} Δh={result.delta_h:.4f}",
        )
        notes += [f"(!) {result.form}: {w}" for w in result.warnings]
    return notes


def _draw_ensemble(ax, ensemble, ref: FitResult, d_line) -> None:
    """The ensemble's curve per X value (the colours of the runs), thick and translucent, with
    its mixture prediction interval as a band when its forms were bootstrapped; one legend
    entry."""
    two_var = "x" in ensemble.variables and ref.sizes.shape[1] == 2
    xs = np.unique(ref.sizes[:, 0]) if two_var else np.array([np.nan])
    colours = plt.cm.viridis(np.linspace(0.1, 0.85, len(xs))) if two_var else ["black"]
    for x, colour in zip(xs, colours, strict=True):
        grid = np.column_stack([np.full_like(d_line, x), d_line]) if two_var else d_line[:, None]
        with np.errstate(all="ignore"):
            ax.plot(d_line, ensemble.law.predict(grid), "-", color=colour, lw=3.0, alpha=0.45)
            band = ensemble.predict_interval(grid)
        if band is not None:
            ax.fill_between(d_line, band[0], band[1], color=colour, alpha=0.12, lw=0)
    weights = ", ".join(f"{k} {v:.2f}" for k, v in ensemble.weights.items() if v > 0)
    default = " (default)" if ensemble.used == "ensemble" else ""
    band = f"; band: {ensemble.level:.0%} interval" if ensemble.bands is not None else ""
    label = (
        f"ensemble{default}: Δe={ensemble.delta_e:.4f} Δh={ensemble.delta_h:.4f}\n"
        f"  {weights}{band}"
    )
    ax.plot([], [], "-", color="black", lw=3.0, alpha=0.45, label=label)


def _annotate_notes(ax, legend, notes: list[str]) -> None:
    """The fits' warnings in red under the legend (at most eight, shortened)."""
    text = "\n".join(textwrap.shorten(n, 90) for n in notes[:8])
    ax.annotate(
        text,
        xy=(0.0, 0.0),
        xycoords=legend,
        xytext=(0, -4),
        textcoords="offset points",
        va="top",
        fontsize=5.5,
        color="darkred",
    )


def plot_critical(points: Sequence[CriticalPoint], path: str | Path, *, x_label: str = "X") -> Path:
    """Critical finetuning-data size against X, one line per pair of methods (log-log).

    Numeric crossings are dots (the first one per X), bootstrap intervals are bars, and the
    closed form H X^gamma is a dashed line where it applies.
    """
    pairs = list(dict.fromkeys((p.first, p.second) for p in points))
    fig, ax = plt.subplots(figsize=(5.4, 4.0))
    any_drawn = False
    for i, (first, second) in enumerate(pairs):
        colour = plt.cm.tab10(i % 10)
        rows = [p for p in points if (p.first, p.second) == (first, second) and p.x is not None]
        xs = np.array([p.x for p in rows], float)
        ds = np.array([p.crossings[0] if p.crossings else np.nan for p in rows], float)
        outside = np.array([bool(p.crossings) and p.extrapolated()[0] for p in rows], bool)
        if np.isfinite(ds).any():
            ax.plot(xs, ds, "-", color=colour, lw=1, label=f"{first} vs {second}")
            ax.scatter(xs[~outside], ds[~outside], color=colour, s=20)
            ax.scatter(xs[outside], ds[outside], facecolors="none", edgecolors=colour, s=24)
            any_drawn = True
        for p in rows:
            if p.interval is not None and np.isfinite(p.interval).all():
                ax.plot([p.x, p.x], p.interval, color=colour, lw=2, alpha=0.4)
        if rows and rows[0].closed_form is not None and xs.size:
            h, gamma = rows[0].closed_form
            x_line = np.geomspace(xs.min(), xs.max(), 50)
            ax.plot(
                x_line,
                h * x_line**gamma,
                "--",
                color=colour,
                lw=1,
                label=f"{first} vs {second}: {h:.3g}·X^{gamma:.3g}",
            )
            any_drawn = True
    if not any_drawn:
        ax.text(0.5, 0.5, "no crossings in range", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.set_xscale("log")
        ax.set_yscale("log")
        log_ticks(ax.xaxis)
        ax.scatter([], [], facecolors="none", edgecolors="black", s=24, label="outside observed D")
        ax.legend(fontsize=7, frameon=False)
    ax.set_xlabel(x_label)
    ax.set_ylabel("critical finetuning data size")
    fig.tight_layout()
    return _save(fig, path)
