"""Scaling-law forms: what a law computes, which parameters it has, where the fitter starts.

A form maps sizes (raw counts: parameters, tokens, examples) to a predicted loss (nats per token).
Positive scale parameters (A, B, E, D_l) are searched through their natural logs (a, b, e, dl), as
in Hoffmann et al. (2022) and the study, so the search space is unconstrained.

Built-in forms (names as used by ``--form``):

========================  =====================================  ==================
name                      law                                     variables
========================  =====================================  ==================
``power``                 L(D) = A / D^beta + E                   d
``multiplicative``        L(X, D) = A / (X^alpha D^beta) + E      x, d
``additive``              L(X, D) = A / X^alpha + B / D^beta + E  x, d
``rectified``             L(D) = B / (D_l + D^beta) + E           d
``prelearned``            L(X, D) = A / (X^alpha (D_l + D^beta))  x, d
                          + E
========================  =====================================  ==================

``rectified`` is Lin et al. (2024), "Selecting Large Language Model to Fine-tune via Rectified
Scaling Law", for finetuning curves that start flat. ``prelearned`` carries its pre-learned data
term D_l into the study's joint law: flat while D^beta << D_l, the multiplicative law once
D^beta >> D_l; X is any of the study's factors (model size, pretraining tokens, PET size). Users add
their own forms with :func:`register_form`, :func:`custom_form`, or from the command line (see
:mod:`ftscale.laws.userforms`).

Three of the built-ins are sums of exponentials of functions linear in the parameters (e.g.
``multiplicative`` is exp(a - alpha log X - beta log D) + exp(e)); they are evaluated as a
log-sum-exp of matrix products, which is exact, overflow-free and gives the gradient in closed form.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ftscale.errors import UserError

#: The smallest normal float: a zero scale parameter is searched at its log (see
#: :meth:`LawForm.from_reported`).
_TINY = float(np.finfo(float).tiny)

#: A grid axis: fixed values, or a function of the observed losses returning values.
GridAxis = Sequence[float] | Callable[[np.ndarray], Sequence[float]]

#: A coefficient of a parameter inside an exp-linear term: a constant, or (variable, scale)
#: meaning ``scale * log(variable)``.
Coefficient = float | tuple[str, float]


def _e_axis(y: np.ndarray) -> list[float]:
    """Default starts for e = log E: the Chinchilla values plus values just under the lowest loss.

    The irreducible loss E lies below every observed loss; starting some searches near the lowest
    observation avoids the local minima that a far-off E invites (REFERENCE.md, pitfalls).
    """
    low = float(np.min(y))
    near = [float(np.log(q * low)) for q in (0.5, 0.9, 0.99)] if low > 0 else []
    return sorted({-1.0, -0.5, 0.0, 0.5, 1.0, *near})


#: Chinchilla's grid (Hoffmann et al. 2022, as replicated by Besiroglu et al. 2024): 4,500 starts.
CHINCHILLA_GRID: dict[str, GridAxis] = {
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
}

# Finetuning exponents are small (the study's beta is 0.015-0.15, its PET-size alpha ~0), so the
# grids below for the finetuning forms add small starting exponents to Chinchilla's.
_SCALE_AXIS = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
_EXPONENT_AXIS = (0.0, 0.1, 0.25, 0.5, 1.0, 1.5)


@dataclass(frozen=True)
class LawForm:
    """A scaling-law form: its parameters, its variables and how it predicts.

    Attributes:
        name: registry name, e.g. ``"multiplicative"``.
        variables: names of the size variables in the order ``fit`` takes them, e.g. ``("x", "d")``.
        params: search-space parameter names, e.g. ``("a", "alpha", "beta", "e")``.
        log_params: search name -> reported name for parameters searched through their log
            (``{"a": "A", "e": "E"}``); the others are reported as they are searched.
        grid: starting values per search parameter; the fitter starts from their full product.
        formula: the law in words, for tables and plots.
        terms: for exp-linear forms, one mapping per term from parameter to its coefficient.
        function: for other forms, ``function(p, *sizes) -> loss`` with ``p`` the reported
            parameters (exp already applied) as arrays that broadcast against the sizes.
    """

    name: str
    variables: tuple[str, ...]
    params: tuple[str, ...]
    log_params: Mapping[str, str]
    grid: Mapping[str, GridAxis]
    formula: str
    terms: tuple[Mapping[str, Coefficient], ...] | None = None
    function: Callable[..., np.ndarray] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if (self.terms is None) == (self.function is None):
            raise ValueError(f"form {self.name!r}: give exactly one of terms or function")
        missing = [p for p in self.params if p not in self.grid]
        if missing:
            raise ValueError(f"form {self.name!r}: no grid for parameter(s) {missing}")
        unknown = [p for p in self.log_params if p not in self.params]
        if unknown:
            raise ValueError(f"form {self.name!r}: log_params {unknown} are not parameters")

    # -- names ------------------------------------------------------------------------------
    @property
    def reported(self) -> tuple[str, ...]:
        """Reported parameter names (A rather than a), in search order."""
        return tuple(self.log_params.get(p, p) for p in self.params)

    def search_name(self, name: str) -> str:
        """Search-space name of a parameter given by either its search or reported name."""
        if name in self.params:
            return name
        for search, shown in self.log_params.items():
            if shown == name:
                return search
        raise UserError(
            f"form {self.name!r} has no parameter {name!r} (parameters: {', '.join(self.reported)})"
        )

    def to_reported(self, theta: np.ndarray) -> dict[str, float]:
        """Search-space vector -> ``{reported name: value}`` (exp applied to log parameters)."""
        return {
            self.log_params.get(p, p): float(np.exp(v) if p in self.log_params else v)
            for p, v in zip(self.params, theta, strict=True)
        }

    def from_reported(self, values: Mapping[str, float]) -> np.ndarray:
        """``{reported or search name: value}`` -> search-space vector (log of log parameters).

        A log-searched scale of exactly 0 (an E that underflowed when it was reported, or given
        as 0) is searched at log of the smallest normal float rather than at -inf: an exp-linear
        form multiplies every parameter by a coefficient, and 0 * -inf would turn all its
        predictions into NaN, while exp(log(tiny)) adds nothing a float can show.
        """
        theta = np.empty(len(self.params))
        given = {self.search_name(k): float(v) for k, v in values.items()}
        for i, p in enumerate(self.params):
            if p not in given:
                raise UserError(f"form {self.name!r}: value for parameter {p!r} missing")
            v = given[p]
            theta[i] = np.log(v if v != 0 else _TINY) if p in self.log_params else v
        return theta

    # -- starts -------------------------------------------------------------------------------
    def grid_axes(self, y: np.ndarray) -> dict[str, np.ndarray]:
        """The grid's axes for losses ``y``, with data-dependent axes resolved."""
        return {
            p: np.asarray(self.grid[p](y) if callable(self.grid[p]) else self.grid[p], float)
            for p in self.params
        }

    def starts(self, y: np.ndarray) -> np.ndarray:
        """Every start of the grid as an array of shape (n_starts, n_params), search space."""
        axes = self.grid_axes(y)
        return np.array(list(itertools.product(*(axes[p] for p in self.params))), dtype=float)

    # -- prediction ---------------------------------------------------------------------------
    def design(self, log_sizes: np.ndarray) -> np.ndarray | None:
        """For exp-linear forms, the coefficient tensor C of shape (terms, n, params) such that
        term k of point i is ``C[k, i] @ theta``; ``None`` for function forms.

        ``log_sizes`` has shape (n, len(variables)) and holds natural logs of the sizes.
        """
        if self.terms is None:
            return None
        n = log_sizes.shape[0]
        design = np.zeros((len(self.terms), n, len(self.params)))
        for k, term in enumerate(self.terms):
            for param, coef in term.items():
                j = self.params.index(param)
                if isinstance(coef, tuple):
                    var, scale = coef
                    design[k, :, j] = scale * log_sizes[:, self.variables.index(var)]
                else:
                    design[k, :, j] = coef
        return design

    def log_predict(
        self, theta: np.ndarray, log_sizes: np.ndarray, design: np.ndarray | None = None
    ) -> np.ndarray:
        """Log of the predicted loss for many parameter vectors at once.

        Args:
            theta: search-space parameters, shape (G, n_params).
            log_sizes: natural logs of the sizes, shape (n, n_variables).
            design: :meth:`design` of ``log_sizes``, passed to avoid recomputing it.

        Returns:
            Array (G, n); ``nan`` where a function form predicts a non-positive loss.
        """
        theta = np.atleast_2d(theta)
        if self.terms is not None:
            design = self.design(log_sizes) if design is None else design
            return _softmax_lse(np.einsum("knp,gp->gkn", design, theta), axis=1)[0]
        sizes = np.exp(log_sizes)
        values = self.to_reported_arrays(theta)
        with np.errstate(all="ignore"):
            pred = np.asarray(
                self.function(values, *(sizes[:, i] for i in range(sizes.shape[1]))), float
            )
            pred = np.broadcast_to(pred, (theta.shape[0], log_sizes.shape[0]))
            return np.where(pred > 0, np.log(np.where(pred > 0, pred, 1.0)), np.nan)

    def log_predict_jac(
        self, theta: np.ndarray, log_sizes: np.ndarray, design: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Log prediction (n,) and its Jacobian (n, n_params) for one parameter vector.

        Exact for exp-linear forms (softmax-weighted design); central differences for function
        forms.
        """
        if self.terms is not None:
            design = self.design(log_sizes) if design is None else design
            # einsum, not @: these products are tiny, and BLAS's threads only cost time here.
            t = np.einsum("knp,p->kn", design, theta)
            lp, weights = _softmax_lse(t, axis=0)
            return lp, np.einsum("kn,knp->np", weights, design)
        step = 1e-6 * np.maximum(1.0, np.abs(theta))
        probes = np.concatenate([theta[None], theta + np.diag(step), theta - np.diag(step)])
        lp_all = self.log_predict(probes, log_sizes)
        p = len(theta)
        jac = (lp_all[1 : p + 1] - lp_all[p + 1 :]) / (2 * step[:, None])
        return lp_all[0], jac.T

    def to_reported_arrays(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """Search-space matrix (G, n_params) -> reported values as broadcastable (G, 1) columns."""
        return {
            self.log_params.get(p, p): (
                np.exp(theta[:, [j]]) if p in self.log_params else theta[:, [j]]
            )
            for j, p in enumerate(self.params)
        }

    def predict(self, theta: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """Predicted loss for one search-space vector at sizes of shape (n, n_variables)."""
        return np.exp(self.log_predict(np.asarray(theta, float)[None], np.log(sizes))[0])


def _softmax_lse(t: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Log-sum-exp of ``t`` over ``axis`` and the softmax weights, shifted by the max.

    Written out because ``scipy.special.logsumexp`` costs ~10x more per call on small arrays (its
    array-API dispatch), and this sits inside every L-BFGS evaluation.
    """
    top = t.max(axis=axis, keepdims=True)
    w = np.exp(t - top)
    total = w.sum(axis=axis, keepdims=True)
    return np.squeeze(top + np.log(total), axis=axis), w / total


_REGISTRY: dict[str, LawForm] = {}


def register_form(form: LawForm, *, replace: bool = False) -> LawForm:
    """Add a form to the registry so ``get_form(name)`` and ``ftscale fit --form name`` find it."""
    if form.name in _REGISTRY and not replace:
        raise ValueError(f"a form named {form.name!r} is already registered")
    _REGISTRY[form.name] = form
    return form


def custom_form(
    name: str,
    function: Callable[..., np.ndarray],
    params: Sequence[str],
    grid: Mapping[str, GridAxis],
    *,
    variables: Sequence[str] = ("d",),
    log_params: Mapping[str, str] | None = None,
    formula: str = "",
    register: bool = True,
) -> LawForm:
    """Define (and by default register) a law from a plain numpy function.

    Example, a power law with an offset in D (D in examples, loss in nats per token)::

        custom_form(
            "shifted",
            lambda p, d: p["A"] / (d + p["D0"]) ** p["beta"] + p["E"],
            params=("a", "d0", "beta", "e"),
            log_params={"a": "A", "d0": "D0", "e": "E"},
            grid={"a": [0, 5, 10], "d0": [0, 5], "beta": [0.1, 0.5], "e": [-1, 0, 1]},
        )

    ``function(p, *sizes)`` receives the reported parameters (exp applied to ``log_params``) as
    arrays of shape (G, 1) and each size variable as an array of shape (n,), and returns the loss
    with shape (G, n) (numpy broadcasting does this for ordinary expressions).
    """
    form = LawForm(
        name=name,
        variables=tuple(variables),
        params=tuple(params),
        log_params=dict(log_params or {}),
        grid=dict(grid),
        formula=formula or name,
        function=function,
    )
    return register_form(form) if register else form


def get_form(name: str | LawForm) -> LawForm:
    """Look a form up by name (a :class:`LawForm` is returned as it is)."""
    if isinstance(name, LawForm):
        return name
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(
            f"unknown law form {name!r} (known: {', '.join(available_forms())})"
        ) from None


def available_forms() -> list[str]:
    """Names of every registered form."""
    return sorted(_REGISTRY)


def _rectified(p: Mapping[str, np.ndarray], d: np.ndarray) -> np.ndarray:
    return p["B"] / (p["D_l"] + d ** p["beta"]) + p["E"]


def _prelearned(p: Mapping[str, np.ndarray], x: np.ndarray, d: np.ndarray) -> np.ndarray:
    return p["A"] / (x ** p["alpha"] * (p["D_l"] + d ** p["beta"])) + p["E"]


#: Starts of dl = log D_l: none (e^0 = 1 example-equivalent) to e^10 (~22,000).
_DL_AXIS = (0.0, 2.5, 5.0, 10.0)


POWER = register_form(
    LawForm(
        name="power",
        variables=("d",),
        params=("a", "beta", "e"),
        log_params={"a": "A", "e": "E"},
        grid={"a": _SCALE_AXIS, "beta": _EXPONENT_AXIS, "e": _e_axis},
        formula="A / D^beta + E",
        terms=({"a": 1.0, "beta": ("d", -1.0)}, {"e": 1.0}),
    )
)

MULTIPLICATIVE = register_form(
    LawForm(
        name="multiplicative",
        variables=("x", "d"),
        params=("a", "alpha", "beta", "e"),
        log_params={"a": "A", "e": "E"},
        grid={"a": _SCALE_AXIS, "alpha": _EXPONENT_AXIS, "beta": _EXPONENT_AXIS, "e": _e_axis},
        formula="A / (X^alpha D^beta) + E",
        terms=({"a": 1.0, "alpha": ("x", -1.0), "beta": ("d", -1.0)}, {"e": 1.0}),
    )
)

ADDITIVE = register_form(
    LawForm(
        name="additive",
        variables=("x", "d"),
        params=("a", "b", "e", "alpha", "beta"),
        log_params={"a": "A", "b": "B", "e": "E"},
        grid=CHINCHILLA_GRID,
        formula="A / X^alpha + B / D^beta + E",
        terms=({"a": 1.0, "alpha": ("x", -1.0)}, {"b": 1.0, "beta": ("d", -1.0)}, {"e": 1.0}),
    )
)

RECTIFIED = register_form(
    LawForm(
        name="rectified",
        variables=("d",),
        params=("b", "dl", "beta", "e"),
        log_params={"b": "B", "dl": "D_l", "e": "E"},
        grid={
            "b": _SCALE_AXIS,
            "dl": _DL_AXIS,
            "beta": (0.1, 0.25, 0.5, 1.0, 1.5),
            "e": _e_axis,
        },
        formula="B / (D_l + D^beta) + E",
        function=_rectified,
    )
)

PRELEARNED = register_form(
    LawForm(
        name="prelearned",
        variables=("x", "d"),
        params=("a", "alpha", "dl", "beta", "e"),
        log_params={"a": "A", "dl": "D_l", "e": "E"},
        grid={
            "a": (0.0, 5.0, 10.0, 15.0),
            "alpha": (0.0, 0.1, 0.25, 0.5),
            "dl": _DL_AXIS,
            "beta": (0.1, 0.25, 0.5, 1.0),
            "e": _e_axis,
        },
        formula="A / (X^alpha (D_l + D^beta)) + E",
        function=_prelearned,
    )
)
