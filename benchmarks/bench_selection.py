"""Benchmark law choice honestly: the selected form, the ensemble and the default prediction
against always using the multiplicative law, leave-largest-out, on three sources of curves.

Cases (every one fitted on the smaller model sizes and judged on the largest, never seen by the
choice):

1. ``synthetic``: curves from each built-in two-variable form (multiplicative, additive,
   prelearned), with log-normal run noise, several seeds; the largest of five model sizes held
   out;
2. ``paper``: where the paper's tables are at hand (Zhang et al., ICLR 2024, "When Scaling Meets
   LLM Finetuning", Table 4: the fitted multiplicative laws per task and method; users of ftscale
   do not have them, so these cases are skipped without them), curves drawn from each model-size
   law with the same noise;
3. ``runs``: real finetuning runs, each method's model-size sweep of a study (a study directory
   or a table exported by ``ftscale study export``; by default the shipped
   ``examples/quickstart-runs.csv``), every run as it is (subset seeds not averaged, so a
   held-out run carries its own noise), held out as the study holds out: the largest model size
   and the largest D_f; the forms are fitted on the rest. Only runs whose dev loss plateaued are
   used, as the study's analysis does.

Per case: Delta_h (mean |predicted - observed| on the held-out runs, nats) of the selected form,
the ensemble, the default prediction (``--prediction auto``: the clear winner, else the ensemble)
and the multiplicative law; the best form in hindsight for reference; and the coverage of the
default's (and the multiplicative law's) prediction interval at nominal 90 % on the held-out runs
(``ftscale fit --bootstrap``: refits on runs resampled with replacement, plus a resampled
residual). The goal of issue 20: the default beats always-multiplicative and covers >= 80 %.
Means and coverage are printed per source and over all cases.

Run: ``python benchmarks/bench_selection.py [--seeds 2] [--replicates 60] [--paper DIR]
[--runs PATH ...] [--sources synthetic,paper,runs] [--forms multiplicative,additive,power]``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from ftscale.laws import fit_table
from ftscale.laws.results import fit_residuals

FORMS = ("multiplicative", "additive", "power")
LEVEL = 0.9
NOISE = 5e-3
TRUTHS = {
    "multiplicative": lambda x, d: 2e3 / (x**0.3 * d**0.2) + 1.2,
    "additive": lambda x, d: 4e2 / x**0.35 + 30.0 / d**0.4 + 1.2,
    "prelearned": lambda x, d: 3e4 / (x**0.3 * (300.0 + d**0.625)) + 1.2,
}
SYNTHETIC_X = np.geomspace(1e7, 1.6e8, 5)
PAPER_X = np.geomspace(1e9, 1.6e10, 5)
D_F = np.geomspace(100, 1e5, 6)
#: Where CI keeps the paper's tables, beside the checkout (see the module docs).
PAPER_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "paper"
#: The shipped runs of a finished quickstart study (examples/README.md).
RUNS = Path(__file__).resolve().parents[1] / "examples" / "quickstart-runs.csv"
SOURCES = ("synthetic", "paper", "runs")


@dataclass(frozen=True)
class Case:
    """One benchmark case: its source, its name, its runs for a seed (columns ``params``,
    ``examples``, ``loss``) and the held-out rule."""

    source: str
    name: str
    runs: Callable[[int], dict[str, np.ndarray]]
    holdout: str = "max:params"


def _drawn(truth, sizes: np.ndarray) -> Callable[[int], dict[str, np.ndarray]]:
    """Runs drawn from ``truth(x, d)`` at ``sizes`` x :data:`D_F` with log-normal noise."""

    def runs(seed: int) -> dict[str, np.ndarray]:
        x, d = (a.ravel() for a in np.meshgrid(sizes, D_F, indexing="ij"))
        loss = truth(x, d) * np.exp(np.random.default_rng(seed).normal(0, NOISE, x.size))
        return {"params": x, "examples": d, "loss": loss}

    return runs


def synthetic_cases(seeds: int) -> list[Case]:
    """Curves from each built-in two-variable form."""
    return [
        Case("synthetic", f"{name}/s{s}", _drawn(fn, SYNTHETIC_X))
        for name, fn in TRUTHS.items()
        for s in range(seeds)
    ]


def paper_cases(paper: Path) -> list[Case]:
    """Curves from the model-size laws of the paper's Table 4 (none without the table)."""
    table = paper / "table4_fitted_params.csv"
    if not table.is_file():
        return []
    import pandas as pd

    rows = pd.read_csv(table)
    out = []
    for _, r in rows[rows["factor"] == "model_size"].iterrows():
        law = (r["A"], r["alpha"], r["beta"], r["E"])

        def truth(x, d, law=law):
            a, alpha, beta, e = law
            return a / (x**alpha * d**beta) + e

        out.append(Case("paper", f"paper {r['task']}/{r['method']}", _drawn(truth, PAPER_X)))
    return out


def run_cases(path: Path) -> list[Case]:
    """Each method's model-size sweep of a study directory or an exported table of its runs
    (ok, converged runs with a test loss), held out as the study holds out."""
    frame = _study_runs(path)
    out = []
    for method, runs in frame.groupby("method", sort=False):
        columns = {
            "params": runs["nonembedding_params"].to_numpy(float),
            "examples": runs["examples"].to_numpy(float),
            "loss": runs["test_nll"].to_numpy(float),
        }
        name = f"{path.stem if path.is_file() else path.name}/{method}"
        out.append(Case("runs", name, lambda seed, c=columns: c, "max:params,max:examples"))
    return out


