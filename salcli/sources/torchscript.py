"""A file that is a TorchScript archive (``torch.jit.save``), whatever its extension: loaded without
running pickled code, so it needs no trust. Only input-gradient methods apply (no layer hooks)."""

from __future__ import annotations

from ..errors import ModelLoadError
from . import Source, content, existing_file, register


@register("torchscript")
class TorchScript(Source):
    forms = ("FILE.ts", "FILE.pt")
    summary = "a TorchScript archive, any extension (input-gradient methods only)"
    order = 40

    def claims(self, spec: str) -> bool:
        return content(spec) == "torchscript"

    def build(self, spec, weights, trust):
        import torch

        from ..models import LoadedModel, sha256

        path = existing_file(spec, "model")
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"could not load the TorchScript archive {path}: {exc}") from exc
        return LoadedModel(module, spec, self.name, {str(path): sha256(path)})


