"""A ``torch.export`` program (``torch.export.save``; ``FILE.pt2``, or any name: it is known by its content). Loading it unpickles data, so it needs
``trust_checkpoint``. It stays in the mode it was exported in (``load_model`` does not call ``eval()``)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelLoadError, setting
from . import Source, content, existing_file, register


@register("export")
class ExportedProgram(Source):
    forms = ("FILE.pt2",)
    summary = f"a `torch.export` program, only with {setting('trust_checkpoint')}"
    order = 60

    def claims(self, spec: str) -> bool:
        kind = content(spec)
        return kind == "export" or (kind is None and Path(spec).suffix == ".pt2")

    def build(self, spec, weights, trust):
        import torch

        from ..models import TRUST_HINT, LoadedModel, sha256

        path = existing_file(spec, "model")
        if not trust:
            raise ModelLoadError(f"{path} is a torch.export program; loading it unpickles data, so {TRUST_HINT}")
        try:
            module = torch.export.load(str(path)).module()
        except Exception as exc:  # noqa: BLE001 - any failure here is a load failure
            raise ModelLoadError(f"could not load the torch.export program {path}: {exc}") from exc
        return LoadedModel(module, spec, self.name, {str(path): sha256(path)})
