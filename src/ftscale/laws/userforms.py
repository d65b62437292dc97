"""Law forms named on the command line: registered names, Python files, and safe expressions.

``--form`` accepts three spellings, resolved by :func:`resolve_form`:

* a registered name: ``multiplicative``, ``prelearned``, ...;
* ``FILE.py:NAME``: the :class:`~ftscale.laws.forms.LawForm` bound to ``NAME`` in a Python file
  (usually the result of ``custom_form(..., register=False)``). The file is the user's own code and
  is run as Python, like a configuration script;
* ``expr:FORMULA``: an arithmetic formula in the sizes ``X`` and ``D``, for simple cases, e.g.
  ``expr:A / (X^alpha * (D_l + D^beta)) + E``. The formula is parsed with :mod:`ast` and evaluated
  by a small interpreter that knows numbers, the two sizes, parameters, ``+ - * / ^ **``, unary
  minus and the functions ``log``, ``exp`` and ``sqrt``; anything else (attributes, calls of other
  names, subscripts, strings) is refused, so a formula cannot run code.

Parameters of an expression are the names other than ``X``, ``D`` and the functions. A name
starting with a capital letter (``A``, ``E``, ``D_l``) is a positive scale, searched through its
log; a lower-case name (``alpha``, ``beta``) is an exponent, searched as it is. Their starting
grids: ``E`` as the built-in forms' e axis (near the lowest loss), other scales log-values
{0, 5, 10, 15}, exponents {0, 0.1, 0.25, 0.5, 1}.
"""

from __future__ import annotations

import ast
import importlib.util
import operator
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from ftscale.common import first_line
from ftscale.errors import UserError
from ftscale.laws.forms import LawForm, _e_axis, get_form

EXPR_PREFIX = "expr:"
#: Most parameters an expression may have: the grid is the product of their axes.
MAX_EXPR_PARAMS = 6
#: Longest formula accepted (a law is a line; this also bounds the parser's recursion).
MAX_EXPR_CHARS = 400
#: Deepest nesting of operations and calls (``A / (X^alpha * D^beta) + E`` is 4).
MAX_EXPR_DEPTH = 16
#: Largest magnitude of a number written in a formula, or of a part made only of numbers.
MAX_EXPR_CONSTANT = 1e6
#: Largest magnitude of a constant exponent (``D^-0.5`` is fine; ``X^400`` overflows every size).
MAX_EXPR_EXPONENT = 16.0
_SIZES = {"X": "x", "D": "d"}
_FUNCTIONS: dict[str, Callable] = {"log": np.log, "exp": np.exp, "sqrt": np.sqrt}
_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_SCALE_STARTS = (0.0, 5.0, 10.0, 15.0)
_EXPONENT_STARTS = (0.0, 0.1, 0.25, 0.5, 1.0)


def resolve_form(spec: str | LawForm) -> LawForm:
    """A form from a registered name, ``FILE.py:NAME`` or ``expr:FORMULA`` (see the module docs)."""
    if isinstance(spec, LawForm):
        return spec
    text = str(spec).strip()
    if text.startswith(EXPR_PREFIX):
        return expression_form(text[len(EXPR_PREFIX) :])
    path, sep, name = text.rpartition(":")
    if sep and path.endswith(".py"):
        return form_from_file(Path(path), name)
    return get_form(text)


