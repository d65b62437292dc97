"""Robust fitting of scaling laws: summed Huber loss, a full grid of starts, L-BFGS.

The procedure is the one of Hoffmann et al. (2022) and of the study (REFERENCE.md): the objective is
the *sum* (not the mean, which makes L-BFGS stop early) of Huber losses with delta = 1e-3 of the
residuals, minimised by L-BFGS from every start of a grid, keeping the best. Two things make it
fast:

1. The whole grid is evaluated at once, vectorised, and L-BFGS is run only from the ``n_refine``
   most promising starts. ``tests/laws/test_fit.py`` shows this finds the same optimum as running
   L-BFGS from every start; ``benchmarks/bench_fit.py`` shows it on the 4,500-start Chinchilla grid.
2. The built-in forms are log-sum-exps of terms linear in the parameters, so each objective and
   its exact gradient cost a few matrix products.

Residuals are taken in ``space="log"`` (log prediction - log observation; the default) or
``space="linear"`` (prediction - observation). Log is the default because it weighs every point by
its relative error, so runs of very different loss (small and large models) count alike, the
Huber delta means the same thing (0.1 %) on every task, and it is the convention of the Chinchilla
fits that the fitter is checked against. Held-out errors (Delta_e, Delta_h) are always reported in
linear space, in nats, as the study did.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.optimize import minimize
from scipy.special import huber
from threadpoolctl import threadpool_limits

from ftscale.errors import DataError, UserError
from ftscale.laws.forms import LawForm, get_form

Space = Literal["log", "linear"]
SPACES = ("log", "linear")


class FitWarning(UserWarning):
    """A fit finished but should not be trusted as it is (e.g. L-BFGS did not converge)."""


# ------------------------------------------------------------------------------------------------
# Data checks
# ------------------------------------------------------------------------------------------------


def as_sizes(form: LawForm, X) -> np.ndarray:
    """Coerce ``X`` to a float array of shape (n, len(form.variables))."""
    sizes = np.asarray(X, dtype=float)
    if sizes.ndim == 1 and len(form.variables) == 1:
        sizes = sizes[:, None]
    if sizes.ndim != 2 or sizes.shape[1] != len(form.variables):
        raise UserError(
            f"form {form.name!r} takes {len(form.variables)} size variable(s) "
            f"({', '.join(form.variables)}), got an array of shape {sizes.shape}"
        )
    return sizes


def check_runs(
    form: LawForm,
    X,
    y,
    *,
    n_free: int | None = None,
    names: Sequence[str] | None = None,
    rows: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate runs for fitting ``form`` and return them as float arrays (sizes, losses).

    Raises :class:`~ftscale.errors.DataError` (one line) for: lengths that differ, NaN or infinite
    losses or sizes, non-positive sizes or losses, fewer points than free parameters, a size
    variable with one distinct value, and losses that are all equal (nothing to fit).

    Args:
        form: the law form.
        X: sizes (raw counts), shape (n, n_variables), or (n,) for one-variable forms.
        y: losses in nats per token, shape (n,).
        n_free: free parameters (default: all of the form's).
        names: labels for the size variables in messages (e.g. table column names).
        rows: the row number shown in messages for each run (default: its position counted
            from 1); a table passes the file's row numbers.
    """
    sizes = as_sizes(form, X)
    losses = np.asarray(y, dtype=float).reshape(-1)
    labels = list(names) if names is not None else list(form.variables)
    shown = np.arange(1, losses.size + 1) if rows is None else np.asarray(rows)
    if sizes.shape[0] != losses.shape[0]:
        raise DataError(f"{sizes.shape[0]} sizes but {losses.shape[0]} losses")
    _check_values(sizes, losses, labels, shown)
    _check_fittable(form, sizes, losses, labels, n_free)
    return sizes, losses


