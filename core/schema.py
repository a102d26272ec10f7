"""Declarative checks for plain configuration tables (recipes, ``--set`` overrides).

A schema is a mapping ``key -> Field``. :func:`check_table` fills defaults and
raises :class:`~diffcomp.errors.RecipeError` naming the key, what was wrong and
what would be valid (with a "did you mean"), so that every key of a recipe is
validated before any work starts. Factories registered by plug-ins (tasks,
ALUs, parsers) get a schema from their signature with :func:`signature_fields`.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .errors import RecipeError, did_you_mean

REQUIRED = object()


@attrs.frozen
class Field:
    """One key of a table: its type(s), default, allowed values and meaning."""

    types: tuple[type, ...] | None  # None: any value
    default: Any = REQUIRED
    doc: str = ""
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], str | None] | None = None  # returns an error message, or None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list: "an array", dict: "a table"}


def type_name(types: tuple[type, ...]) -> str:
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


def value_matches(value: Any, types: tuple[type, ...] | None) -> bool:
    if types is None:
        return True
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, tuple(t for t in types if t is not bool))


def check_table(table: Any, fields: Mapping[str, Field], where: str, *, top: bool = False) -> dict[str, Any]:
    """``table`` checked against ``fields``, with defaults filled in.

    ``where`` names the table in messages (``[model]``, ``stages[0]``); with
    ``top`` it names the file, and keys are named as they are written there.
    """
    at = f"{where}: " if top else f"{where}."
    if not isinstance(table, dict):
        raise RecipeError(f"{where} must be a table, got {describe(table)}")
    for key in table:
        if key not in fields:
            raise RecipeError(f"{where}: unknown key {key!r}{did_you_mean(key, fields)}; "
                              f"valid keys: {', '.join(fields)}")
    out: dict[str, Any] = {}
    for key, field in fields.items():
        if key not in table:
            if field.required:
                raise RecipeError(f"{where}: missing required key {key!r} ({field.doc or type_name(field.types or ())})")
            out[key] = field.default
            continue
        value = table[key]
        if value is None and field.default is None:  # "unset", as a filled-in table says it
            out[key] = None
            continue
        if not value_matches(value, field.types):
            raise RecipeError(f"{at}{key} must be {type_name(field.types)}, got {describe(value)}")
        if field.choices is not None and value not in field.choices:
            raise RecipeError(f"{at}{key} = {value!r} is not one of {', '.join(map(repr, field.choices))}"
                              f"{did_you_mean(value, map(str, field.choices))}")
        if field.check is not None and (problem := field.check(value)):
            raise RecipeError(f"{at}{key} = {value!r}: {problem}")
        out[key] = float(value) if field.types == (float,) and isinstance(value, int) else value
    return out


def describe(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "table"}.get(type(value), type(value).__name__)
    return f"the {kind} {value!r}" if not isinstance(value, (dict, list)) else f"a {kind}"


def signature_fields(factory: Callable[..., Any], skip: tuple[str, ...] = ()) -> dict[str, Field]:
    """A schema from a factory's keyword parameters, their defaults and annotations."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: fall back to the defaults' types
        hints = {}
    fields: dict[str, Field] = {}
    for name, p in parameters.items():
        if name in skip or name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            continue
        default = REQUIRED if p.default is inspect.Parameter.empty else p.default
        fields[name] = Field(_types_of(hints.get(name), default), default)
    return fields


def _types_of(hint: Any, default: Any) -> tuple[type, ...] | None:
    if hint is not None:
        found = _flatten_hint(hint)
        if found:
            return found
    if default is REQUIRED or default is None:
        return None
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, (int, float)):
        return (int, float) if isinstance(default, float) else (int,)
    if isinstance(default, (list, tuple)):
        return (list,)
    if isinstance(default, str):
        return (str,)
    return None


def _flatten_hint(hint: Any) -> tuple[type, ...] | None:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        parts: list[type] = []
        for arg in typing.get_args(hint):
            if arg is type(None):
                continue
            sub = _flatten_hint(arg)
            if sub is None:
                return None
            parts.extend(sub)
        return tuple(dict.fromkeys(parts)) or None
    base = origin or hint
    if base in (list, tuple) or (inspect.isclass(base) and issubclass(base, (list, tuple))):
        return (list,)
    if inspect.isclass(base) and base.__module__ == "collections.abc" and base.__name__ in ("Sequence", "Iterable"):
        return (list,)
    if base in (dict,) or (inspect.isclass(base) and base.__name__ == "Mapping"):
        return (dict,)
    if base is float:
        return (int, float)
    if base in (int, str, bool):
        return (base,)
    return None