def form_from_file(path: Path, name: str) -> LawForm:
    """The :class:`LawForm` bound to ``name`` in the Python file ``path`` (one-line errors)."""
    if not path.is_file():
        raise UserError(f"--form {path}:{name}: no such file {path}")
    if not name.isidentifier():
        raise UserError(f"--form {path}:{name}: {name!r} is not a Python name")
    spec = importlib.util.spec_from_file_location(f"ftscale_user_forms_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise UserError(f"{path}, line {exc.lineno}: syntax error: {exc.msg}") from None
    except Exception as exc:  # the user's code: any failure is theirs, reported in one line
        raise UserError(f"{path}: failed to run: {type(exc).__name__}: {first_line(exc)}") from None
    form = getattr(module, name, None)
    if form is None:
        raise UserError(f"{path}: defines no {name!r}")
    if isinstance(form, str):
        return get_form(form)
    if not isinstance(form, LawForm):
        raise UserError(
            f"{path}: {name!r} is a {type(form).__name__}, not a LawForm "
            "(make it with ftscale.laws.custom_form(..., register=False))"
        )
    return form


def expression_form(formula: str) -> LawForm:
    """A :class:`LawForm` from a formula in ``X`` and ``D`` (see the module docs)."""
    text = formula.strip()
    if not text:
        raise UserError("--form expr: the formula is empty")
    if len(text) > MAX_EXPR_CHARS:
        raise UserError(f"--form expr: the formula is longer than {MAX_EXPR_CHARS} characters")
    try:
        tree = ast.parse(text.replace("^", "**"), mode="eval")
    except SyntaxError as exc:
        raise UserError(f"--form expr:{text}: not a formula ({exc.msg})") from None
    except (RecursionError, MemoryError, ValueError):
        raise UserError(f"--form expr:{text}: the formula is nested too deeply") from None
    names: list[str] = []
    _check(tree.body, text, names)
    _check_bounds(tree.body, text)
    symbols = [k for k in _SIZES if k in names]  # "X", "D" in the order forms take them
    variables = tuple(_SIZES[k] for k in symbols)
    params = [n for n in names if n not in _SIZES]
    if "d" not in variables:
        raise UserError(f"--form expr:{text}: the formula must use D (the finetuning-data size)")
    if not params:
        raise UserError(f"--form expr:{text}: the formula has no parameter to fit")
    if len(params) > MAX_EXPR_PARAMS:
        raise UserError(
            f"--form expr:{text}: {len(params)} parameters; at most {MAX_EXPR_PARAMS} "
            "(their grid of starts grows as a product)"
        )
    body = tree.body

    def function(p: Mapping[str, np.ndarray], *sizes: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):  # an overflow is inf, fitted as a bad point, not raised
            return _evaluate(body, {**dict(zip(symbols, sizes, strict=True)), **p})

    search = {n: (n.lower() if n[0].isupper() else n) for n in params}
    if len(set(search.values())) != len(search):
        raise UserError(f"--form expr:{text}: parameter names differ only in case")
    return LawForm(
        name=f"expr:{text}",
        variables=variables,
        params=tuple(search[n] for n in params),
        log_params={search[n]: n for n in params if n[0].isupper()},
        grid={search[n]: _axis(n) for n in params},
        formula=text,
        function=function,
    )


def _axis(name: str):
    if name == "E":
        return _e_axis
    return _SCALE_STARTS if name[0].isupper() else _EXPONENT_STARTS


def _check(node: ast.AST, text: str, names: list[str]) -> None:
    """Refuse every node outside the whitelist; collect the names in order of appearance."""
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        _check(node.left, text, names)
        _check(node.right, text, names)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        _check(node.operand, text, names)
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
        pass
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if node.func.id not in _FUNCTIONS or node.keywords or len(node.args) != 1:
            raise UserError(
                f"--form expr:{text}: unknown function {node.func.id!r} "
                f"(known: {', '.join(_FUNCTIONS)}, one argument each)"
            )
        _check(node.args[0], text, names)
    elif isinstance(node, ast.Name):
        if node.id in _FUNCTIONS:
            raise UserError(f"--form expr:{text}: {node.id} is a function, not a value")
        if node.id not in names:
            names.append(node.id)
    else:
        shown = ast.get_source_segment(text.replace("^", "**"), node) or type(node).__name__
        raise UserError(
            f"--form expr:{text}: {shown!r} is not allowed (numbers, X, D, parameters, "
            "+ - * / ^, log, exp, sqrt)"
        )


def _check_bounds(node: ast.AST, text: str, depth: int = 0) -> float | None:
    """Refuse a formula nested deeper than :data:`MAX_EXPR_DEPTH`, a number (or a part made of
    numbers only, folded here) above :data:`MAX_EXPR_CONSTANT` in magnitude or not finite, and a
    constant exponent above :data:`MAX_EXPR_EXPONENT`. Returns the folded value of a part made of
    numbers only, else None."""
    if depth > MAX_EXPR_DEPTH:
        raise UserError(f"--form expr:{text}: nested deeper than {MAX_EXPR_DEPTH} levels")
    children = [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.expr)]
    if isinstance(node, ast.Call):
        children = list(node.args)
    values = [_check_bounds(c, text, depth + 1) for c in children]
    power = isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow)
    if power and values[1] is not None and abs(values[1]) > MAX_EXPR_EXPONENT:
        raise UserError(
            f"--form expr:{text}: exponent {values[1]:g} is larger than "
            f"{MAX_EXPR_EXPONENT:g} in magnitude"
        )
    if isinstance(node, ast.Name) or any(v is None for v in values):
        return None
    with np.errstate(all="ignore"):
        value = float(_evaluate(node, {}))
    if not np.isfinite(value) or abs(value) > MAX_EXPR_CONSTANT:
        shown = ast.get_source_segment(text.replace("^", "**"), node) or f"{value:g}"
        raise UserError(
            f"--form expr:{text}: {shown!r} is {value:g}; numbers in a formula are at most "
            f"{MAX_EXPR_CONSTANT:g} in magnitude"
        )
    return value


def _evaluate(node: ast.AST, env: Mapping[str, np.ndarray]):
    """Evaluate a checked formula tree on numpy arrays."""
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_evaluate(node.left, env), _evaluate(node.right, env))
    if isinstance(node, ast.UnaryOp):
        value = _evaluate(node.operand, env)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Constant):
        return np.float64(node.value)  # numpy arithmetic: overflow is inf, never OverflowError
    if isinstance(node, ast.Call):
        return _FUNCTIONS[node.func.id](_evaluate(node.args[0], env))
    return env[node.id]