def _check_values(sizes: np.ndarray, losses: np.ndarray, labels: list[str], shown) -> None:
    """Every loss and size finite and positive (``shown``: the row number of each run)."""
    bad = ~np.isfinite(losses)
    if bad.any():
        raise DataError(
            f"{int(bad.sum())} loss value(s) are NaN or infinite "
            f"(first at row {shown[int(np.argmax(bad))]})"
        )
    if (losses <= 0).any():
        row = int(np.argmax(losses <= 0))
        raise DataError(f"losses must be positive, got {losses[row]:g} at row {shown[row]}")
    for j, label in enumerate(labels):
        column = sizes[:, j]
        if not np.isfinite(column).all():
            raise DataError(f"size {label!r} has NaN or infinite values")
        if (column <= 0).any():
            row = int(np.argmax(column <= 0))
            raise DataError(
                f"size {label!r} must be positive, got {column[row]:g} at row {shown[row]}"
            )


def _check_fittable(
    form: LawForm, sizes: np.ndarray, losses: np.ndarray, labels: list[str], n_free: int | None
) -> None:
    """Enough points for the free parameters, two distinct values per size, a trend in losses."""
    n_params = len(form.params) if n_free is None else n_free
    if losses.shape[0] < n_params:
        raise DataError(
            f"{losses.shape[0]} point(s) cannot determine the {n_params} free parameters "
            f"of the {form.name!r} law"
        )
    for j, label in enumerate(labels):
        if np.unique(sizes[:, j]).size < 2:
            raise DataError(
                f"size {label!r} has a single distinct value ({sizes[0, j]:g}); "
                "its exponent cannot be fitted"
            )
    if np.ptp(losses) == 0:
        raise DataError(
            f"all {losses.size} losses are equal ({losses[0]:g}); there is no trend to fit"
        )


# ------------------------------------------------------------------------------------------------
# The objective: summed Huber over blocks of runs that share a parameter vector
# ------------------------------------------------------------------------------------------------


@dataclass
class Block:
    """Runs predicted by one form from a slice of the full parameter vector.

    ``index[j]`` is the position in the full vector of the form's j-th parameter, so blocks that
    share a parameter (a joint fit) point at the same position.
    """

    form: LawForm
    sizes: np.ndarray  # (n, n_variables), raw counts
    losses: np.ndarray  # (n,)
    index: np.ndarray  # (n_params,) int
    log_sizes: np.ndarray = field(init=False)
    log_losses: np.ndarray = field(init=False)
    design: np.ndarray | None = field(init=False)

    def __post_init__(self) -> None:
        self.log_sizes = np.log(self.sizes)
        self.log_losses = np.log(self.losses)
        self.design = self.form.design(self.log_sizes)


