"""Figures of a study's analysis (matplotlib, returned as PNG bytes for embedding).

Each function takes the analysis data of :func:`ftscale.study.analysis.analyse` (plain dicts) and
returns PNG bytes, or None when the analysis has nothing to draw. Registered by name in
:data:`FIGURES` (the report draws them in this order).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt
import numpy as np

from ftscale.laws import law_from_record
from ftscale.report.figures import log_ticks

#: Figure name -> (title, function); filled by :func:`register_figure`.
FIGURES: dict[str, tuple[str, Callable[[dict], bytes | None]]] = {}
_COLOURS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def register_figure(name: str, title: str):
    def wrap(fn):
        FIGURES[name] = (title, fn)
        return fn

    return wrap


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _fits(analysis: dict, sweep: str, form: str | None = None) -> list[dict]:
    form = form or analysis.get("law", "multiplicative")
    return [f for f in analysis["fits"] if f["sweep"] == sweep and f["form"] == form]


def _sweep_figure(analysis: dict, sweep: str, x_label: str) -> bytes | None:
    fits = _fits(analysis, sweep)
    if not fits:
        return None
    fig, axes = plt.subplots(1, len(fits), figsize=(4.2 * len(fits), 3.6), squeeze=False)
    for ax, entry in zip(axes[0], fits, strict=True):
        law = law_from_record(entry)
        xs = sorted({p["x"] for p in entry["points"]})
        ds = [p["examples"] for p in entry["points"]]
        grid = np.geomspace(min(ds) * 0.8, max(ds) * 1.25, 80)
        for i, x in enumerate(xs):
            colour = _COLOURS[i % len(_COLOURS)]
            ax.plot(
                grid,
                law.predict(np.column_stack([np.full_like(grid, x), grid])),
                color=colour,
                lw=1.2,
                label=f"{x_label}={x:.3g}",
            )
            pts = [p for p in entry["points"] if p["x"] == x]
            fit = [p for p in pts if not p["heldout"]]
            held = [p for p in pts if p["heldout"]]
            ax.scatter(
                [p["examples"] for p in fit], [p["observed"] for p in fit], color=colour, s=18
            )
            ax.scatter(
                [p["examples"] for p in held],
                [p["observed"] for p in held],
                color=colour,
                s=40,
                marker="*",
                edgecolor="black",
                linewidths=0.5,
            )
        ax.set_xscale("log")
        log_ticks(ax.xaxis, ds)  # ticks at the D_f run, as plain numbers
        ax.set_xlabel("finetuning examples D_f")
        ax.set_ylabel("test NLL (nats/token)")
        dh = entry["delta_h"]
        ax.set_title(
            f"{entry['method']}  alpha={entry['params']['alpha']:.3g} "
            f"beta={entry['params']['beta']:.3g}\nDelta_h="
            f"{'-' if dh is None else format(dh, '.3g')}",
            fontsize=9,
        )
        ax.legend(fontsize=7)
    fig.suptitle("dots: fitted points; stars: held out; lines: fitted law", fontsize=8, y=1.06)
    return _png(fig)


@register_figure("model_size", "Loss against data size per model size (joint fit)")
def model_size_figure(analysis: dict) -> bytes | None:
    return _sweep_figure(analysis, "model_size", "N")


@register_figure("pretraining", "Pretraining data: loss against data size per checkpoint")
def pretraining_figure(analysis: dict) -> bytes | None:
    return _sweep_figure(analysis, "pretraining", "D_p")


@register_figure("pet_size", "PET size: loss against data size per prompt length / rank")
def pet_figure(analysis: dict) -> bytes | None:
    return _sweep_figure(analysis, "pet_size", "P")


@register_figure("critical", "Critical data sizes between methods across model size")
def critical_figure(analysis: dict) -> bytes | None:
    points = analysis.get("critical") or []
    pairs: dict[str, list[dict]] = {}
    for c in points:
        pairs.setdefault(f"{c['first']} vs {c['second']}", []).append(c)
    if not any(c["crossings"] for c in points):
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, rows) in enumerate(pairs.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        xs = [c["x"] for c in rows if c["crossings"]]
        ys = [c["crossings"][0] for c in rows if c["crossings"]]
        if not xs:
            continue
        ax.plot(xs, ys, "o-", color=colour, label=name)
        for c in rows:
            if c["crossings"] and c.get("interval") and None not in c["interval"]:
                ax.vlines(c["x"], *c["interval"], color=colour, alpha=0.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    log_ticks(ax.xaxis, [c["x"] for c in points])  # ticks at the model sizes fitted
    log_ticks(ax.yaxis)
    ax.set_xlabel("model size N (non-embedding parameters)")
    ax.set_ylabel("critical D_f (examples)")
    ax.legend(fontsize=8)
    ax.set_title(
        "D_f where two methods predict the same loss (bars: bootstrap interval)", fontsize=9
    )
    return _png(fig)


@register_figure("generalisation", "Generalisation: generation scores per method and model size")
def generalisation_figure(analysis: dict) -> bytes | None:
    rows = analysis.get("generalisation") or []
    metrics = sorted({k for r in rows for k in r if k.startswith(("gen_", "eval."))})
    if not rows or not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        methods = sorted({r["method"] for r in rows})
        for i, method in enumerate(methods):
            sub = [r for r in rows if r["method"] == method and metric in r]
            by_x: dict[float, list[float]] = {}
            for r in sub:
                by_x.setdefault(r["nonembedding_params"], []).append(r[metric])
            xs = sorted(by_x)
            ax.plot(xs, [np.mean(by_x[x]) for x in xs], "o-", color=_COLOURS[i], label=method)
        ax.set_xscale("log")
        log_ticks(ax.xaxis, [r["nonembedding_params"] for r in rows])
        ax.set_xlabel("model size N")
        ax.set_ylabel(metric + " (mean over D_f)")
        ax.legend(fontsize=7)
    return _png(fig)


@register_figure("residuals", "Residuals (predicted - observed) of every fit")
def residuals_figure(analysis: dict) -> bytes | None:
    fits = [f for f in analysis["fits"] if f["points"]]
    if not fits:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.8))
    labels = []
    for i, f in enumerate(fits):
        fit = [
            p["predicted"] - p["observed"]
            for p in f["points"]
            if not p["heldout"] and p["predicted"] is not None
        ]
        held = [
            p["predicted"] - p["observed"]
            for p in f["points"]
            if p["heldout"] and p["predicted"] is not None
        ]
        ax.scatter(np.full(len(fit), i), fit, s=10, color="tab:blue")
        ax.scatter(np.full(len(held), i), held, s=30, marker="*", color="tab:red")
        labels.append(f"{f['method']}/{f['sweep']}/{f['form'][:4]}")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=70, fontsize=7)
    ax.set_ylabel("residual (nats/token)")
    ax.set_title("blue: fitted points; red stars: held out", fontsize=9)
    return _png(fig)


def draw_all(analysis: dict) -> list[tuple[str, str, bytes]]:
    """``(name, title, png)`` of every figure with something to draw."""
    out = []
    for name, (title, fn) in FIGURES.items():
        png = fn(analysis)
        if png is not None:
            out.append((name, title, png))
    return out