def _study_runs(path: Path):
    """The model-size sweep's usable runs of a study directory or an exported table."""
    if path.is_dir():
        from ftscale.study.analysis import runs_frame
        from ftscale.study.store import open_store

        with open_store(path) as store:
            frame = runs_frame(store.rows())
    elif path.is_file():
        from ftscale.data.tables import read_table

        frame = read_table(path)
        frame["sweeps"] = [json.loads(s) if isinstance(s, str) else s for s in frame["sweeps"]]
    else:
        raise SystemExit(f"bench_selection: --runs {path}: no such table or study directory")
    ok = (frame["status"] == "ok") & frame["test_nll"].notna()
    ok &= frame["sweeps"].map(lambda s: "model_size" in s)
    if "converged" in frame:  # unknown (None, or NaN in a table) counts as converged
        ok &= frame["converged"].map(lambda c: c is None or c != c or c in (True, 1))
    if not ok.any():
        raise SystemExit(f"bench_selection: --runs {path}: no usable model-size runs")
    return frame[ok]


def run_case(case: Case, seed: int, replicates: int, forms=FORMS) -> dict:
    """One case's held-out errors and the default's coverage (``forms``: the candidates, the
    multiplicative law among them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits = fit_table(
            case.runs(seed),
            y="loss",
            d="examples",
            x="params",
            forms=list(forms),
            holdout=case.holdout,
            n_bootstrap=replicates,
            seed=seed,
        )
    by_form = {r.form: r for r in fits}
    (ensemble,) = fits.ensembles
    selected = next(r for r in fits if r.selected)
    default = ensemble if ensemble.used == "ensemble" else by_form[ensemble.used]
    return {
        "selected": selected.delta_h,
        "ensemble": ensemble.delta_h,
        "default": default.delta_h,
        "multiplicative": by_form["multiplicative"].delta_h,
        "hindsight": min(r.delta_h for r in fits),
        "picked": selected.form,
        "used": ensemble.used,
        "coverage": _coverage(default),
        "coverage_mult": _coverage(by_form["multiplicative"]),
    }


def _coverage(result) -> tuple[int, int]:
    """(held-out runs inside the nominal-90 % interval, held-out runs)."""
    held = result.heldout
    sizes, observed = result.sizes[held], result.observed[held]
    if hasattr(result, "members"):
        low, high = result.predict_interval(sizes, LEVEL)
    else:
        residuals = fit_residuals(result)
        low, high = result.bootstrap.predict_interval(sizes, LEVEL, residuals=residuals)
    return int(((low <= observed) & (observed <= high)).sum()), int(held.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=2, help="synthetic seeds per form")
    parser.add_argument("--replicates", type=int, default=60, help="bootstrap replicates")
    parser.add_argument("--paper", type=Path, default=PAPER_DIR, help="the paper's tables")
    parser.add_argument(
        "--runs", type=Path, nargs="*", default=[RUNS], help="study directories or exported runs"
    )
    parser.add_argument(
        "--sources", default=",".join(SOURCES), help="comma-separated: synthetic, paper, runs"
    )
    parser.add_argument("--forms", default=",".join(FORMS), help="candidate forms, comma-separated")
    parser.add_argument("--limit", type=int, default=0, help="at most this many cases (0: all)")
    args = parser.parse_args()
    forms = [f.strip() for f in args.forms.split(",") if f.strip()]
    if "multiplicative" not in forms or len(forms) < 2:
        raise SystemExit("bench_selection: --forms needs multiplicative and at least one rival")
    todo = _cases(args)
    todo = todo[: args.limit] if args.limit else todo
    rows = []
    start = time.perf_counter()
    with threadpool_limits(1):
        for i, case in enumerate(todo):
            rows.append((case, run_case(case, i, args.replicates, forms)))
            _print_row(*rows[-1])
    print(f"\n{len(rows)} cases in {time.perf_counter() - start:.0f} s; forms {', '.join(forms)}")
    for source in SOURCES:
        _summary([r for r in rows if r[0].source == source], source)
    if len({case.source for case, _ in rows}) > 1:
        _summary(rows, "all cases")


def _cases(args) -> list[Case]:
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise SystemExit(f"bench_selection: --sources: unknown {unknown} (known: {SOURCES})")
    out = []
    if "synthetic" in sources:
        out += synthetic_cases(args.seeds)
    if "paper" in sources:
        out += paper_cases(args.paper)
    if "runs" in sources:
        out += [case for path in args.runs for case in run_cases(path)]
    return out


def _print_row(case: Case, r: dict) -> None:
    inside, n = r["coverage"]
    print(
        f"{case.name:<28} sel {r['selected']:.4f} ({r['picked']:<14}) ens {r['ensemble']:.4f} "
        f"default {r['default']:.4f} ({r['used']:<14}) mult {r['multiplicative']:.4f} "
        f"hindsight {r['hindsight']:.4f} cover {inside}/{n}",
        flush=True,
    )


def _summary(rows: list[tuple[Case, dict]], label: str) -> None:
    if not rows:
        return
    print(f"\n{label}: {len(rows)} cases; mean held-out error Delta_h (nats):")
    mult = np.mean([r["multiplicative"] for _, r in rows])
    for key in ("selected", "ensemble", "default", "multiplicative", "hindsight"):
        mean = np.mean([r[key] for _, r in rows])
        worse = sum(r[key] > 1.4 * r["multiplicative"] for _, r in rows)
        print(
            f"  {key:<15} {mean:.4f}  ratio to always-multiplicative {mean / mult:.3f}  "
            f"cases 40 % worse than multiplicative: {worse}"
        )
    for key, name in (("coverage", "default"), ("coverage_mult", "multiplicative")):
        inside = sum(r[key][0] for _, r in rows)
        total = sum(r[key][1] for _, r in rows)
        print(f"  coverage at nominal {LEVEL:.0%}, {name}: {inside}/{total} = {inside / total:.1%}")


if __name__ == "__main__":
    main()