class HuberObjective:
    """Sum over blocks and runs of ``huber(delta, residual)``, as a function of the free parameters.

    The full parameter vector has ``n_full`` entries; those in ``fixed`` are held at their values
    and the rest (in order) are the free vector the optimiser sees.
    """

    def __init__(
        self,
        blocks: Sequence[Block],
        n_full: int,
        *,
        space: Space = "log",
        delta: float = 1e-3,
        fixed: Mapping[int, float] | None = None,
    ) -> None:
        if space not in SPACES:
            raise UserError(f"space must be one of {', '.join(SPACES)}, got {space!r}")
        if not delta > 0:
            raise UserError(f"Huber delta must be positive, got {delta!r}")
        self.blocks = list(blocks)
        self.space = space
        self.delta = float(delta)
        self.n_full = n_full
        self.fixed = dict(fixed or {})
        self.free = np.array([i for i in range(n_full) if i not in self.fixed], dtype=int)
        self._template = np.zeros(n_full)
        for i, v in self.fixed.items():
            self._template[i] = v

    @property
    def n_free(self) -> int:
        """Number of parameters the optimiser searches over."""
        return self.free.size

    def expand(self, z: np.ndarray) -> np.ndarray:
        """Free vector(s) (..., n_free) -> full vector(s) (..., n_full)."""
        full = np.broadcast_to(self._template, (*z.shape[:-1], self.n_full)).copy()
        full[..., self.free] = z
        return full

    def _residuals(self, block: Block, lp: np.ndarray) -> np.ndarray:
        if self.space == "log":
            return lp - block.log_losses
        return np.exp(lp) - block.losses

    def values(self, Z: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """Objective at many free vectors at once: (G, n_free) -> (G,); ``inf`` where undefined."""
        out = np.empty(Z.shape[0])
        for lo in range(0, Z.shape[0], chunk):
            full = self.expand(Z[lo : lo + chunk])
            total = np.zeros(full.shape[0])
            with np.errstate(all="ignore"):
                for block in self.blocks:
                    lp = block.form.log_predict(full[:, block.index], block.log_sizes, block.design)
                    total += huber(self.delta, self._residuals(block, lp)).sum(axis=1)
            out[lo : lo + chunk] = np.where(np.isfinite(total), total, np.inf)
        return out

    def value_and_grad(self, z: np.ndarray) -> tuple[float, np.ndarray]:
        """Objective and its gradient at one free vector (what L-BFGS calls)."""
        full = self.expand(z)
        value = 0.0
        grad = np.zeros(self.n_full)
        with np.errstate(all="ignore"):
            for block in self.blocks:
                lp, jac = block.form.log_predict_jac(
                    full[block.index], block.log_sizes, block.design
                )
                r = self._residuals(block, lp)
                value += float(huber(self.delta, r).sum())
                dr = np.clip(r, -self.delta, self.delta)  # d huber / d r
                if self.space == "linear":
                    dr = dr * np.exp(lp)  # d r / d lp
                # A form's parameters sit at distinct positions, so += scatters exactly.
                grad[block.index] += np.einsum("n,np->p", dr, jac)
        if not np.isfinite(value) or not np.all(np.isfinite(grad)):
            return np.inf, np.zeros(self.n_free)
        return value, grad[self.free]


# ------------------------------------------------------------------------------------------------
# Multi-start L-BFGS
# ------------------------------------------------------------------------------------------------

#: L-BFGS-B options for the final polish. The objective is small (about 1e-3 for Chinchilla) and
#: scipy's ftol test is absolute below 1, so ftol is set far below the default to let the gradient
#: test decide.
LBFGS_OPTIONS = {"maxiter": 5000, "maxfun": 20000, "ftol": 1e-15, "gtol": 1e-11, "maxcor": 20}

#: Options for the first pass over many starts: enough to tell basins apart, not to polish them.
SCREEN_OPTIONS = {"maxiter": 400, "maxfun": 800, "ftol": 1e-10, "gtol": 1e-8, "maxcor": 20}

#: Best first-pass results polished with :data:`LBFGS_OPTIONS`.
N_POLISH = 3


@dataclass
class MultiStartResult:
    """Outcome of a multi-start minimisation.

    Attributes:
        x: best free vector found.
        fun: objective at ``x``.
        converged: whether L-BFGS stopped on its convergence tests (not on its iteration limit).
        message: L-BFGS's message for the best run.
        n_starts: grid starts evaluated.
        n_refined: starts refined by L-BFGS.
    """

    x: np.ndarray
    fun: float
    converged: bool
    message: str
    n_starts: int
    n_refined: int


def lbfgs(objective: HuberObjective, start: np.ndarray, options: Mapping | None = None):
    """One L-BFGS-B run (scipy) from ``start``; returns scipy's ``OptimizeResult``.

    BLAS is held to one thread: scipy's L-BFGS-B calls it on vectors of a handful of parameters,
    where threads only add overhead, and under other load (a sweep training beside the fit) they
    made fits 5-10x slower. The limit costs ~0.3 ms per run.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return minimize(
            objective.value_and_grad,
            np.asarray(start, float),
            jac=True,
            method="L-BFGS-B",
            options={**LBFGS_OPTIONS, **(options or {})},
        )


def _converged(result) -> bool:
    # status 1: iteration or evaluation limit. status 2 (line search cannot improve) at these
    # tolerances means the optimum is reached to machine precision, which is convergence.
    return bool(np.isfinite(result.fun)) and result.status != 1


def multistart(
    objective: HuberObjective,
    starts: np.ndarray,
    *,
    n_refine: int | None = 64,
    extra_starts: np.ndarray | None = None,
    options: Mapping | None = None,
) -> MultiStartResult:
    """Minimise ``objective`` from a grid: evaluate every start, refine the best ``n_refine``.

    Args:
        objective: the summed Huber objective.
        starts: grid starts, shape (G, n_free).
        n_refine: how many of the best starts L-BFGS refines; ``None`` refines all of them.
        extra_starts: starts always refined (e.g. a previous optimum in a bootstrap).
        options: overrides of :data:`LBFGS_OPTIONS`.
    """
    starts = np.atleast_2d(np.asarray(starts, float))
    values = objective.values(starts)
    order = np.argsort(values, kind="stable")
    order = order[np.isfinite(values[order])]
    if order.size == 0 and extra_starts is None:
        raise DataError("the law is undefined (NaN or non-positive) at every start of the grid")
    chosen = order if n_refine is None else order[: max(1, n_refine)]
    candidates = [starts[i] for i in chosen]
    if extra_starts is not None:
        candidates = [*np.atleast_2d(extra_starts), *candidates]
    # Pass 1: every chosen start, ordinary tolerances. Pass 2: polish the best few tightly. The
    # tight tolerances are what the fit needs at the optimum, but spent from every start they
    # mostly buy slow crawls along flat directions (E -> 0) of starts that end up worse anyway.
    # With no more candidates than get polished (a bootstrap refit), screening is wasted work.
    if len(candidates) <= N_POLISH:
        polished = [lbfgs(objective, start, options) for start in candidates]
    else:
        screen = {**SCREEN_OPTIONS, **(options or {})}
        screened = [lbfgs(objective, start, screen) for start in candidates]
        order = np.argsort([r.fun for r in screened], kind="stable")[:N_POLISH]
        polished = [lbfgs(objective, screened[i].x, options) for i in order]
    best = min(polished, key=lambda r: r.fun)
    if not np.isfinite(best.fun):
        raise DataError("no start led to a finite fit; the law cannot describe these runs")
    return MultiStartResult(
        x=np.asarray(best.x),
        fun=float(best.fun),
        converged=_converged(best),
        message=str(best.message),
        n_starts=int(starts.shape[0]),
        n_refined=len(candidates),
    )


# ------------------------------------------------------------------------------------------------
# Estimators
# ------------------------------------------------------------------------------------------------


class ScalingLaw:
    """A scaling law fitted to runs, in the style of a scikit-learn estimator.

    Example (sizes in parameters and examples, losses in nats per token)::

        law = ScalingLaw("multiplicative").fit(np.column_stack([n_params, n_examples]), test_nll)
        law.params_          # {"A": ..., "alpha": ..., "beta": ..., "E": ...}
        law.predict([[1e9, 1e6]])

    Args:
        form: a registered form name or a :class:`~ftscale.laws.forms.LawForm`.
        space: residuals in ``"log"`` (default) or ``"linear"`` space; see the module docstring.
        delta: Huber delta (default 1e-3, the study's).
        fixed: parameters held at given values, by reported or search name
            (e.g. ``{"beta": 0.15, "E": 0.75}``); the rest are fitted.
        n_refine: starts refined by L-BFGS after the vectorised grid pass (``None``: all).
        grid: replacement grid axes by search name (e.g. ``{"e": [0.0, 0.5]}``).

    Fitted attributes: ``params_`` (reported names), ``theta_`` (search space, full),
    ``objective_``, ``converged_``, ``message_``, ``n_fit_``, ``n_starts_``, ``n_refined_``.
    """

    def __init__(
        self,
        form: str | LawForm = "multiplicative",
        *,
        space: Space = "log",
        delta: float = 1e-3,
        fixed: Mapping[str, float] | None = None,
        n_refine: int | None = 64,
        grid: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        self.form = form
        self.space = space
        self.delta = delta
        self.fixed = dict(fixed or {})
        self.n_refine = n_refine
        self.grid = dict(grid or {})

    # The resolved form, with any grid override applied.
    @property
    def form_(self) -> LawForm:
        """The :class:`LawForm` this law uses (grid overrides applied)."""
        form = get_form(self.form)
        if self.grid:
            unknown = [k for k in self.grid if k not in form.params]
            if unknown:
                raise UserError(f"grid names unknown parameter(s) {unknown} of form {form.name!r}")
            form = LawForm(**{**form.__dict__, "grid": {**form.grid, **self.grid}})
        return form

    def _fixed_positions(self, form: LawForm) -> dict[int, float]:
        fixed = {}
        for name, value in self.fixed.items():
            search = form.search_name(name)
            if search in form.log_params and not value > 0:
                raise UserError(f"fixed {name} must be positive, got {value!r}")
            fixed[form.params.index(search)] = float(
                np.log(value) if search in form.log_params else value
            )
        return fixed

    def objective(
        self, X, y, *, names: Sequence[str] | None = None, rows: Sequence[int] | None = None
    ) -> HuberObjective:
        """The Huber objective this law minimises on runs (X, y), after validating them."""
        form = self.form_
        fixed = self._fixed_positions(form)
        n_free = len(form.params) - len(fixed)
        sizes, losses = check_runs(form, X, y, n_free=n_free, names=names, rows=rows)
        block = Block(form, sizes, losses, np.arange(len(form.params)))
        return HuberObjective(
            [block], len(form.params), space=self.space, delta=self.delta, fixed=fixed
        )

    def fit(
        self,
        X,
        y,
        *,
        names: Sequence[str] | None = None,
        extra_starts: np.ndarray | None = None,
        rows: Sequence[int] | None = None,
    ) -> ScalingLaw:
        """Fit the law to runs and return ``self``.

        Args:
            X: sizes as raw counts, shape (n, n_variables) in the order of ``form.variables``
                (e.g. parameters then examples), or (n,) for one-variable forms.
            y: losses, nats per token, shape (n,).
            names: labels for the size variables in error messages.
            extra_starts: full search-space vectors refined in addition to the grid's best.
            rows: row numbers for error messages (see :func:`check_runs`).
        """
        objective = self.objective(X, y, names=names, rows=rows)
        form = self.form_
        starts = np.unique(form.starts(np.asarray(y, float))[:, objective.free], axis=0)
        extra = None if extra_starts is None else np.atleast_2d(extra_starts)[:, objective.free]
        result = multistart(objective, starts, n_refine=self.n_refine, extra_starts=extra)
        self._set_result(objective, result)
        return self

    def _set_result(self, objective: HuberObjective, result: MultiStartResult) -> None:
        form = self.form_
        self.theta_ = objective.expand(result.x)
        self.params_ = form.to_reported(self.theta_)
        self.objective_ = result.fun
        self.converged_ = result.converged
        self.message_ = result.message
        self.n_fit_ = int(sum(b.losses.size for b in objective.blocks))
        self.n_starts_ = result.n_starts
        self.n_refined_ = result.n_refined
        if not result.converged:
            warnings.warn(
                f"{form.name} fit did not converge ({result.message}); "
                "treat its parameters with care",
                FitWarning,
                stacklevel=3,
            )

    def _check_fitted(self) -> None:
        if not hasattr(self, "theta_"):
            raise UserError("this law is not fitted yet; call fit() first")

    def predict(self, X) -> np.ndarray:
        """Predicted loss (nats per token) at sizes ``X`` (raw counts, as in :meth:`fit`)."""
        self._check_fitted()
        form = self.form_
        return form.predict(self.theta_, as_sizes(form, X))

    @classmethod
    def from_params(cls, form: str | LawForm, params: Mapping[str, float], **kwargs) -> ScalingLaw:
        """A law with known parameters (reported names), e.g. from a paper or a saved fit."""
        law = cls(form, **kwargs)
        return law._given(law.form_.from_reported(params))

    @classmethod
    def from_theta(cls, form: str | LawForm, theta, **kwargs) -> ScalingLaw:
        """A law with a known search-space vector, e.g. a bootstrap replicate's: exact, where the
        reported values may not be (a replicate's E = exp(-2e7) reports as 0)."""
        law = cls(form, **kwargs)
        theta = np.asarray(theta, float).copy()
        if theta.shape != (len(law.form_.params),):
            raise UserError(
                f"form {law.form_.name!r} takes {len(law.form_.params)} parameters, got "
                f"{theta.size}"
            )
        return law._given(theta)

    def _given(self, theta: np.ndarray) -> ScalingLaw:
        """Set a given (not fitted) parameter vector; returns ``self``."""
        self.theta_ = theta
        with np.errstate(over="ignore"):  # a scale beyond float range reports as inf
            self.params_ = self.form_.to_reported(theta)
        self.objective_ = float("nan")
        self.converged_ = True
        self.message_ = "given"
        self.n_fit_ = 0
        return self

    def __repr__(self) -> str:
        name = self.form if isinstance(self.form, str) else self.form.name
        if hasattr(self, "params_"):
            shown = ", ".join(f"{k}={v:.4g}" for k, v in self.params_.items())
            return f"ScalingLaw({name!r}, {shown})"
        return f"ScalingLaw({name!r}, unfitted)"


class JointScalingLaw:
    """Several groups of runs fitted together with some parameters shared: the study's Eq. 2.

    The study fits the model-size sweep and the pretraining-data sweep jointly with beta and E
    shared and A, alpha per factor; then it holds beta and E fixed and refits the rest per factor.
    ``fit`` does both steps. Every group starts from the same grid point (starts are tied across
    groups), which keeps the grid the size of the form's instead of growing with the groups.

    Args:
        form: the law form, shared by every group.
        shared: parameters (reported or search names) with one value for all groups.
        space, delta, n_refine: as for :class:`ScalingLaw`.

    Fitted attributes: ``shared_`` (reported name -> value), ``joint_`` (group -> parameters of
    the joint fit), ``laws_`` (group -> :class:`ScalingLaw` refitted with the shared ones fixed),
    ``objective_``, ``converged_``.
    """

    def __init__(
        self,
        form: str | LawForm = "multiplicative",
        *,
        shared: Sequence[str] = ("beta", "E"),
        space: Space = "log",
        delta: float = 1e-3,
        n_refine: int | None = 64,
    ) -> None:
        self.form = form
        self.shared = tuple(shared)
        self.space = space
        self.delta = delta
        self.n_refine = n_refine

    def objective(self, groups: Mapping[str, tuple]) -> HuberObjective:
        """The joint Huber objective on ``{group: (X, y)}``, after validating the runs. Its full
        vector holds the shared parameters first, then each group's own parameters in turn;
        ``objective.blocks[g].index`` maps group g's form parameters into it."""
        form = get_form(self.form)
        if len(groups) < 2:
            raise UserError(f"a joint fit needs at least two groups, got {len(groups)}")
        shared = [form.params.index(form.search_name(s)) for s in self.shared]
        own = [j for j in range(len(form.params)) if j not in shared]
        blocks = []
        for g, (X, y) in enumerate(groups.values()):
            sizes, losses = check_runs(form, X, y, n_free=len(own))
            index = np.empty(len(form.params), dtype=int)
            index[shared] = np.arange(len(shared))
            index[own] = len(shared) + g * len(own) + np.arange(len(own))
            blocks.append(Block(form, sizes, losses, index))
        n_full = len(shared) + len(groups) * len(own)
        return HuberObjective(blocks, n_full, space=self.space, delta=self.delta)

    def starts(self, objective: HuberObjective) -> np.ndarray:
        """The form's grid, tied across groups, as full vectors of ``objective``."""
        form = get_form(self.form)
        grid = form.starts(np.concatenate([b.losses for b in objective.blocks]))
        starts = np.empty((grid.shape[0], objective.n_full))
        for block in objective.blocks:
            starts[:, block.index] = grid
        return np.unique(starts, axis=0)

    def fit(self, groups: Mapping[str, tuple]) -> JointScalingLaw:
        """Fit ``{group: (X, y)}`` jointly, then refit each group with the shared values fixed.

        Fitted attributes besides those of the class: ``theta_`` (the joint optimum as a full
        vector of :meth:`objective`).
        """
        form = get_form(self.form)
        objective = self.objective(groups)
        blocks = objective.blocks
        shared = [form.params.index(form.search_name(s)) for s in self.shared]
        result = multistart(objective, self.starts(objective), n_refine=self.n_refine)
        self.theta_ = objective.expand(result.x)
        self.objective_ = result.fun
        self.converged_ = result.converged
        self.joint_ = {
            name: form.to_reported(result.x[block.index])
            for name, block in zip(groups, blocks, strict=True)
        }
        first = next(iter(self.joint_.values()))
        self.shared_ = {form.reported[j]: first[form.reported[j]] for j in shared}
        self.laws_ = {
            name: ScalingLaw(
                form, space=self.space, delta=self.delta, fixed=self.shared_, n_refine=self.n_refine
            ).fit(*groups[name])
            for name in groups
        }
        if not result.converged:
            warnings.warn(
                f"joint fit did not converge ({result.message})", FitWarning, stacklevel=2
            )
        return self
