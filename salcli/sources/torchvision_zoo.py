"""``torchvision:NAME``: ``torchvision.models.NAME``, random init unless ``weights`` is given (a file, or
``DEFAULT`` for torchvision's published weights). Its preset comes from the weights' metadata."""

from __future__ import annotations

from ..errors import ModelLoadError, did_you_mean, setting
from . import Source, register

PREFIX = "torchvision:"


@register("torchvision")
class Torchvision(Source):
    forms = ("torchvision:NAME",)
    summary = (f"`torchvision.models.NAME`, random init unless {setting('weights')} "
               f"(a file, or DEFAULT for torchvision's published weights)")
    order = 20

    def claims(self, spec: str) -> bool:
        return spec.startswith(PREFIX)

    def build(self, spec, weights, trust):
        from ..models import LoadedModel

        return LoadedModel(_torchvision(spec[len(PREFIX):], weights), spec, self.name, random_weights=weights is None)

    def loads_own_weights(self, weights):
        return weights == "DEFAULT"

    def preset(self, spec):
        import torchvision

        try:
            weights = torchvision.models.get_model_weights(spec[len(PREFIX):]).DEFAULT
        except (ValueError, KeyError):
            return {}, None
        t = weights.transforms()
        pre = {"resize": int(t.resize_size[0]), "crop": int(t.crop_size[0]), "mean": tuple(t.mean),
               "std": tuple(t.std), "channels": 3, "interpolation": t.interpolation.value}
        return pre, tuple(weights.meta["categories"])


def _torchvision(name: str, weights: str | None):
    import torch
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ModelLoadError(f"torchvision has no model '{name}'.{did_you_mean(name, available)} "
                             "See torchvision.models.list_models()")
    if weights is not None and weights != "DEFAULT":
        with torch.device("meta"):  # no random initialization: every tensor comes from the weights file
            return torchvision.models.get_model(name, weights=None)
    if weights != "DEFAULT":
        return torchvision.models.get_model(name, weights=None)
    try:
        return torchvision.models.get_model(name, weights="DEFAULT")
    except Exception as exc:  # noqa: BLE001 - network or cache failure
        raise ModelLoadError(
            f"could not get torchvision's published weights for {name} ({type(exc).__name__}: {exc}). "
            "They come from the network or torch's cache (TORCH_HOME); without either, download the file "
            f"elsewhere and pass it with {setting('weights')} FILE") from exc
