"""Benchmark the fitter against a naive multi-start loop, and time the bootstrap.

1. The 4,500-start Chinchilla fit (additive law, log space, Huber delta 1e-3) by ftscale, against
   the loop a notebook would write: ``scipy.optimize.minimize(method="L-BFGS-B")`` from every start,
   on a plain numpy objective with scipy's default numeric gradient and tolerances (as in Epoch AI's
   replication). The full loop takes over ten minutes on 2 cores, so by default it runs from a
   seeded random sample of starts and its time is scaled to 4,500; the sample's best objective is
   printed as it is (the sample may miss the best basin, which only flatters the baseline).
   Both sides run with BLAS held to one thread, so the ratio measures the method, not threading.
2. 1,000 bootstrap refits of a multiplicative law on 50 runs, on every core.
3. The command's path, ``fit_table`` with a bootstrap (``ftscale fit --bootstrap N``) on the
   shipped pilot table, 2 forms x 3 methods, against the refit it used before (every replicate
   re-scanned the form's whole grid and polished two L-BFGS runs at the fit's tight tolerances,
   in one process pool per law), measured on the same laws and resamples in this run.

Run: ``python benchmarks/bench_fit.py [--sample 300] [--replicates 1000] [--skip-chinchilla]``.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import huber, logsumexp
from threadpoolctl import threadpool_limits

from ftscale.errors import DataError
from ftscale.laws import ScalingLaw, bootstrap, fit_table
from ftscale.laws.uncertainty import default_jobs

PILOT = Path(__file__).resolve().parent.parent / "examples" / "pilot-en-de.csv"

FIXTURE = (
    Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "chinchilla_svg_extracted.csv"
)
GRID = {
    "a": [0, 5, 10, 15, 20, 25],
    "b": [0, 5, 10, 15, 20, 25],
    "e": [-1, -0.5, 0, 0.5, 1],
    "alpha": [0, 0.5, 1, 1.5, 2],
    "beta": [0, 0.5, 1, 1.5, 2],
}


def chinchilla():
    frame = pd.read_csv(FIXTURE)
    frame["tokens"] = frame["Training FLOP"] / (6 * frame["Model Size"])
    frame = frame.sort_values("loss").iloc[:-5]
    return frame[["Model Size", "tokens"]].to_numpy(), frame["loss"].to_numpy()


def naive_loop(sizes, losses, starts):
    """What a hand-written notebook does: minimize() from each start, numeric gradient."""
    log_n, log_d, log_l = np.log(sizes[:, 0]), np.log(sizes[:, 1]), np.log(losses)

    def objective(p):
        a, b, e, alpha, beta = p
        pred = logsumexp([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)], axis=0)
        return huber(1e-3, pred - log_l).sum()

    best = None
    for start in starts:
        result = minimize(objective, start, method="L-BFGS-B")
        if best is None or result.fun < best.fun:
            best = result
    return best


def old_refit(law, sizes, losses, seed, i):
    """The refit ``fit --bootstrap`` used before: the full grid and two tight L-BFGS runs."""
    rows = np.random.default_rng([seed, i]).integers(0, losses.size, losses.size)
    refit = ScalingLaw(law.form_, space=law.space, n_refine=1)
    with contextlib.suppress(DataError):
        refit.fit(sizes[rows], losses[rows], extra_starts=law.theta_)


def command_path(replicates: int) -> None:
    """fit_table --bootstrap on the pilot (2 forms x 3 methods) against the old refit."""
    import warnings

    frame = pd.read_csv(PILOT)
    columns = {c: frame[c].to_numpy() for c in frame.columns}
    kwargs = dict(y="test_nll", d="examples", x="nonembedding_params", group="method")
    forms = ["multiplicative", "additive"]
    t0 = time.perf_counter()
    fits = fit_table(columns, forms=forms, n_bootstrap=replicates, **kwargs)
    t_new = time.perf_counter() - t0 - _fit_time(columns, forms, kwargs)
    n_old = max(20, replicates // 10)  # the old path is slow: time a sample, scale it
    t0 = time.perf_counter()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for r in fits:
            for i in range(n_old):
                old_refit(r.law, r.sizes[~r.heldout], r.observed[~r.heldout], 0, i)
    # The old path ran one process per core too; scale its one-process time by the cores.
    t_old = (time.perf_counter() - t0) * replicates / n_old / default_jobs()
    print(
        f"Command path: fit --bootstrap {replicates} on {PILOT.name}, 2 forms x 3 methods "
        f"({len(fits) * replicates} refits): {t_new:.2f} s now vs {t_old:.2f} s by the old refit "
        f"(scaled from {n_old} per law); speed-up {t_old / t_new:.1f}x"
    )


def _fit_time(columns, forms, kwargs) -> float:
    t0 = time.perf_counter()
    fit_table(columns, forms=forms, **kwargs)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=300, help="starts timed in the naive loop")
    parser.add_argument("--replicates", type=int, default=1000, help="bootstrap refits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-chinchilla", action="store_true", help="only the bootstraps")
    args = parser.parse_args()
    if not args.skip_chinchilla:
        chinchilla_part(args)
    bootstrap_part(args)
    command_path(args.replicates)


def chinchilla_part(args) -> None:
    sizes, losses = chinchilla()
    starts = np.array(np.meshgrid(*GRID.values(), indexing="ij")).reshape(5, -1).T  # a b e al be
    print(f"Chinchilla: {len(losses)} runs, {len(starts)} starts (additive, log space, delta 1e-3)")

    t0 = time.perf_counter()
    law = ScalingLaw("additive").fit(sizes, losses)
    t_ours = time.perf_counter() - t0
    print(
        f"  ftscale: {t_ours:8.2f} s  objective {law.objective_:.8f}  "
        f"({law.n_starts_} starts evaluated, {law.n_refined_} refined)"
    )

    sample = np.random.default_rng(args.seed).choice(len(starts), args.sample, replace=False)
    with threadpool_limits(limits=1, user_api="blas"):
        t0 = time.perf_counter()
        best = naive_loop(sizes, losses, starts[sample])
        t_sample = time.perf_counter() - t0
    t_naive = t_sample * len(starts) / args.sample
    print(
        f"  naive loop: {t_sample:6.2f} s for {args.sample} sampled starts -> "
        f"{t_naive:8.2f} s scaled to {len(starts)}; best objective {best.fun:.8f}"
    )
    print(
        f"  speed-up: {t_naive / t_ours:.1f}x (target >= 20x); objective ftscale - naive = "
        f"{law.objective_ - best.fun:+.3e} (target <= 0)"
    )
    print("  ftscale fit: " + ", ".join(f"{k}={v:.4f}" for k, v in law.params_.items()))


def bootstrap_part(args) -> None:
    rng = np.random.default_rng(1)
    x = np.repeat([1e9, 2e9, 4e9, 8e9, 16e9], 10)
    d = np.tile(np.geomspace(1e5, 4.5e6, 10), 5)
    y = (1.2e5 / (x**0.52 * d**0.15) + 0.75) * np.exp(rng.normal(0, 3e-3, x.size))
    small = ScalingLaw("multiplicative").fit(np.column_stack([x, d]), y)
    t0 = time.perf_counter()
    replicates = bootstrap(small, np.column_stack([x, d]), y, args.replicates, seed=0)
    t_boot = time.perf_counter() - t0
    print(
        f"Bootstrap: {args.replicates} refits of a multiplicative law on 50 runs, "
        f"{default_jobs()} processes: {t_boot:.2f} s (target <= 30 s); "
        f"{replicates.n_failed} failed; beta 95% interval "
        f"[{replicates.intervals()['beta'][0]:.4f}, {replicates.intervals()['beta'][1]:.4f}]"
    )


if __name__ == "__main__":
    main()
