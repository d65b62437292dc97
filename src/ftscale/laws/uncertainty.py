"""Uncertainty by bootstrap over runs: refit on resampled runs, read intervals off the refits.

Each replicate draws n runs with replacement from the n observed ones (seeded per replicate, so the
result does not depend on how many processes share the work) and refits the law. A refit starts
from the full-data optimum and from the best start of the form's grid on the resample, which keeps
1,000 refits within seconds while still letting a replicate leave the full-data basin.

Replicates run in worker processes (``fork``), one per core by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_all_start_methods, get_context

import numpy as np

from ftscale.common import usable_cores
from ftscale.errors import DataError, UserError
from ftscale.laws.critical import D_RANGE, crossings
from ftscale.laws.fit import ScalingLaw, as_sizes

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
    """

    law: ScalingLaw
    thetas: np.ndarray
    seed: int

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

    def predict_interval(self, X, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise percentile interval (low, high) of the predicted loss at sizes ``X``."""
        draws = self.predict(X)
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


# The job a worker process runs; set in the parent before the pool forks so that laws built on
# user functions (lambdas, closures) need no pickling.
_JOB: tuple | None = None


def _replicate(i: int) -> np.ndarray:
    law, sizes, losses, seed = _JOB
    rng = np.random.default_rng([seed, i])
    rows = rng.integers(0, losses.size, losses.size)
    refit = ScalingLaw(law.form_, space=law.space, delta=law.delta, fixed=law.fixed, n_refine=1)
    try:
        refit.fit(sizes[rows], losses[rows], extra_starts=law.theta_)
    except DataError:
        return np.full(law.theta_.shape, np.nan)
    return refit.theta_


def _replicates(indices: Sequence[int]) -> np.ndarray:
    return np.array([_replicate(i) for i in indices])


def default_jobs() -> int:
    """Worker processes used by default: one per core available to this process."""
    return usable_cores()


def bootstrap(
    law: ScalingLaw,
    X,
    y,
    n: int = 1000,
    *,
    seed: int = 0,
    n_jobs: int | None = None,
) -> Bootstrap:
    """Refit a fitted ``law`` on ``n`` resamples of its runs (X, y) and return the replicates.

    Args:
        law: a fitted :class:`ScalingLaw`.
        X: sizes (raw counts) of the runs the law was fitted on.
        y: losses, nats per token.
        n: number of replicates.
        seed: the result is a function of the seed alone (not of ``n_jobs``).
        n_jobs: worker processes (default: one per core; 1 runs in this process).
    """
    global _JOB
    law._check_fitted()
    if n < 1:
        raise UserError(f"bootstrap needs at least one replicate, got {n}")
    sizes = as_sizes(law.form_, X)
    losses = np.asarray(y, float)
    jobs = max(1, min(n_jobs or default_jobs(), n))
    _JOB = (law, sizes, losses, seed)
    try:
        if jobs == 1 or "fork" not in get_all_start_methods():
            thetas = _replicates(range(n))
        else:
            chunks = np.array_split(np.arange(n), jobs * 4)
            with ProcessPoolExecutor(jobs, mp_context=get_context("fork")) as pool:
                thetas = np.concatenate(list(pool.map(_replicates, chunks)))
    finally:
        _JOB = None
    return Bootstrap(law=law, thetas=thetas, seed=seed)


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
