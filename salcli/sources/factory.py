"""``FILE.py:FUNC`` or ``package.module:FUNC``: a factory, called without arguments, that returns an
``nn.Module``. A spec with a colon that is not an existing file's name is taken as a factory."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from ..errors import ModelLoadError, did_you_mean
from . import Source, existing_file, register


@register("factory")
class Factory(Source):
    forms = ("FILE.py:FUNC", "package.module:FUNC")
    summary = "a function that returns a `torch.nn.Module` (called without arguments)"
    order = 30

    def claims(self, spec: str) -> bool:
        return ":" in spec and not Path(spec).exists()

    def build(self, spec, weights, trust):
        from ..models import LoadedModel, sha256

        target, func = spec.rsplit(":", 1)
        module = _call(_import(target), target, func)
        checksums = {target: sha256(Path(target))} if target.endswith(".py") else {}
        return LoadedModel(module, spec, self.name, checksums)


def _import(target: str):
    """The Python file ``target`` (imported under a name unique to its path) or the module of that name."""
    try:
        if not target.endswith(".py"):
            return importlib.import_module(target)
        path = existing_file(target, "model")
        name = f"salcli_user_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
        return module
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's file failed to import
        raise ModelLoadError(f"could not import {target} ({type(exc).__name__}: {exc})") from exc


def _call(module, target: str, func: str):
    from torch import nn

    fn = getattr(module, func, None)
    if fn is None:
        names = [n for n in dir(module) if not n.startswith("_")]
        raise ModelLoadError(f"{target} has no '{func}'.{did_you_mean(func, names)}")
    try:
        model = fn()
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{target}:{func}() failed ({type(exc).__name__}: {exc})") from exc
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{target}:{func}() returned {type(model).__name__}, not a torch.nn.Module")
    return model
