"""Uncertainty by bootstrap over runs: refit on resampled runs, read intervals off the refits.

Each replicate draws n runs with replacement from the n observed ones (seeded per replicate, so the
result does not depend on how many processes share the work) and refits the law. A refit starts
from the full-data optimum and from the best start of the form's grid on the resample, which keeps
1,000 refits within seconds while still letting a replicate leave the full-data basin.

Replicates run in worker processes (``fork``), one per core by default.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_all_start_methods, get_context

import numpy as np

from ftscale.common import usable_cores
from ftscale.errors import DataError, UserError
from ftscale.laws.critical import D_RANGE, crossings
from ftscale.laws.fit import (
    HuberObjective,
    JointScalingLaw,
    ScalingLaw,
    _converged,
    as_sizes,
    lbfgs,
)

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
        """Reported parameters of every replicate: ``{name: array (n_boot,)}``. A replicate
        whose log-searched scale left float range (an A of exp(800) where the runs do not pin
        A) reports it as inf: such a parameter is reported as not identified."""
        form = self.law.form_
        with np.errstate(over="ignore"):
            return {
                form.log_params.get(p, p): np.exp(col) if p in form.log_params else col
                for p, col in zip(form.params, self.thetas.T, strict=True)
            }

    def intervals(self, level: float = LEVEL) -> dict[str, tuple[float, float]]:
        """Percentile interval of each reported parameter at ``level`` (e.g. 0.95)."""
        return {name: percentile_interval(values, level) for name, values in self.samples().items()}

    def laws(self) -> list[ScalingLaw]:
        """One :class:`ScalingLaw` per fitted replicate, built from its search-space vector
        (through the reported values, a replicate whose E collapsed below exp(-745) would come
        back with E = 0 exactly, log E = -inf and NaN predictions)."""
        form = self.law.form_
        return [
            ScalingLaw.from_theta(form, theta, space=self.law.space)
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
        *prediction* interval for a new run (see :meth:`predictive_draws`).
        """
        check_level(level)
        draws = self.predictive_draws(X, residuals=residuals)
        tail = (1 - level) / 2 * 100
        return np.percentile(draws, tail, axis=0), np.percentile(draws, 100 - tail, axis=0)

    def predictive_draws(self, X, *, residuals: np.ndarray | None = None) -> np.ndarray:
        """Draws of the loss at sizes ``X``, shape (n_fitted, n): each fitted replicate's
        prediction, and with the full fit's ``residuals`` (in its space) one residual drawn from
        them per draw, inflated by sqrt(n / (n - p)) for the parameters fitted (Davison and
        Hinkley 1997, section 6.3), so that the draws carry the run-to-run noise as well."""
        draws = self.predict(X)
        if residuals is not None and residuals.size and draws.size:
            r = np.asarray(residuals, float)
            r = (r - r.mean()) * np.sqrt(r.size / max(1, r.size - len(self.law.theta_)))
            picks = np.random.default_rng([self.seed, 1 << 30]).choice(r, size=draws.shape)
            draws = draws * np.exp(picks) if self.law.space == "log" else draws + picks
        return draws


def percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """Central percentile interval of the finite ``values`` at ``level``; (NaN, NaN) if none."""
    check_level(level)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (float("nan"), float("nan"))
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def check_level(level: float) -> None:
    """A one-line :class:`UserError` unless ``level`` lies in (0, 1)."""
    if not 0 < level < 1:
        raise UserError(f"interval level must be in (0, 1), got {level!r}")


def recentred_interval(
    values: np.ndarray, estimate: float, level: float, *, floor: float | None = None
) -> tuple[float, float]:
    """Percentile interval of replicate ``values`` shifted by their median bias (median -
    ``estimate``): the same width, its median on the estimate; ends below ``floor`` are raised
    to it. (NaN, NaN) without finite values.

    For a held-out error (a mean absolute error of predictions) the replicates are biased
    upward: each replicate's law adds its own deviation to the one the estimate already carries,
    and |.| turns deviations of either sign into error, so the plain percentile interval can lie
    wholly above its estimate (the quickstart's prompt Delta_h 0.0185 came out as [0.0187,
    0.0892]). Efron's bias-corrected percentile interval corrects the same bias through the
    share of replicates below the estimate; at this bias (often under 5 % of them) both its ends
    move to the lowest replicates and the interval collapses. In the coverage simulation of
    ``tests/laws/test_coverage.py`` (the quickstart's design, 200 studies) nominal-90 % intervals
    of Delta_h covered the expected held-out error of such a study 63 % of the time when
    bias-corrected that way, 96 % as plain percentiles (which missed their own estimate in 7 %
    of the studies) and 96.5 % re-centred, which always held its estimate.
    """
    values = np.asarray(values, float)
    low, high = percentile_interval(values, level)
    finite = values[np.isfinite(values)]
    if not finite.size:
        return low, high
    shift = float(np.median(finite)) - float(estimate)
    low, high = low - shift, high - shift
    if floor is not None:
        low, high = max(low, floor), max(high, floor)
    return low, high


