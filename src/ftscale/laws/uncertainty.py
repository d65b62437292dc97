"""Uncertainty by bootstrap over runs: refit on resampled runs, read intervals off the refits.

Each replicate draws n runs with replacement from the n observed ones (seeded per replicate, so the
result does not depend on how many processes share the work) and refits the law. A refit starts
from the full-data optimum and from the best start of the form's grid on the resample, which keeps
1,000 refits within seconds while still letting a replicate leave the full-data basin.

Replicates run in worker processes (``fork``), one per core by default.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_all_start_methods, get_context

import numpy as np

from ftscale.common import usable_cores
from ftscale.errors import DataError, UserError
from ftscale.laws.critical import D_RANGE, crossings
from ftscale.laws.fit import ScalingLaw, _converged, as_sizes, lbfgs

#: Central interval level used when none is given.
LEVEL = 0.95


@dataclass
class Bootstrap:
    """Refits of one law on resampled runs.

    Attributes:
        law: the law fitted on all runs.
        thetas: search-space parameters of each replicate, shape (n_boot, n_params); rows of NaN
            for replicates whose resample could not be fitted (e.g. one distinct size).
        seed: the seed the replicates were drawn from.
        converged: per replicate, whether its refit met L-BFGS's tests (None when not recorded).
    """

    law: ScalingLaw
    thetas: np.ndarray
    seed: int
    converged: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_unconverged(self) -> int:
        """Fitted replicates whose refit stopped at its iteration limit."""
        if self.converged is None:
            return 0
        return int((~self.converged & np.isfinite(self.thetas).all(axis=1)).sum())

    @property
    def n_failed(self) -> int:
        """Replicates that could not be fitted."""
        return int(np.isnan(self.thetas).any(axis=1).sum())

    def samples(self) -> dict[str, np.ndarray]:
        """Reported parameters of every replicate: ``{name: array (n_boot,)}``."""
        form = self.law.form_
        return {
            form.log_params.get(p, p): np.exp(col) if p in form.log_params else col
            for p, col in zip(form.params, self.thetas.T, strict=True)
        }

    def intervals(self, level: float = LEVEL) -> dict[str, tuple[float, float]]:
        """Percentile interval of each reported parameter at ``level`` (e.g. 0.95)."""
        return {name: _interval(values, level) for name, values in self.samples().items()}

    def laws(self) -> list[ScalingLaw]:
        """One :class:`ScalingLaw` per fitted replicate."""
        form = self.law.form_
        return [
            ScalingLaw.from_params(form, form.to_reported(theta), space=self.law.space)
            for theta in self.thetas
            if np.isfinite(theta).all()
        ]

    def predict(self, X) -> np.ndarray:
        """Predictions of every fitted replicate at sizes ``X``: shape (n_fitted, n)."""
        form = self.law.form_
        sizes = np.log(as_sizes(form, X))
        ok = self.thetas[np.isfinite(self.thetas).all(axis=1)]
        return np.exp(form.log_predict(ok, sizes))

    def predict_interval(
        self, X, level: float = LEVEL, *, residuals: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise percentile interval (low, high) of the loss at sizes ``X``.

        Without ``residuals`` this is a confidence interval of the law's curve (the spread of the
        refits). With the full fit's residuals on its runs (in the fit's space) it is a
        *prediction* interval for a new run: each replicate's prediction gets one residual drawn
        from them, inflated by sqrt(n / (n - p)) for the parameters fitted (Davison and Hinkley
        1997, section 6.3), so the interval covers the run-to-run noise as well.
        """
        _interval(np.zeros(1), level)  # validates the level
        draws = self.predict(X)
        if residuals is not None and residuals.size and draws.size:
            r = np.asarray(residuals, float)
            r = (r - r.mean()) * np.sqrt(r.size / max(1, r.size - len(self.law.theta_)))
            picks = np.random.default_rng([self.seed, 1 << 30]).choice(r, size=draws.shape)
            draws = draws * np.exp(picks) if self.law.space == "log" else draws + picks
        tail = (1 - level) / 2 * 100
        return np.percentile(draws, tail, axis=0), np.percentile(draws, 100 - tail, axis=0)


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise UserError(f"interval level must be in (0, 1), got {level!r}")
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (float("nan"), float("nan"))
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


