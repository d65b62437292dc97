"""Benchmark law choice honestly: the selected form, the ensemble and the default prediction
against always using the multiplicative law, on curves whose truth is known, leave-largest-out.

Cases (every one fitted on the smaller model sizes and judged on the largest, never seen by the
choice):

1. synthetic curves from each built-in two-variable form (multiplicative, additive, prelearned),
   with log-normal run noise, several seeds;
2. where the paper's tables are at hand (Zhang et al., ICLR 2024, "When Scaling Meets LLM
   Finetuning", Table 4: the fitted multiplicative laws per task and method; users of ftscale
   do not have them, so these cases are skipped without them), curves drawn from each model-size
   law with the same noise.

Per case: Delta_h (mean |predicted - observed| on the held-out runs, nats) of the selected form,
the ensemble, the default prediction (``--prediction auto``: the clear winner, else the ensemble)
and the multiplicative law; the best form in hindsight for reference; and the coverage of the
default's prediction interval at nominal 90 % on the held-out runs (bootstrap over runs). The
goal of issue 20: the default beats always-multiplicative and covers >= 80 %.

Run: ``python benchmarks/bench_selection.py [--seeds 2] [--replicates 60] [--paper DIR]``.
"""

from __future__ import annotations

import argparse
import time
import warnings
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


def cases(seeds: int, paper: Path) -> list[tuple[str, object, np.ndarray]]:
    """(name, truth(x, d), model sizes) of every case."""
    out = [(f"{name}/s{s}", fn, SYNTHETIC_X) for name, fn in TRUTHS.items() for s in range(seeds)]
    table = paper / "table4_fitted_params.csv"
    if table.is_file():
        import pandas as pd

        rows = pd.read_csv(table)
        for _, r in rows[rows["factor"] == "model_size"].iterrows():
            law = (r["A"], r["alpha"], r["beta"], r["E"])

            def truth(x, d, law=law):
                a, alpha, beta, e = law
                return a / (x**alpha * d**beta) + e

            out.append((f"paper {r['task']}/{r['method']}", truth, PAPER_X))
    return out


def run_case(truth, sizes: np.ndarray, seed: int, replicates: int) -> dict:
    """One case's held-out errors and the default's coverage."""
    x, d = (a.ravel() for a in np.meshgrid(sizes, D_F, indexing="ij"))
    loss = truth(x, d) * np.exp(np.random.default_rng(seed).normal(0, NOISE, x.size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits = fit_table(
            {"params": x, "examples": d, "loss": loss},
            y="loss",
            d="examples",
            x="params",
            forms=list(FORMS),
            holdout="max:params",
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
    parser.add_argument("--limit", type=int, default=0, help="at most this many cases (0: all)")
    args = parser.parse_args()
    rows = []
    start = time.perf_counter()
    todo = cases(args.seeds, args.paper)
    todo = todo[: args.limit] if args.limit else todo
    with threadpool_limits(1):
        for i, (name, truth, sizes) in enumerate(todo):
            rows.append((name, run_case(truth, sizes, i, args.replicates)))
            _print_row(*rows[-1])
    _summary(rows, time.perf_counter() - start)


def _print_row(name: str, r: dict) -> None:
    inside, n = r["coverage"]
    print(
        f"{name:<28} sel {r['selected']:.4f} ({r['picked']:<14}) ens {r['ensemble']:.4f} "
        f"default {r['default']:.4f} ({r['used']:<14}) mult {r['multiplicative']:.4f} "
        f"hindsight {r['hindsight']:.4f} cover {inside}/{n}",
        flush=True,
    )


def _summary(rows: list[tuple[str, dict]], seconds: float) -> None:
    print(f"\n{len(rows)} cases in {seconds:.0f} s; mean held-out error Delta_h (nats):")
    mult = np.mean([r["multiplicative"] for _, r in rows])
    for key in ("selected", "ensemble", "default", "multiplicative", "hindsight"):
        mean = np.mean([r[key] for _, r in rows])
        worse = sum(r[key] > 1.4 * r["multiplicative"] for _, r in rows)
        print(
            f"  {key:<15} {mean:.4f}  ratio to always-multiplicative {mean / mult:.3f}  "
            f"cases 40 % worse than multiplicative: {worse}"
        )
    for key, label in (("coverage", "default"), ("coverage_mult", "multiplicative")):
        inside = sum(r[key][0] for _, r in rows)
        total = sum(r[key][1] for _, r in rows)
        print(
            f"  coverage at nominal {LEVEL:.0%}, {label}: {inside}/{total} = {inside / total:.1%}"
        )


if __name__ == "__main__":
    main()
