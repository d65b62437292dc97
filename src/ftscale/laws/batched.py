"""Many refits of one design at once: the replicates of a parametric bootstrap.

Every replicate of a parametric bootstrap refits the same sizes with other losses. scipy's
minimisers solve one problem per call, and at a study's size (12-40 points, 4-6 parameters) the
Python overhead of a call and of its ~40 objective evaluations is nearly all of the cost (~10 ms a
refit). Here the replicates are solved together: Levenberg-Marquardt on the Huber objective, its
Gauss-Newton matrix weighted as in iteratively reweighted least squares (weight 1 inside the Huber
delta, delta / |r| outside, Holland and Welsch 1977), every array carrying the replicates as its
first axis. It minimises the objective :class:`~ftscale.laws.fit.HuberObjective` defines; a
replicate it does not bring to a stationary point is left to scipy's L-BFGS-B by the caller.

Only exp-linear forms (those with ``terms``, every built-in form) have the closed-form Jacobian
this needs; laws of other forms are refitted one at a time.
"""

from __future__ import annotations

import numpy as np
from scipy.special import huber

from ftscale.laws.fit import HuberObjective
from ftscale.laws.forms import _softmax_lse

#: Most Levenberg-Marquardt iterations.
MAX_ITER = 300
#: A replicate has converged when a successful step gains less than this share of its objective
#: (L-BFGS-B's ``ftol`` test in the refits, :data:`ftscale.laws.uncertainty.REFIT_OPTIONS`). The
#: gradient is no test here: at the Huber kinks (residuals crossing delta) Gauss-Newton steps
#: shrink before the gradient does, with the objective already settled to 1e-12.
RTOL = 1e-12


def batchable(objective: HuberObjective) -> bool:
    """Whether :func:`refit_many` can refit this objective's law (exp-linear forms only)."""
    return all(block.form.terms is not None for block in objective.blocks)


def _evaluate(objective: HuberObjective, z: np.ndarray, losses: np.ndarray):
    """Objective (B,), residuals (B, n) and their Jacobian (B, n, n_free) at free vectors z."""
    full = objective.expand(z)
    residuals, jacobians, lo = [], [], 0
    for block in objective.blocks:
        hi = lo + block.losses.size
        t = np.einsum("knp,bp->bkn", block.design, full[:, block.index])
        lp, weights = _softmax_lse(t, axis=1)
        jac = np.zeros((z.shape[0], hi - lo, objective.n_full))
        jac[:, :, block.index] = np.einsum("bkn,knp->bnp", weights, block.design)
        if objective.space == "log":
            residuals.append(lp - np.log(losses[:, lo:hi]))
        else:
            predicted = np.exp(lp)
            residuals.append(predicted - losses[:, lo:hi])
            jac *= predicted[:, :, None]
        jacobians.append(jac[:, :, objective.free])
        lo = hi
    r = np.concatenate(residuals, axis=1)
    value = huber(objective.delta, r).sum(axis=1)
    return np.where(np.isfinite(value), value, np.inf), r, np.concatenate(jacobians, axis=1)


def best_starts(objective: HuberObjective, candidates: np.ndarray, losses: np.ndarray):
    """Per replicate, the candidate (full vectors, (C, n_full)) with the lowest objective on its
    losses (B, n): (B, n_full)."""
    scores = np.zeros((losses.shape[0], candidates.shape[0]))
    lo = 0
    with np.errstate(all="ignore"):
        for block in objective.blocks:
            hi = lo + block.losses.size
            lp = block.form.log_predict(candidates[:, block.index], block.log_sizes, block.design)
            if objective.space == "log":
                r = lp[None] - np.log(losses[:, None, lo:hi])
            else:
                r = np.exp(lp)[None] - losses[:, None, lo:hi]
            scores += huber(objective.delta, r).sum(axis=2)
            lo = hi
    scores = np.where(np.isfinite(scores), scores, np.inf)
    return candidates[np.argmin(scores, axis=1)]


def refit_many(objective: HuberObjective, losses: np.ndarray, starts: np.ndarray):
    """Minimise ``objective``'s Huber loss for each row of ``losses`` (B, n: the blocks' runs in
    order) from ``starts`` (B, n_full). Returns full vectors (B, n_full), NaN where a replicate
    has no finite objective, and whether each converged (:data:`RTOL`; the others stopped when
    no damped step improved or at :data:`MAX_ITER`)."""
    z = starts[:, objective.free].copy()
    with np.errstate(all="ignore"):
        f, r, jac = _evaluate(objective, z, losses)
        damping = np.full(z.shape[0], 1e-3)
        active = np.isfinite(f)
        converged = np.zeros_like(active)
        for _ in range(MAX_ITER):
            if not active.any():
                break
            step = _step(objective.delta, r[active], jac[active], damping[active])
            f_new, r_new, jac_new = _evaluate(objective, z[active] + step, losses[active])
            better = f_new < f[active]
            rows = np.flatnonzero(active)
            won = rows[better]
            gain = f[won] - f_new[better]
            z[won] += step[better]
            f[won], r[won], jac[won] = f_new[better], r_new[better], jac_new[better]
            damping[won] /= 3.0
            damping[rows[~better]] *= 4.0
            converged[won] = gain <= RTOL * f[won]
            active &= ~converged & (damping < 1e12)
    full = objective.expand(z)
    full[~np.isfinite(f)] = np.nan
    return full, converged


def _step(delta: float, r: np.ndarray, jac: np.ndarray, damping: np.ndarray) -> np.ndarray:
    """Damped Gauss-Newton steps (B, p) of the IRLS-weighted Huber problem."""
    weight = np.where(np.abs(r) <= delta, 1.0, delta / np.maximum(np.abs(r), delta))
    gradient = np.einsum("bn,bnp->bp", np.clip(r, -delta, delta), jac)
    hessian = np.einsum("bn,bnp,bnq->bpq", weight, jac, jac)
    scale = np.einsum("bpp->bp", hessian)
    scale = scale + 1e-9 * scale.max(axis=1, keepdims=True) + 1e-12
    system = hessian + damping[:, None, None] * np.einsum("bp,pq->bpq", scale, np.eye(jac.shape[2]))
    try:
        return -np.linalg.solve(system, gradient[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:  # a parameter the runs do not move (a zero column): least norm
        return -np.einsum("bpq,bq->bp", np.linalg.pinv(system), gradient)
