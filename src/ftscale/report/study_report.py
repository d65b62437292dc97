"""A study's report: one self-contained HTML file (figures embedded as base64 PNG), a Markdown
summary and a JSON file of every fit, written from the analysis data of
:func:`ftscale.study.analysis.analyse`. Files are written atomically."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from ftscale.common import write_json_atomic, write_text_atomic

#: File names written in the study directory.
REPORT_FILES = {"html": "report.html", "markdown": "summary.md", "fits": "fits.json"}


def _n(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _interval(entry: dict, name: str) -> str:
    iv = entry.get("intervals", {}).get(name)
    if not iv or None in iv:
        return ""
    return f" [{iv[0]:.3g}, {iv[1]:.3g}]"


def _param(entry: dict, name: str) -> str:
    """A fitted parameter's cell: value [interval], or "not identified" where the data cannot
    pin it (the reason is listed under the table)."""
    if name in (entry.get("not_identified") or {}):
        return "not identified"
    return _n(entry["params"].get(name)) + _interval(entry, name)


def unidentified_lines(analysis: dict) -> list[str]:
    """One line per parameter reported as not identified, with the reason."""
    return [
        f"{f['method']} {f['sweep']} {f['form']}: {name}: {why}"
        for f in analysis["fits"]
        for name, why in (f.get("not_identified") or {}).items()
    ]


def convergence_rows(analysis: dict) -> list[list[str]]:
    """Converged share per sweep and method, and why the others stopped."""
    return [
        [
            c["sweep"],
            c["method"],
            f"{c['converged']}/{c['runs']}"
            + (f" ({c['unknown']} unknown)" if c["unknown"] else ""),
            ", ".join(f"{k} {v}" for k, v in sorted(c["stop_reasons"].items())),
        ]
        for c in analysis.get("convergence", [])
    ]


CONVERGENCE_HEADER = ["sweep", "method", "converged", "stop reasons"]


def law_choice_rows(analysis: dict) -> list[list[str]]:
    """Per method and sweep: the form with the lowest Delta_h, the interval of its Delta_h minus
    each rival's, and whether that makes it the winner."""
    rows = []
    for c in analysis.get("law_choice", []):
        diffs = "; ".join(
            f"vs {d['rival']}: "
            + (
                "-"
                if d["interval"] is None
                else f"[{d['interval'][0]:.3g}, {d['interval'][1]:.3g}]"
            )
            for d in c["differences"]
        )
        winner = c["winner"] or "no clear winner"
        rows.append([c["method"], c["sweep"], c["best"], diffs or "-", winner, _prediction(c)])
    return rows


def _prediction(choice: dict) -> str:
    """The prediction ``ftscale recommend`` uses for a law choice: a form, or the ensemble with
    its weights (``-`` for analyses from before it was recorded)."""
    used = choice.get("prediction")
    if used is None:
        return "-"
    weights = choice.get("weights")
    if not weights:
        return str(used)
    return f"{used} ({', '.join(f'{k} {v:.2f}' for k, v in weights.items())})"


LAW_HEADER = [
    "method",
    "sweep",
    "lowest Delta_h",
    "Delta_h difference (interval)",
    "winner",
    "prediction used",
]


def _level(analysis: dict) -> str:
    """The interval level of the fits, e.g. "95%"."""
    levels = {f.get("level") for f in analysis.get("fits", []) if f.get("level")}
    return f"{levels.pop():.0%}" if len(levels) == 1 else "central"


