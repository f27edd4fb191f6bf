"""The method registry: small classes registered by name, each with a frozen ``Params`` dataclass.

The CLI, ``salcli methods`` and the README's method table are all generated from here.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from typing import Any

from ..errors import UsageError, did_you_mean
from ..registry import Registry
from .base import Method

MAX_COUNT = 10_000_000  # most steps, samples, masks or cells an int parameter may ask for (schema.MAX_COUNT)

REGISTRY: Registry = Registry("method")


def register(name: str):
    """Class decorator: ``@register("gradcam")``; a duplicate name is an error."""
    return REGISTRY.register(name)


# Names other libraries give the same methods (Captum's and pytorch-grad-cam's classes, short forms), beyond
# those that already match a registered name once case, '-', '_' and spaces are ignored (IntegratedGradients,
# InputXGradient, GuidedBackprop, GradientShap, KernelShap, Lime, Occlusion, GradCAM, XGradCAM, LayerCAM,
# HiResCAM, ScoreCAM, EigenCAM, GuidedGradCam, RISE, SmoothGrad match by themselves).
ALIASES: dict[str, str] = {
    "Saliency": "vanilla",  # Captum
    "VanillaGradient": "vanilla",
    "Deconvolution": "deconvnet",  # Captum
    "GuidedBackpropagation": "guided-backprop",
    "NoiseTunnel": "smoothgrad",  # Captum's NoiseTunnel, nt_type="smoothgrad"
    "IG": "integrated-gradients",
    "GradCAMPlusPlus": "gradcam++",  # pytorch-grad-cam
    "GradCAMpp": "gradcam++",
}


def names() -> list[str]:
    return list(REGISTRY)


def name_key(name: str) -> str:
    """How names are compared: ``GradCAM``, ``grad-cam``, ``Grad_CAM`` and ``gradcam`` are one key."""
    return "".join(ch for ch in str(name).lower() if ch not in "-_ ")


def _spellings() -> dict[str, str]:
    """``name_key`` -> registered name, for the registered names and the aliases."""
    found = {name_key(alias): target for alias, target in ALIASES.items()}
    found.update({name_key(name): name for name in REGISTRY})
    return found


def canonical(name: str) -> str:
    """The registered name that ``name`` means (any case; '-', '_' and spaces ignored; aliases such as
    ``Saliency`` or ``GradCAMPlusPlus``). An unknown name is a usage error naming the close ones."""
    if name in REGISTRY:
        return name
    spellings = _spellings()
    wanted = name_key(name)
    if wanted in spellings:
        return spellings[wanted]
    close = difflib.get_close_matches(wanted, list(spellings), n=1, cutoff=0.6)
    hint = f" Did you mean '{spellings[close[0]]}'?" if close else ""
    raise UsageError(f"unknown method '{name}'.{hint} Methods: {', '.join(REGISTRY)}")


def aliases(name: str) -> list[str]:
    """The aliases of registered method ``name`` (beyond its spellings in other cases and separators)."""
    return [alias for alias, target in ALIASES.items() if target == name]


def get(name: str) -> type[Method]:
    """The class of method ``name``, named as ``canonical`` accepts it."""
    return REGISTRY[canonical(name)]


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
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            number = int(value)
            if abs(number) > MAX_COUNT:
                raise UsageError(f"{where} takes at most {MAX_COUNT:,}; got {number:,}")
            return number
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise UsageError(f"{where} must be a finite number; got '{value}'")
            return number
        if kind in (str, typing.Optional[str]):
            return None if kind is not str and str(value).lower() in ("none", "") else str(value)
        if typing.get_origin(kind) is tuple:
            items = value if isinstance(value, (list, tuple)) else str(value).split(",")
            return tuple(int(v) for v in items)
    except (ValueError, TypeError):  # TypeError: a TOML list, table or date where a number belongs
        kind_name = getattr(kind, "__name__", str(kind))
        article = "an" if kind_name[:1] in "aeiou" else "a"
        raise UsageError(f"{where} takes {article} {kind_name}; got '{value}'") from None
    return value


def create(name: str, raw: dict[str, Any] | None = None) -> Method:
    """Instantiate method ``name`` with parameters given as strings or TOML values."""
    cls = get(name)
    name = cls.name
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
            "aliases": aliases(name),
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
