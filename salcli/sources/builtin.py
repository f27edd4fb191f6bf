"""``builtin:NAME``: a model that ships inside salcli (``salcli.builtin.BUILTINS``), weights, preprocessing and
class names included. Without ``weights`` its packaged weights are loaded; with them, the user's are."""

from __future__ import annotations

from typing import Any

from ..errors import ModelLoadError, did_you_mean
from . import Source, register

PREFIX = "builtin:"


def _entry(spec: str) -> tuple[str, dict[str, Any] | None]:
    from ..builtin import BUILTINS

    name = spec[len(PREFIX):]
    return name, BUILTINS.get(name)


@register("builtin")
class Builtin(Source):
    forms = ("builtin:NAME",)
    summary = "a model that ships inside salcli (weights, preprocessing and class names included)"
    order = 10

    def claims(self, spec: str) -> bool:
        return spec.startswith(PREFIX)

    def build(self, spec, weights, trust):
        from ..builtin import BUILTINS
        from ..models import LoadedModel, load_weights, sha256

        name, entry = _entry(spec)
        if entry is None:
            raise ModelLoadError(f"unknown builtin model '{name}'.{did_you_mean(name, BUILTINS)} "
                                 f"Builtin models: {', '.join(BUILTINS)}")
        module = entry["factory"]()
        if weights is not None:
            return LoadedModel(module, spec, self.name)
        if not entry["weights"].exists():
            raise ModelLoadError(f"the weights of builtin:{name} are missing from the installation "
                                 f"({entry['weights']}); reinstall salcli")
        load_weights(module, entry["weights"])
        return LoadedModel(module, spec, self.name, {str(entry["weights"].name): sha256(entry["weights"])})

    def preset(self, spec):
        _, entry = _entry(spec)
        return (dict(entry["preprocess"]), tuple(entry["labels"])) if entry else ({}, None)
