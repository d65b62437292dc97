"""Command-line options as data: typer options declared in tables, or generated from a settings
schema (the training settings of :class:`ftscale.finetune.spec.TrainConfig`), and a command
function whose signature is built from them.

Typer reads a command's options from its signature; :func:`command` gives a function that takes
``**options`` the signature those tables describe, so one schema is the CLI's options, their
defaults and their help, and a command stays a few lines long.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import typer
from annotated_types import Ge
from pydantic.fields import FieldInfo


@dataclass(frozen=True)
class Option:
    """One typer option: parameter ``name``, value ``kind``, ``default``, ``help``, the flags
    (default ``--name-with-dashes``), for integers the smallest value ``min``, and the ``panel``
    of ``--help`` it is listed in."""

    name: str
    kind: Any
    default: Any
    help: str
    flags: tuple[str, ...] = ()
    min: int | None = None
    panel: str | None = None

    def parameter(self) -> inspect.Parameter:
        flags = self.flags or ("--" + self.name.replace("_", "-"),)
        option = typer.Option(*flags, help=self.help, min=self.min, rich_help_panel=self.panel)
        return inspect.Parameter(
            self.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=self.default,
            annotation=Annotated[self.kind, option],
        )


def command(body: Callable[..., None], *tables: Sequence[Option]) -> Callable[..., None]:
    """``body`` (a function of ``**options``) with the signature of the options in ``tables``."""
    options = [option for table in tables for option in table]
    names = [o.name for o in options]
    assert len(set(names)) == len(names), f"an option is declared twice: {names}"
    body.__signature__ = inspect.Signature([o.parameter() for o in options])  # type: ignore[attr-defined]
    return body


def in_panel(panel: str, table: Sequence[Option]) -> list[Option]:
    """``table``'s options listed under ``panel`` in ``--help``."""
    return [dataclasses.replace(option, panel=panel) for option in table]


def schema_options(
    model: type,
    *,
    flag: Callable[[str], str],
    helps: dict[str, str] | None = None,
    panel: str | None = None,
    switches: str | None = None,
) -> list[Option]:
    """One option per field of a pydantic ``model``: named by ``flag(field)``, the field's
    default and help (or ``helps[field]``), the value type a command line can give (numbers,
    text, on/off; choices and ``"auto"``-or-number as text, validated by the schema itself) and,
    for integers, the field's lower bound. ``--help`` lists them under ``panel``, the on/off
    ones (``--x/--no-x``) under ``switches`` (a panel of their own keeps every panel narrow)."""
    hints = typing.get_type_hints(model, include_extras=True)
    out = []
    for name, info in model.model_fields.items():  # on/off settings get --x/--no-x
        kind, minimum = _cli_kind(hints[name])
        help_text = (helps or {}).get(name) or info.description or ""
        dashed = flag(name).replace("_", "-")
        switch = kind in (bool, bool | None)
        flags = (f"--{dashed}/--no-{dashed}",) if switch else ()
        where = (switches or panel) if switch else panel
        out.append(Option(flag(name), kind, info.default, help_text, flags, minimum, where))
    return out


def _cli_kind(annotation: Any) -> tuple[Any, int | None]:
    """``(type typer parses, smallest integer allowed)`` of a schema annotation."""
    base, metadata = _unwrap(annotation)
    args = [a for a in typing.get_args(base)] if _is_union(base) else [base]
    optional = type(None) in args
    values = [_unwrap(a) for a in args if a is not type(None)]
    kinds = {v for v, _ in values}
    minimum = next(
        (m.ge for _, meta in values for m in [*meta, *metadata] if isinstance(m, Ge)), None
    )
    if len(kinds) != 1 or typing.get_origin(next(iter(kinds))) is Literal:
        kind: Any = str
    else:
        kind = next(iter(kinds))
    return (kind | None if optional else kind), (minimum if kind is int else None)


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """The type inside ``Annotated[...]`` (nested too) and every constraint found on the way."""
    metadata: list[Any] = []
    while typing.get_origin(annotation) is Annotated:
        annotation, *extra = typing.get_args(annotation)
        for item in extra:
            metadata += item.metadata if isinstance(item, FieldInfo) else [item]
    return annotation, metadata


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)
