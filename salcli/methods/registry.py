"""The method registry: small classes registered by name, each with a frozen ``Params`` dataclass.

The CLI, ``salcli methods`` and the README's method table are all generated from here.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from ..errors import UsageError, did_you_mean
from ..registry import Registry
from .base import Method

REGISTRY: Registry = Registry("method")


def register(name: str):
    """Class decorator: ``@register("gradcam")``; a duplicate name is an error."""
    return REGISTRY.register(name)


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str) -> type[Method]:
    return REGISTRY.lookup(name)


def param_fields(cls: type[Method]) -> list[tuple[str, type, Any]]:
    hints = typing.get_type_hints(cls.Params)
    return [(f.name, hints[f.name], f.default) for f in dataclasses.fields(cls.Params)]


def coerce(value: Any, kind: Any, where: str) -> Any:
    """Turn a command-line string (or a TOML value) into the parameter's declared type."""
    choices = typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else ()
    if choices:
        if str(value) not in choices:
            raise UsageError(f"{where} must be one of {', '.join(choices)}; got '{value}'")
        return str(value)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text in ("true", "1", "yes")
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind is float:
            return float(value)
        if kind in (str, typing.Optional[str]):
            return None if kind is not str and str(value).lower() in ("none", "") else str(value)
        if typing.get_origin(kind) is tuple:
            items = value if isinstance(value, (list, tuple)) else str(value).split(",")
            return tuple(int(v) for v in items)
    except ValueError:
        raise UsageError(f"{where} takes a {getattr(kind, '__name__', kind)}; got '{value}'") from None
    return value


def create(name: str, raw: dict[str, Any] | None = None) -> Method:
    """Instantiate method ``name`` with parameters given as strings or TOML values."""
    cls = get(name)
    fields = {f[0]: f[1] for f in param_fields(cls)}
    values = {}
    for key, value in (raw or {}).items():
        if key not in fields:
            valid = ", ".join(fields) or "none"
            raise UsageError(f"unknown parameter '{name}.{key}'.{did_you_mean(key, fields)} "
                             f"Parameters of {name}: {valid}")
        values[key] = coerce(value, fields[key], f"{name}.{key}")
    try:
        params = cls.Params(**values)
    except ValueError as exc:
        raise UsageError(f"{name}: {exc}") from None
    return cls(params)


def describe() -> list[dict[str, Any]]:
    """One entry per method, for ``salcli methods`` and the README table."""
    rows = []
    for name, cls in REGISTRY.items():
        rows.append({
            "name": name,
            "family": cls.family,
            "paper": cls.paper,
            "convention": cls.convention,
            "needs_layer": cls.needs_layer,
            "passes": cls(cls.Params()).passes(),
            "params": [{"name": n, "type": getattr(t, "__name__", str(t)), "default": d}
                       for n, t, d in param_fields(cls)],
            "summary": (cls.__doc__ or "").strip().splitlines()[0],
        })
    return rows