def headline(analysis: dict) -> list[str]:
    """The plain-language lines at the top of the report."""
    lines = []
    counts = analysis.get("counts", {})
    lines.append(
        f"{analysis['n_runs']} runs: {counts.get('ok', 0)} ok, "
        f"{counts.get('failed', 0)} failed, "
        f"{counts.get('pending', 0) + counts.get('running', 0)} not run yet."
    )
    for axis, label in (("model_size", "model size"), ("data_size", "finetuning data size")):
        t = analysis.get("trends", {}).get(axis)
        if not t or not t["pairs"]:
            continue
        verdict = "falls" if t["falls"] else "does NOT clearly fall"
        lines.append(
            f"Test loss {verdict} with {label}: lower in {t['falling_pairs']} of "
            f"{t['pairs']} adjacent comparisons."
        )
    converged = analysis.get("convergence", [])
    if converged:
        done = sum(c["converged"] for c in converged)
        total = sum(c["runs"] for c in converged)
        lines.append(
            f"Converged (dev loss plateaued before the cap): {done} of {total} runs over the "
            "sweeps (a run in two sweeps counts in both)."
        )
    best = analysis.get("best_forms", {})
    if best:
        mult = sum(1 for v in best.values() if v == "multiplicative")
        clear = [c for c in analysis.get("law_choice", []) if c["winner"]]
        lines.append(
            f"Lower held-out error: multiplicative law in {mult} of {len(best)} "
            f"(method, sweep) fits, {'; '.join(f'{k}: {v}' for k, v in best.items())}; "
            f"a clear winner by the replicates in {len(clear)} of {len(best)}."
        )
    flagged = analysis.get("flagged", [])
    if flagged:
        never = sum("never beat the base model" in f["reasons"] for f in flagged)
        last = len(flagged) - never
        lines.append(
            f"{len(flagged)} runs flagged ({never} never beat the base model, "
            f"{last} best at their last step: longer training could change them)."
        )
    return lines


def fits_table_rows(analysis: dict) -> list[list[str]]:
    rows = []
    for f in analysis["fits"]:
        p = f["params"]
        rows.append(
            [
                f["method"],
                f["sweep"],
                f["form"],
                _param(f, "A"),
                _param(f, "alpha"),
                _param(f, "B") if "B" in p else "",
                _param(f, "beta"),
                _param(f, "E"),
                _n(f["delta_e"]),
                _n(f["delta_h"]),
                f"{f['n_fit']}/{f['n_heldout']}",
            ]
        )
    return rows


FIT_HEADER = [
    "method",
    "sweep",
    "form",
    "A",
    "alpha",
    "B",
    "beta",
    "E",
    "Delta_e",
    "Delta_h",
    "fit/held",
]


def critical_rows(analysis: dict) -> list[list[str]]:
    rows = []
    for c in analysis.get("critical", []):
        crossings = ", ".join(
            f"{v:.0f}" + ("*" if e else "")
            for v, e in zip(c["crossings"], c["extrapolated"], strict=True)
        )
        iv = c.get("interval")
        share = c.get("crossing_share")
        forms = c.get("forms") or {}
        rows.append(
            [
                f"{c['first']} vs {c['second']}",
                " vs ".join(forms.get(m, "-") for m in (c["first"], c["second"])),
                _n(c["x"]),
                crossings or "none",
                "-" if not iv or None in iv else f"[{iv[0]:.0f}, {iv[1]:.0f}]",
                "-" if share is None else f"{share:.0%}",
                c.get("leader") or "-",
            ]
        )
    return rows


CRIT_HEADER = [
    "methods",
    "prediction used",
    "model size N",
    "critical D_f (* extrapolated)",
    "interval",
    "replicate pairs crossing",
    "better at small D_f",
]

#: What the critical-size section says it crosses.
CRIT_TITLE = "Critical data sizes (each method's default model-size prediction)"


def critical_prediction_lines(analysis: dict) -> list[str]:
    """Per method, the model-size prediction the critical sizes cross, and why."""
    return [
        f"{method}: {_prediction(record)}: {record['reason']}"
        for method, record in (analysis.get("critical_predictions") or {}).items()
    ]


