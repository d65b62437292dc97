"""Critical finetuning-data sizes: where two methods' predicted losses cross.

For methods 1 and 2 at a fixed X (model size, pretraining tokens, PET size) the critical D_f is
where L1(X, D_f) = L2(X, D_f). There may be zero, one or two crossings (with unequal E's a curve
can cross another and cross back), so every crossing inside a D_f range is found by bracketing:
the difference is evaluated on a dense log-spaced grid, each sign change is refined with Brent's
method. When both laws are multiplicative with equal E the crossing has a closed form, itself a
power law in X (the study's Eq. 3):

    D_f^c = H * X^gamma,  H = (A1/A2)^(1/(beta1-beta2)),  gamma = (alpha2-alpha1)/(beta1-beta2)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.optimize import brentq

from ftscale.errors import UserError
from ftscale.laws.fit import ScalingLaw

#: Default D_f range searched for crossings, in examples.
D_RANGE = (1.0, 1e12)
#: Largest |log| of a float64 (about 709.8).
LOG_FLOAT_MAX = math.log(np.finfo(float).max)


def loss_at(law: ScalingLaw, x: float | None, d: np.ndarray) -> np.ndarray:
    """Predicted loss of ``law`` at X = ``x`` (ignored by one-variable laws) and each D_f in
    ``d``."""
    variables = law.form_.variables
    if variables == ("d",):
        return law.predict(d[:, None])
    if variables == ("x", "d"):
        if x is None:
            raise UserError(f"the {law.form_.name!r} law needs a value of X for critical points")
        return law.predict(np.column_stack([np.full_like(d, x), d]))
    raise UserError(f"critical points need laws of (x, d) or (d,), got {variables}")


def crossings(
    law1: ScalingLaw,
    law2: ScalingLaw,
    x: float | None = None,
    d_range: tuple[float, float] = D_RANGE,
    n_grid: int = 2048,
) -> list[float]:
    """Every D_f (examples) in ``d_range`` where the two laws predict the same loss at X = ``x``.

    Returns the crossings in increasing order (often none, one, or two).
    """
    lo, hi = d_range
    if not 0 < lo < hi:
        raise UserError(f"D_f range must satisfy 0 < low < high, got {d_range}")
    grid = np.geomspace(lo, hi, n_grid)
    diff = loss_at(law1, x, grid) - loss_at(law2, x, grid)

    def f(log_d: float) -> float:
        d = np.array([np.exp(log_d)])
        return float((loss_at(law1, x, d) - loss_at(law2, x, d))[0])

    found = []
    for i in np.flatnonzero(np.sign(diff[:-1]) * np.sign(diff[1:]) <= 0):
        if diff[i] == 0:
            found.append(float(grid[i]))
        elif diff[i + 1] != 0:
            found.append(float(np.exp(brentq(f, np.log(grid[i]), np.log(grid[i + 1]), xtol=1e-12))))
    if diff[-1] == 0:
        found.append(float(grid[-1]))
    return sorted(set(found))


def closed_form(
    law1: ScalingLaw, law2: ScalingLaw, rtol: float = 1e-6, *, check_e: bool = True
) -> tuple[float, float]:
    """(H, gamma) of the study's Eq. 3 for two multiplicative laws with equal E.

    Raises :class:`~ftscale.errors.UserError` if a law is not multiplicative, the E's differ by
    more than ``rtol`` (relative) or the betas are equal (no crossing or crossing everywhere).
    With ``check_e=False`` the E's may differ: (H, gamma) then describe where the reducible parts
    A / (X^alpha D^beta) are equal, which is how the study's Table 5 reports methods whose fitted
    E's differ (e.g. En-De FMT 0.75 vs prompt 0.62).
    """
    for law in (law1, law2):
        if law.form_.name != "multiplicative":
            raise UserError(f"the closed form needs multiplicative laws, got {law.form_.name!r}")
    p1, p2 = law1.params_, law2.params_
    if check_e and not np.isclose(p1["E"], p2["E"], rtol=rtol, atol=0.0):
        raise UserError(f"the closed form needs equal E, got {p1['E']:.6g} and {p2['E']:.6g}")
    dbeta = p1["beta"] - p2["beta"]
    if dbeta == 0:
        raise UserError("the closed form needs different betas")
    # In logs: with nearly equal betas 1/dbeta is huge and (A1/A2)^(1/dbeta) leaves float range.
    log_h = (math.log(p1["A"]) - math.log(p2["A"])) / dbeta
    if not abs(log_h) < LOG_FLOAT_MAX:
        raise UserError(
            f"the closed form's H is out of float range (log H = {log_h:.3g}): the betas are "
            f"nearly equal ({p1['beta']:.6g} vs {p2['beta']:.6g})"
        )
    gamma = (p2["alpha"] - p1["alpha"]) / dbeta
    return math.exp(log_h), float(gamma)


def critical_curve(
    law1: ScalingLaw,
    law2: ScalingLaw,
    xs: Sequence[float],
    d_range: tuple[float, float] = D_RANGE,
) -> list[list[float]]:
    """Crossings at each X in ``xs`` (parameters, tokens or PET size): a list per X."""
    return [crossings(law1, law2, float(x), d_range) for x in xs]
