"""A file written by ``torch.save`` (a zip or a legacy pickle, any extension) given as the model: a whole module.
Unpickling it runs code, so it loads only with ``trust_checkpoint``; without it, the file is read as plain
data only to say what it holds (a state dict goes to ``weights``)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelLoadError, setting
from . import MODULE_SUFFIXES, Source, content, existing_file, register


@register("pickle")
class PickledModule(Source):
    forms = ("FILE.pt", "FILE.pth")
    summary = (f"a whole `torch.nn.Module` saved with `torch.save`, any extension, only with "
               f"{setting('trust_checkpoint')}")
    order = 50

    def claims(self, spec: str) -> bool:
        kind = content(spec)
        return kind in ("torch-zip", "pickle") or (kind is None and Path(spec).suffix in MODULE_SUFFIXES)

    def build(self, spec, weights, trust):
        from ..models import LoadedModel, sha256

        path = existing_file(spec, "model")
        checksums = {str(path): sha256(path)}
        return LoadedModel(_load(path) if trust else _refuse(path), spec, self.name, checksums)


def _refuse(path: Path):
    """Read ``path`` as plain data (no code runs) only to say why it cannot be the model without trust."""
    import torch

    from ..models import TRUST_HINT

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not loadable as plain data: it needs trust
        raise ModelLoadError(f"{path} is not a TorchScript archive; {TRUST_HINT}") from None
    if isinstance(obj, dict):
        raise ModelLoadError(f"{path} holds weights (a state dict), not a model: give the architecture "
                             f"with {setting('model')} (torchvision:NAME or FILE.py:FUNC) and this file with "
                             f"{setting('weights')}")
    raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not a model")


def _load(path: Path):
    import torch
    from torch import nn

    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)  # explicit trust_checkpoint only
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"could not load {path} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, nn.Module):
        raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not a torch.nn.Module; if it is a state "
                             f"dict, pass the architecture with {setting('model')} and this file with "
                             f"{setting('weights')}")
    return obj