def markdown(analysis: dict, title: str) -> str:
    """The Markdown summary."""
    out = [f"# {title}", ""]
    out += [f"- {line}" for line in headline(analysis)]
    out += ["", "## Findings of Zhang et al. (ICLR 2024) on this study", ""]
    for f in analysis["findings"]:
        out.append(f"{f['number']}. **{f['claim']}**: {f['status']}. {f['detail']}")
    out += ["", "## Convergence", "", _md_table(CONVERGENCE_HEADER, convergence_rows(analysis))]
    out += [
        "",
        f"## Fits ({_level(analysis)} bootstrap intervals in brackets)",
        "",
        _md_table(FIT_HEADER, fits_table_rows(analysis)),
    ]
    out += [f"- not identified: {line}" for line in unidentified_lines(analysis)]
    out += ["", "## Which law predicts held-out runs best", ""]
    out += [_md_table(LAW_HEADER, law_choice_rows(analysis))]
    out += ["", f"## {CRIT_TITLE}", ""]
    out += [f"- {line}" for line in critical_prediction_lines(analysis)]
    out += ["", _md_table(CRIT_HEADER, critical_rows(analysis))]
    if analysis.get("flagged"):
        out += ["", "## Flagged runs", ""]
        out += [
            f"- {f['method']} {f['rung']} D_f={f['examples']} (size {f['method_size']}, "
            f"tokens {f['tokens_seen']}): {'; '.join(f['reasons'])}"
            for f in analysis["flagged"]
        ]
    if analysis.get("notes"):
        out += ["", "## Notes", ""] + [f"- {n}" for n in analysis["notes"]]
    return "\n".join(out) + "\n"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "(none)"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _list_html(lines: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "<p>(none)</p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;background:#fff}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;
padding:3px 7px;text-align:right}th{background:#eef}img{max-width:100%;border:1px solid #ddd}
.reproduced{color:#070}.not{color:#a00}.untestable{color:#777}.inconclusive{color:#a60}
h1{color:#124}
"""


def html_report(analysis: dict, figures: list[tuple[str, str, bytes]], title: str) -> str:
    """The self-contained HTML report (figures as base64 PNG data URIs)."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1><ul>"
    ]
    parts += [f"<li>{html.escape(line)}</li>" for line in headline(analysis)]
    parts.append("</ul>" + _findings_html(analysis))
    for name, caption, png in figures:
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f"<h2 id='{name}'>{html.escape(caption)}</h2>"
            f"<img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
        )
    parts.append("<h2>Convergence</h2>")
    parts.append(_html_table(CONVERGENCE_HEADER, convergence_rows(analysis)))
    parts.append(f"<h2>Fits ({_level(analysis)} bootstrap intervals in brackets)</h2>")
    parts.append(_html_table(FIT_HEADER, fits_table_rows(analysis)))
    unpinned = unidentified_lines(analysis)
    if unpinned:
        parts.append(
            "<p>Not identified (the runs cannot pin them):</p><ul>"
            + "".join(f"<li>{html.escape(line)}</li>" for line in unpinned)
            + "</ul>"
        )
    parts.append("<h2>Which law predicts held-out runs best</h2>")
    parts.append(_html_table(LAW_HEADER, law_choice_rows(analysis)))
    parts.append(
        f"<h2>{html.escape(CRIT_TITLE)}</h2>" + _list_html(critical_prediction_lines(analysis))
    )
    parts.append(_html_table(CRIT_HEADER, critical_rows(analysis)))
    if analysis.get("flagged"):
        rows = [
            [
                f["method"],
                f["rung"],
                str(f["examples"]),
                _n(f["method_size"]),
                _n(f["tokens_seen"]),
                "; ".join(f["reasons"]),
            ]
            for f in analysis["flagged"]
        ]
        parts.append(
            "<h2>Flagged runs</h2>"
            + _html_table(["method", "rung", "D_f", "size", "tokens", "why"], rows)
        )
    if analysis.get("notes"):
        parts.append(
            "<h2>Notes</h2><ul>"
            + "".join(f"<li>{html.escape(n)}</li>" for n in analysis["notes"])
            + "</ul>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def _findings_html(analysis: dict) -> str:
    """The findings as an ordered list, each verdict coloured, with its deciding intervals."""
    items = []
    for f in analysis["findings"]:
        cls = {"reproduced": "reproduced", "not reproduced": "not", "inconclusive": "inconclusive"}
        cls = cls.get(f["status"], "untestable")
        items.append(
            f"<li><b>{html.escape(f['claim'])}</b>: <span class='{cls}'>"
            f"{html.escape(f['status'])}</span>. {html.escape(f['detail'])}</li>"
        )
    title = "<h2>Findings of Zhang et al. (ICLR 2024) on this study</h2>"
    return title + "<ol>" + "".join(items) + "</ol>"


def write_report(analysis: dict, out_dir: str | Path, title: str) -> dict[str, Path]:
    """Write the HTML report, the Markdown summary and the fits JSON into ``out_dir``."""
    from ftscale.report.study_figures import draw_all

    out_dir = Path(out_dir)
    figures = draw_all(analysis)
    paths = {k: out_dir / v for k, v in REPORT_FILES.items()}
    write_json_atomic(paths["fits"], json.loads(json.dumps(analysis, default=_json_default)))
    write_text_atomic(paths["markdown"], markdown(analysis, title))
    write_text_atomic(paths["html"], html_report(analysis, figures, title))
    return paths


def _json_default(value):
    import numpy as np

    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(f"not JSON: {type(value).__name__}")