#: Most replicates one bootstrap may ask for: 100,000 refits take about an hour on 2 cores, and
#: percentile intervals at 95 % stop changing long before (their Monte-Carlo error at 10,000
#: replicates is already below 0.5 % of the interval's width).
MAX_REPLICATES = 100_000

#: Grid starts carried into every refit: the best of the form's grid on all runs. Re-scanning the
#: whole grid (up to 5,760 starts) for each replicate cost more than the refit itself.
N_CARRIED_STARTS = 16

#: Parametric replicates refitted together in one batch (:mod:`ftscale.laws.batched`).
PARAMETRIC_CHUNK = 50

#: L-BFGS options of a refit. A replicate needs its optimum to the precision of the interval, not
#: to machine precision; the fit's own tolerances let a degenerate refit (E -> 0) crawl for the
#: full 5,000 iterations, which made ``fit --bootstrap`` 5-10x slower than the benchmark.
REFIT_OPTIONS = {"maxiter": 1000, "maxfun": 2000, "ftol": 1e-12, "gtol": 1e-9, "maxcor": 20}


@dataclass
class _Task:
    """One law (or joint fit) to bootstrap: how to build its objective on runs, the full-data
    optimum and the starts every refit tries, and the runs with what a replicate draws from them.

    ``noise`` is None for resampling runs with replacement; otherwise a replicate is parametric:
    ``centre + noise * z`` with z standard normal per run (the fitted curve plus the measured
    run-to-run noise, nats), refitted at the same sizes.
    """

    build: Callable[[np.ndarray, np.ndarray], HuberObjective]
    theta: np.ndarray  # full search-space vector of the full-data optimum
    sizes: np.ndarray
    losses: np.ndarray
    starts: np.ndarray  # (k, n_full) full search-space vectors
    centre: np.ndarray | None = None
    noise: np.ndarray | None = None

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The runs of one replicate: (sizes, losses)."""
        if self.noise is None:
            rows = rng.integers(0, self.losses.size, self.losses.size)
            return self.sizes[rows], self.losses[rows]
        return self.sizes, self.centre + self.noise * rng.standard_normal(self.losses.size)


# The tasks the worker processes run; set in the parent before the pool forks so that laws built on
# user functions (lambdas, closures, expressions) need no pickling.
_TASKS: list[_Task] = []


def _refit(task: _Task, sizes: np.ndarray, losses: np.ndarray) -> tuple[np.ndarray, bool]:
    """Refit ``task`` on runs (sizes, losses); (theta, converged), theta all-NaN if it cannot fit.

    One L-BFGS run, from whichever of the full-data optimum and the carried grid starts scores
    best on the replicate: a second run from the runner-up changed no interval in our tests and
    doubled the time.
    """
    failed = np.full(task.theta.shape, np.nan), False
    try:
        objective = task.build(sizes, losses)
        candidates = np.vstack([task.theta[None], task.starts])[:, objective.free]
        scores = objective.values(candidates)
        if not np.isfinite(scores).any():
            return failed
        result = lbfgs(objective, candidates[int(np.argmin(scores))], REFIT_OPTIONS)
    except DataError:
        return failed
    if not np.isfinite(result.fun):
        return failed
    return objective.expand(np.asarray(result.x)), _converged(result)


def _chunk(task_index: int, indices: Sequence[int], seed: int):
    """Replicates ``indices`` of task ``task_index``: (task, indices, thetas, converged)."""
    task = _TASKS[task_index]
    draws = [task.draw(np.random.default_rng([seed, int(i)])) for i in indices]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        if task.noise is not None:
            thetas, converged = _refit_together(task, np.array([y for _, y in draws]))
            if thetas is not None:
                return task_index, list(indices), thetas, converged
        outcomes = [_refit(task, sizes, losses) for sizes, losses in draws]
    thetas = np.array([theta for theta, _ in outcomes])
    return task_index, list(indices), thetas, np.array([ok for _, ok in outcomes])


def _refit_together(task: _Task, losses: np.ndarray):
    """Parametric replicates (same sizes, losses (B, n)) refitted as one computation
    (:mod:`ftscale.laws.batched`); those it leaves short of a stationary point are polished by
    L-BFGS-B one at a time. (None, None) for laws it cannot batch."""
    from ftscale.laws import batched

    objective = task.build(task.sizes, task.centre)
    if not batched.batchable(objective):
        return None, None
    candidates = np.vstack([task.theta[None], task.starts])
    starts = batched.best_starts(objective, candidates, losses)
    thetas, converged = batched.refit_many(objective, losses, starts)
    for i in np.flatnonzero(~converged & np.isfinite(thetas).all(axis=1)):
        thetas[i], converged[i] = _polish(task, losses[i], thetas[i])
    return thetas, converged


def _polish(task: _Task, losses: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, bool]:
    """One L-BFGS-B refit of a replicate from ``theta``."""
    try:
        objective = task.build(task.sizes, losses)
    except DataError:
        return np.full(theta.shape, np.nan), False
    result = lbfgs(objective, theta[objective.free], REFIT_OPTIONS)
    if not np.isfinite(result.fun):
        return np.full(theta.shape, np.nan), False
    return objective.expand(np.asarray(result.x)), _converged(result)


def default_jobs() -> int:
    """Worker processes used by default: one per core available to this process."""
    return usable_cores()


def check_replicates(n: int, seed: int) -> None:
    """Refuse a replicate count or seed that cannot work, naming the option."""
    if not 1 <= n <= MAX_REPLICATES:
        raise UserError(f"--bootstrap must be between 1 and {MAX_REPLICATES:,}, got {n}")
    if seed < 0:
        raise UserError(f"--seed must be 0 or more, got {seed}")


def _best_starts(objective: HuberObjective, grid: np.ndarray) -> np.ndarray:
    """The :data:`N_CARRIED_STARTS` best grid vectors on the full-data objective."""
    scores = objective.values(grid[:, objective.free])
    return grid[np.argsort(scores, kind="stable")[:N_CARRIED_STARTS]]


def _task(law: ScalingLaw, X, y, noise=None) -> _Task:
    law._check_fitted()
    form = law.form_
    sizes = as_sizes(form, X)
    losses = np.asarray(y, float)
    grid = form.starts(losses)
    for j, value in law._fixed_positions(form).items():
        grid[:, j] = value
    centre = None if noise is None else law.predict(sizes)
    return _Task(
        build=law.objective,
        theta=law.theta_,
        sizes=sizes,
        losses=losses,
        starts=_best_starts(law.objective(sizes, losses), grid),
        centre=centre,
        noise=None if noise is None else _noise(noise, losses.size),
    )


def parametric_noise(
    residuals: np.ndarray,
    n_params: int,
    seed_sd: float | None = None,
    seeds: np.ndarray | None = None,
) -> np.ndarray:
    """Run-to-run noise (nats per token) of each fitted point, for a parametric bootstrap.

    A point averaged over n_i seeds has noise ``seed_sd / sqrt(n_i)``, with ``seed_sd`` the
    run-to-run standard deviation measured on repeated runs. The fit's residual RMS over
    n - ``n_params`` degrees of freedom is taken instead where it is larger: a law that does not
    follow its points gets the wider intervals it deserves, and runs without repeats (no
    ``seed_sd``) still get intervals.

    Args:
        residuals: observed minus predicted loss at the fitted points (nats).
        n_params: parameters the fit estimated (or all the form's, to be conservative).
        seed_sd: the measured run-to-run standard deviation, None if unmeasured.
        seeds: runs averaged in each point (default one).
    """
    residuals = np.asarray(residuals, float)
    dof = max(1, residuals.size - n_params)
    rms = float(np.sqrt(np.sum(residuals**2) / dof))
    if seed_sd is None:
        return np.full(residuals.size, rms)
    n = np.ones(residuals.size) if seeds is None else np.asarray(seeds, float)
    return np.maximum(seed_sd / np.sqrt(n), rms)


def _noise(noise, n: int) -> np.ndarray:
    """Per-run noise (nats) from a scalar or an array of n; refuses negative or non-finite."""
    values = np.broadcast_to(np.asarray(noise, float), (n,)).copy()
    if not (np.isfinite(values).all() and (values >= 0).all()):
        raise UserError(f"noise must be finite and 0 or more, got {noise!r}")
    return values


def bootstrap_many(
    items: Sequence[tuple],
    n: int = 1000,
    *,
    seed: int = 0,
    n_jobs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Bootstrap]:
    """Bootstrap several fitted laws at once, in one pool of worker processes.

    Args:
        items: ``(law, X, y)`` per law: a fitted law and the runs it was fitted on; or
            ``(law, X, y, noise)`` for a parametric bootstrap with that run-to-run noise (nats per
            token, a scalar or one per run).
        n: replicates per law.
        seed: replicate i of every law resamples with the seed pair (seed, i), so the result is a
            function of the seed alone (not of ``n_jobs`` or of the other laws).
        n_jobs: worker processes (default: one per core; 1 runs in this process).
        progress: called as ``progress(done, total)`` with replicates finished so far.
    """
    check_replicates(n, seed)
    tasks = [_task(*item) for item in items]
    thetas, converged = _run_tasks(tasks, n, seed, n_jobs, progress)
    return [
        Bootstrap(law=item[0], thetas=thetas[t], seed=seed, converged=converged[t])
        for t, item in enumerate(items)
    ]


def _run_tasks(tasks: list[_Task], n: int, seed: int, n_jobs, progress):
    """Every task's n replicates: (thetas per task (n, n_full), converged per task (n,))."""
    global _TASKS
    total = n * len(tasks)
    jobs = max(1, n_jobs or default_jobs())
    chunks = []
    for t, task in enumerate(tasks):
        # Refits one at a time: small chunks balance the workers. Parametric replicates are
        # refitted together, in chunks of a fixed size: a replicate's float operations then do
        # not depend on the number of workers, nor do its digits.
        size = PARAMETRIC_CHUNK if task.noise is not None else max(1, min(50, n // (4 * jobs)))
        chunks += [(t, range(lo, min(n, lo + size))) for lo in range(0, n, size)]
    thetas = [np.empty((n, len(task.theta))) for task in tasks]
    converged = [np.empty(n, bool) for _ in tasks]
    _TASKS = tasks
    try:
        for t, indices, values, ok in _run_chunks(chunks, seed, n_jobs, total, progress):
            thetas[t][indices], converged[t][indices] = values, ok
    finally:
        _TASKS = []
    return thetas, converged


def bootstrap_joint(
    joint: JointScalingLaw,
    groups: Mapping[str, tuple],
    noise: Mapping[str, object],
    n: int = 1000,
    *,
    seed: int = 0,
    n_jobs: int | None = None,
) -> dict[str, Bootstrap]:
    """Parametric bootstrap of a joint fit: every replicate redraws all groups' runs around the
    fitted curves with their noise and refits them jointly, so the shared parameters (beta, E)
    get intervals too and the groups' parameters of one replicate belong together.

    Args:
        joint: a fitted :class:`JointScalingLaw`.
        groups: ``{group: (X, y)}``, the runs it was fitted on.
        noise: per group, the run-to-run noise (nats per token, a scalar or one per run).

    Returns: per group, a :class:`Bootstrap` of its law (``joint.laws_``) whose replicates hold
    every parameter, shared ones included.
    """
    check_replicates(n, seed)
    task = _joint_task(joint, groups, noise)
    (thetas,), (converged,) = _run_tasks([task], n, seed, n_jobs, None)
    return {
        g: Bootstrap(joint.laws_[g], thetas[:, b.index], seed=seed, converged=converged)
        for g, b in zip(groups, joint.objective(groups).blocks, strict=True)
    }


def _joint_task(joint: JointScalingLaw, groups: Mapping[str, tuple], noise) -> _Task:
    """The parametric task of a joint fit: all groups' runs stacked, split back by count."""
    objective = joint.objective(groups)
    pairs = list(zip(groups, objective.blocks, strict=True))
    bounds = np.cumsum([0] + [b.losses.size for _, b in pairs])

    def build(sizes: np.ndarray, losses: np.ndarray) -> HuberObjective:
        cuts = zip(groups, bounds[:-1], bounds[1:], strict=True)
        return joint.objective({g: (sizes[lo:hi], losses[lo:hi]) for g, lo, hi in cuts})

    # Each group's refit with the shared values fixed is at least as good as the joint optimum's
    # own part (the objective is separable given the shared values), and it is what the study
    # reports: the replicates start from it.
    theta = joint.theta_.copy()
    for g, block in pairs:
        theta[block.index] = joint.laws_[g].theta_
    return _Task(
        build=build,
        theta=theta,
        sizes=np.concatenate([b.sizes for _, b in pairs]),
        losses=np.concatenate([b.losses for _, b in pairs]),
        starts=_best_starts(objective, joint.starts(objective)),
        centre=np.concatenate([joint.laws_[g].predict(b.sizes) for g, b in pairs]),
        noise=np.concatenate([_noise(noise[g], b.losses.size) for g, b in pairs]),
    )


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
        # A replicate far from its data (an additive refit with alpha -300) overflows to inf or
        # gives NaN at some D_f: no sign change is read there, as for the point estimate.
        with np.errstate(all="ignore"):
            found = crossings(law1, law2, x, d_range, n_grid=256)
        out.append(found[0] if found else np.nan)
    return np.asarray(out)


def mixture_crossing_samples(
    first: Sequence[tuple[float, Bootstrap]],
    second: Sequence[tuple[float, Bootstrap]],
    x: float | None = None,
    d_range: tuple[float, float] = D_RANGE,
) -> tuple[np.ndarray, np.ndarray, float]:
    """First crossings of two mixtures of replicates (``(weight, Bootstrap)`` pairs, weights
    summing to 1 on each side: one form's replicates, or an ensemble's forms'): every pair of
    parts f, g gives :func:`crossing_samples`, each sample weighing w_f w_g / its count.

    Returns (samples, weights, share): NaN samples where a pair does not cross, and the share
    of the mixture's pairs that cross (the weighted share; for one form on each side, the plain
    share of crossing replicate pairs).
    """
    samples, weights, share, total = [], [], 0.0, 0.0
    for w1, b1 in first:
        for w2, b2 in second:
            found = crossing_samples(b1, b2, x, d_range)
            if found.size:
                samples.append(found)
                weights.append(np.full(found.size, w1 * w2 / found.size))
                share += w1 * w2 * float(np.isfinite(found).mean())
                total += w1 * w2
    if not samples:
        return np.zeros(0), np.zeros(0), float("nan")
    return np.concatenate(samples), np.concatenate(weights), share / total


def weighted_percentile_interval(
    values: np.ndarray, weights: np.ndarray, level: float
) -> tuple[float, float]:
    """Central interval at ``level`` of the finite ``values`` with ``weights``: linear
    interpolation between the weighted order statistics, the value of rank i placed at the
    cumulative weight before it over the total less the last weight (with equal weights this is
    exactly :func:`percentile_interval`); (NaN, NaN) if no value is finite."""
    values, weights = np.asarray(values, float), np.asarray(weights, float)
    ok = np.isfinite(values) & (weights > 0)
    values, weights = values[ok], weights[ok]
    if values.size and np.ptp(weights) == 0:
        return percentile_interval(values, level)
    check_level(level)
    if values.size == 0:
        return (float("nan"), float("nan"))
    order = np.argsort(values, kind="stable")
    values, weights = values[order], weights[order]
    before = np.cumsum(weights) - weights
    span = before[-1] if values.size > 1 else 1.0
    tail = (1 - level) / 2
    low, high = np.interp([tail, 1 - tail], before / span, values)
    return float(low), float(high)


def crossing_interval(
    first: Bootstrap,
    second: Bootstrap,
    x: float | None = None,
    d_range: tuple[float, float] = D_RANGE,
    level: float = LEVEL,
) -> tuple[float, float]:
    """Percentile interval of the first crossing over replicate pairs (NaN if none cross)."""
    return percentile_interval(crossing_samples(first, second, x, d_range), level)
