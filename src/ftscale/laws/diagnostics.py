"""Warnings for fits that finished but should not be read as they are.

A robust fitter always returns *a* minimum; on real finetuning tables that minimum is often
degenerate. :func:`diagnose` names each way we have seen it happen, in one line per problem:

* the fit stopped at L-BFGS's iteration limit;
* E collapsed to 0 (the law has no floor and falls without limit);
* a size term vanishes (below 0.1 % of the loss on every run), or matters on only one value of
  its size variable, so that its exponent is set by one model (additive fits with alpha 10-17);
* a parameter still sits exactly on a start of the grid: no run moved it (a dead term);
* the form ignores a size column that was given (``power`` with ``--x``: one curve for all X);
* the fit is worse than a constant (the median loss) on its own runs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ftscale.laws.fit import ScalingLaw
from ftscale.laws.forms import LawForm

#: A term smaller than this fraction of the predicted loss does not shape the fit (the Huber delta
#: in log space is 1e-3, so residuals below it are treated alike).
TERM_FLOOR = 1e-3
#: E below this fraction of the lowest fitted loss counts as collapsed to 0.
E_FLOOR = 1e-3


def diagnose(
    law: ScalingLaw,
    sizes: np.ndarray,
    losses: np.ndarray,
    *,
    columns: Mapping[str, str],
    unused: Mapping[str, str] | None = None,
) -> list[str]:
    """One-line warnings for a fitted law on the runs it was fitted on (empty if none).

    Args:
        law: the fitted law.
        sizes, losses: its fitting runs (raw counts, nats per token).
        columns: form variable -> table column, for messages.
        unused: option -> column of size columns given but not used by the form
            (e.g. ``{"--x": "params"}`` for ``power``).
    """
    form = law.form_
    found = []
    if not law.converged_:
        found.append(f"did not converge ({law.message_})")
    if "E" in law.params_ and law.params_["E"] < E_FLOOR * float(np.min(losses)):
        found.append(f"E={law.params_['E']:.2g} collapsed to 0: the law has no loss floor")
    found += _term_warnings(form, law.theta_, sizes, columns)
    found += _untouched(law, losses)
    for option, column in (unused or {}).items():
        found.append(f"ignores {option} {column}: the same curve for every {column}")
    found += _worse_than_constant(law, sizes, losses)
    return found


def _term_label(form: LawForm, term: Mapping) -> str:
    scale = [form.log_params.get(p, p) for p, c in term.items() if not isinstance(c, tuple)]
    powers = [
        f"{var.upper()}^{form.log_params.get(p, p)}"
        for p, c in term.items()
        if isinstance(c, tuple)
        for var in [c[0]]
    ]
    return f"{'*'.join(scale) or '1'}/{'*'.join(powers)}" if powers else "*".join(scale)


def _term_warnings(
    form: LawForm, theta: np.ndarray, sizes: np.ndarray, columns: Mapping[str, str]
) -> list[str]:
    """Vanishing terms and terms that matter on one size value only (exp-linear forms)."""
    if form.terms is None:
        return []
    log_sizes = np.log(sizes)
    parts = np.exp(np.einsum("knp,p->kn", form.design(log_sizes), theta))
    share = parts / parts.sum(axis=0)
    found = []
    for k, term in enumerate(form.terms):
        variables = [c[0] for c in term.values() if isinstance(c, tuple)]
        if not variables:
            continue
        label = _term_label(form, term)
        matters = share[k] >= TERM_FLOOR
        if not matters.any():
            found.append(f"term {label} vanishes (below 0.1 % of the loss on every run)")
            continue
        for var in variables:
            values = sizes[:, form.variables.index(var)]
            if np.unique(values[matters]).size == 1 and np.unique(values).size > 1:
                found.append(
                    f"term {label} matters only at {columns.get(var, var)}="
                    f"{values[matters][0]:g}: its exponent rests on one value"
                )
    return found


def _untouched(law: ScalingLaw, losses: np.ndarray) -> list[str]:
    """Free parameters still exactly on a value of their grid axis: no run moved them."""
    form = law.form_
    fixed = law._fixed_positions(form) if law.fixed else {}
    axes = form.grid_axes(np.asarray(losses, float))
    found = []
    for j, name in enumerate(form.params):
        if j in fixed:
            continue
        if np.isclose(law.theta_[j], axes[name], rtol=0.0, atol=1e-9).any():
            shown = form.log_params.get(name, name)
            value = law.params_[shown]
            found.append(f"{shown}={value:.4g} never left its grid start: the runs do not set it")
    return found


def _worse_than_constant(law: ScalingLaw, sizes: np.ndarray, losses: np.ndarray) -> list[str]:
    with np.errstate(all="ignore"):
        error = float(np.mean(np.abs(law.predict(sizes) - losses)))
    constant = float(np.mean(np.abs(losses - np.median(losses))))
    if not error < constant:
        return [
            f"fits worse than a constant: mean error {error:.3g} nats vs {constant:.3g} "
            "for the median loss"
        ]
    return []