#: Most replicates one bootstrap may ask for: 100,000 refits take about an hour on 2 cores, and
#: percentile intervals at 95 % stop changing long before (their Monte-Carlo error at 10,000
#: replicates is already below 0.5 % of the interval's width).
MAX_REPLICATES = 100_000

#: Grid starts carried into every refit: the best of the form's grid on all runs. Re-scanning the
#: whole grid (up to 5,760 starts) for each replicate cost more than the refit itself.
N_CARRIED_STARTS = 16

#: L-BFGS options of a refit. A replicate needs its optimum to the precision of the interval, not
#: to machine precision; the fit's own tolerances let a degenerate refit (E -> 0) crawl for the
#: full 5,000 iterations, which made ``fit --bootstrap`` 5-10x slower than the benchmark.
REFIT_OPTIONS = {"maxiter": 1000, "maxfun": 2000, "ftol": 1e-12, "gtol": 1e-9, "maxcor": 20}


@dataclass
class _Task:
    """One law to bootstrap: its fitted law, runs, and the starts every refit tries."""

    law: ScalingLaw
    sizes: np.ndarray
    losses: np.ndarray
    starts: np.ndarray  # (k, n_params) full search-space vectors


# The tasks the worker processes run; set in the parent before the pool forks so that laws built on
# user functions (lambdas, closures, expressions) need no pickling.
_TASKS: list[_Task] = []


def _refit(task: _Task, rows: np.ndarray) -> tuple[np.ndarray, bool]:
    """Refit ``task`` on the runs ``rows``; (theta, converged), theta all-NaN if it cannot fit.

    One L-BFGS run, from whichever of the full-data optimum and the carried grid starts scores
    best on the resample: a second run from the runner-up changed no interval in our tests and
    doubled the time.
    """
    law = task.law
    try:
        objective = law.objective(task.sizes[rows], task.losses[rows])
        candidates = np.vstack([law.theta_[None], task.starts])[:, objective.free]
        scores = objective.values(candidates)
        if not np.isfinite(scores).any():
            return np.full(law.theta_.shape, np.nan), False
        result = lbfgs(objective, candidates[int(np.argmin(scores))], REFIT_OPTIONS)
    except DataError:
        return np.full(law.theta_.shape, np.nan), False
    if not np.isfinite(result.fun):
        return np.full(law.theta_.shape, np.nan), False
    return objective.expand(np.asarray(result.x)), _converged(result)


def _chunk(task_index: int, indices: Sequence[int], seed: int):
    """Replicates ``indices`` of task ``task_index``: (task, indices, thetas, converged)."""
    task = _TASKS[task_index]
    thetas, converged = [], []
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for i in indices:
            rng = np.random.default_rng([seed, int(i)])
            theta, ok = _refit(task, rng.integers(0, task.losses.size, task.losses.size))
            thetas.append(theta)
            converged.append(ok)
    return task_index, list(indices), np.array(thetas), np.array(converged)


def default_jobs() -> int:
    """Worker processes used by default: one per core available to this process."""
    return usable_cores()


def check_replicates(n: int, seed: int) -> None:
    """Refuse a replicate count or seed that cannot work, naming the option."""
    if not 1 <= n <= MAX_REPLICATES:
        raise UserError(f"--bootstrap must be between 1 and {MAX_REPLICATES:,}, got {n}")
    if seed < 0:
        raise UserError(f"--seed must be 0 or more, got {seed}")


def _task(law: ScalingLaw, X, y) -> _Task:
    law._check_fitted()
    form = law.form_
    sizes = as_sizes(form, X)
    losses = np.asarray(y, float)
    grid = form.starts(losses)
    fixed = law._fixed_positions(form)
    for j, value in fixed.items():
        grid[:, j] = value
    objective = law.objective(sizes, losses)
    scores = objective.values(grid[:, objective.free])
    keep = np.argsort(scores, kind="stable")[:N_CARRIED_STARTS]
    return _Task(law, sizes, losses, grid[keep])


