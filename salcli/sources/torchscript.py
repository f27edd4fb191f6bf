"""``FILE.pt``, ``FILE.pth`` or ``FILE.ts`` that is a TorchScript archive (``torch.jit.save``): loaded without
running pickled code, so it needs no trust. Only input-gradient methods apply (no layer hooks)."""

from __future__ import annotations

import zipfile
from pathlib import Path

from ..errors import ModelLoadError
from . import MODULE_SUFFIXES, Source, existing_file, register


@register("torchscript")
class TorchScript(Source):
    forms = ("FILE.pt", "FILE.pth", "FILE.ts")
    summary = "a TorchScript archive (input-gradient methods only)"
    order = 40

    def claims(self, spec: str) -> bool:
        path = Path(spec).expanduser()
        return path.suffix in MODULE_SUFFIXES and path.is_file() and is_torchscript(path)

    def build(self, spec, weights, trust):
        import torch

        from ..models import LoadedModel, sha256

        path = existing_file(spec, "model")
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"could not load the TorchScript archive {path}: {exc}") from exc
        return LoadedModel(module, spec, self.name, {str(path): sha256(path)})


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a zip holding TorchScript code (a plain ``torch.save`` zip holds none)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