def bootstrap_many(
    items: Sequence[tuple[ScalingLaw, object, object]],
    n: int = 1000,
    *,
    seed: int = 0,
    n_jobs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Bootstrap]:
    """Bootstrap several fitted laws at once, in one pool of worker processes.

    Args:
        items: ``(law, X, y)`` per law: a fitted law and the runs it was fitted on.
        n: replicates per law.
        seed: replicate i of every law resamples with the seed pair (seed, i), so the result is a
            function of the seed alone (not of ``n_jobs`` or of the other laws).
        n_jobs: worker processes (default: one per core; 1 runs in this process).
        progress: called as ``progress(done, total)`` with replicates finished so far.
    """
    global _TASKS
    check_replicates(n, seed)
    tasks = [_task(law, X, y) for law, X, y in items]
    total = n * len(tasks)
    size = max(1, min(50, n // (4 * max(1, n_jobs or default_jobs()))))
    chunks = [
        (t, range(lo, min(n, lo + size))) for t in range(len(tasks)) for lo in range(0, n, size)
    ]
    thetas = [np.empty((n, len(task.law.theta_))) for task in tasks]
    converged = [np.empty(n, bool) for _ in tasks]
    _TASKS = tasks
    try:
        for t, indices, values, ok in _run_chunks(chunks, seed, n_jobs, total, progress):
            thetas[t][indices], converged[t][indices] = values, ok
    finally:
        _TASKS = []
    return [
        Bootstrap(law=task.law, thetas=thetas[t], seed=seed, converged=converged[t])
        for t, task in enumerate(tasks)
    ]


def _run_chunks(chunks, seed, n_jobs, total, progress):
    """Yield finished chunks, in this process or in a pool of forked workers."""
    jobs = max(1, min(n_jobs or default_jobs(), len(chunks)))
    done = 0
    if jobs == 1 or "fork" not in get_all_start_methods():
        finished = (_chunk(t, indices, seed) for t, indices in chunks)
        for item in finished:
            done += len(item[1])
            if progress:
                progress(done, total)
            yield item
        return
    with ProcessPoolExecutor(jobs, mp_context=get_context("fork")) as pool:
        futures = [pool.submit(_chunk, t, list(indices), seed) for t, indices in chunks]
        for future in as_completed(futures):
            item = future.result()
            done += len(item[1])
            if progress:
                progress(done, total)
            yield item


def bootstrap(
    law: ScalingLaw,
    X,
    y,
    n: int = 1000,
    *,
    seed: int = 0,
    n_jobs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Bootstrap:
    """Refit a fitted ``law`` on ``n`` resamples of its runs (X, y) and return the replicates.

    Args:
        law: a fitted :class:`ScalingLaw`.
        X: sizes (raw counts) of the runs the law was fitted on.
        y: losses, nats per token.
        n: number of replicates (at most :data:`MAX_REPLICATES`).
        seed: the result is a function of the seed alone (not of ``n_jobs``); 0 or more.
        n_jobs: worker processes (default: one per core; 1 runs in this process).
        progress: called as ``progress(done, total)``.
    """
    return bootstrap_many([(law, X, y)], n, seed=seed, n_jobs=n_jobs, progress=progress)[0]


def crossing_samples(
    first: Bootstrap,
    second: Bootstrap,
    x: float | None = None,
    d_range: tuple[float, float] = D_RANGE,
) -> np.ndarray:
    """First crossing (D_f, examples) of replicate pairs; NaN where a pair does not cross.

    Replicate i of ``first`` is paired with replicate i of ``second`` (they are independent
    resamples of different runs, so any pairing is a valid draw).
    """
    out = []
    for law1, law2 in zip(first.laws(), second.laws(), strict=False):
        found = crossings(law1, law2, x, d_range, n_grid=256)
        out.append(found[0] if found else np.nan)
    return np.asarray(out)


def crossing_interval(
    first: Bootstrap,
    second: Bootstrap,
    x: float | None = None,
    d_range: tuple[float, float] = D_RANGE,
    level: float = LEVEL,
) -> tuple[float, float]:
    """Percentile interval of the first crossing over replicate pairs (NaN if none cross)."""
    return _interval(crossing_samples(first, second, x, d_range), level)
