"""``timm:NAME``: ``timm.create_model(NAME)``, NAME an architecture with an optional pretrained tag
(``resnet50.a1_in1k``; without a tag, timm's default one). The architecture is built with no download.

Weights, in this order: ``weights`` (a file, loaded by ``salcli.models.load_model`` after build); the tag's
published weights when the local Hugging Face cache holds them (timm keeps them on the Hub as
``timm/NAME.TAG``); a download by timm when the user set ``SALCLI_ALLOW_DOWNLOAD=1``; else random init, with a
note saying so. The preset (input size, crop_pct, interpolation, mean/std) comes from timm's ``pretrained_cfg``
and the class names from timm's ImageNet tables, all without building the model or reading the network.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import ModelLoadError, did_you_mean, setting
from . import Source, register
from .huggingface import ALLOW_DOWNLOAD, cached, download_allowed, get_hint, hub_cache

PREFIX = "timm:"
INSTALL = "pip install 'salcli[timm]'"
DEFAULT_CROP_PCT = 0.875  # timm's, for a pretrained_cfg without one
# timm's interpolation names -> salcli's; those salcli lacks get the nearest in kind ("random" is for training).
INTERPOLATIONS = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest", "lanczos": "bicubic",
                  "box": "bilinear", "hamming": "bilinear", "random": "bilinear"}


@register("timm")
class Timm(Source):
    forms = ("timm:NAME",)
    summary = ("`timm.create_model(NAME)`, NAME optionally with a pretrained tag (`resnet50.a1_in1k`): weights "
               f"from {setting('weights')}, else the local Hugging Face cache, else random init "
               f"({ALLOW_DOWNLOAD}=1: downloaded); timm's preprocessing and class names")
    order = 21  # before the factory source, which takes any "x:y"

    def claims(self, spec: str) -> bool:
        return spec.startswith(PREFIX)

    def build(self, spec, weights, trust):
        from ..models import LoadedModel, load_weights, sha256

        name = spec[len(PREFIX):].strip()
        timm = _timm()
        cfg = _checked_cfg(timm, name)
        if weights is not None:  # load_model loads them after build
            return LoadedModel(_create(timm, name, False), spec, self.name)
        hub_id = cfg.get("hf_hub_id")
        path = cached(hub_id, _filenames(cfg)) if hub_id else None
        published = bool(hub_id or cfg.get("url"))
        if path is None and published and download_allowed():
            module = _create(timm, name, True)
            path = cached(hub_id, _filenames(cfg)) if hub_id else None
            sums = {str(path): sha256(path)} if path is not None else {}
            return LoadedModel(module, spec, self.name, sums, notes=[f"{spec}: pretrained weights downloaded by "
                                                                     f"timm ({ALLOW_DOWNLOAD}=1)"])
        module = _create(timm, name, False)
        if path is None:
            return LoadedModel(module, spec, self.name, notes=[_random_note(spec, name, cfg)], random_weights=True)
        try:
            load_weights(module, path)
        except ModelLoadError:  # a layout timm converts on load (its filter_fn): let timm read the same file
            module = _create(timm, name, True, file=str(path))
        return LoadedModel(module, spec, self.name, {str(path): sha256(path)},
                           notes=[f"{spec}: weights from the local Hugging Face cache ({path})"])

    def preset(self, spec):
        name = spec[len(PREFIX):].strip()
        try:
            timm = _timm()
            cfg = _pretrained_cfg(timm, name)
        except (ModelLoadError, RuntimeError):
            return {}, None
        if cfg is None:
            return {}, None
        return preprocess_of(cfg), labels_of(cfg)


def _timm():
    try:
        import timm
    except ImportError:
        raise ModelLoadError(f"timm:NAME models need timm: {INSTALL}") from None
    return timm


def _pretrained_cfg(timm, name: str) -> dict[str, Any] | None:
    """timm's pretrained_cfg of ``name`` (the default tag's without one) as a dict; None for an unknown
    architecture; RuntimeError for an unknown tag."""
    from timm.models import get_pretrained_cfg

    if not name or not timm.is_model(name):
        return None
    cfg = get_pretrained_cfg(name)
    return cfg.to_dict() if cfg is not None else None


def _checked_cfg(timm, name: str) -> dict[str, Any]:
    """The pretrained_cfg of a name timm knows; an unknown architecture or tag is a load error with a suggestion."""
    arch, _, tag = name.partition(".")
    if not name or not timm.is_model(arch):
        raise ModelLoadError(f"timm has no model '{name}'.{did_you_mean(arch, timm.list_models())} "
                             "See timm.list_models()")
    try:
        cfg = _pretrained_cfg(timm, name)
    except RuntimeError:
        tags = timm.list_models(arch, pretrained=True)
        raise ModelLoadError(f"timm's {arch} has no pretrained tag '{tag}'.{did_you_mean(name, tags)} "
                             f"Its tags: {', '.join(t.partition('.')[2] for t in tags) or 'none'}") from None
    return cfg or {}


def _create(timm, name: str, pretrained: bool, file: str | None = None):
    """timm.create_model; ``pretrained`` downloads unless ``file`` names the weights to read."""
    kwargs: dict[str, Any] = {"pretrained": pretrained}
    if file is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": file, "source": ""}
    try:
        return timm.create_model(name, **kwargs)
    except Exception as exc:  # noqa: BLE001 - network, cache, a weights file timm cannot read
        what = (f"read the weights {file}" if file else "download the pretrained weights" if pretrained
                else "build the model")
        raise ModelLoadError(f"timm could not {what} of {name} ({type(exc).__name__}: {exc}); pass the weights "
                             f"with {setting('weights')} FILE") from exc


def _filenames(cfg: dict[str, Any]) -> list[str]:
    """The files timm reads from the Hub for these weights, safetensors first (as timm's loader prefers)."""
    name = cfg.get("hf_hub_filename") or "pytorch_model.bin"
    if name.endswith(".safetensors"):
        return [name]
    safe = "model.safetensors" if name == "pytorch_model.bin" else name.replace("pytorch_model", "model")
    return [safe.rsplit(".", 1)[0] + ".safetensors", name]


def _random_note(spec: str, name: str, cfg: dict[str, Any]) -> str:
    """What the user reads when ``spec`` runs with random weights, and how to get trained ones."""
    hub_id, url = cfg.get("hf_hub_id"), cfg.get("url")
    if hub_id:
        return (f"{spec}: random weights: the pretrained weights ({hub_id}) are not in the local Hugging Face "
                f"cache ({hub_cache()}); {get_hint(hub_id)}, or pass them with {setting('weights')} FILE")
    if url:
        return (f"{spec}: random weights: set {ALLOW_DOWNLOAD}=1 to let timm download the pretrained ones ({url}), "
                f"or pass them with {setting('weights')} FILE")
    return (f"{spec}: random weights: timm publishes no weights for {name}; pass trained ones with "
            f"{setting('weights')} FILE")


# ---------------------------------------------------------------------------------------------- preset
def preprocess_of(cfg: dict[str, Any]) -> dict[str, Any]:
    """timm's eval transform in salcli's terms: crop = input_size, resize = floor(crop / crop_pct) (timm's own
    rounding, ``transforms_imagenet_eval``), interpolation, mean/std, channels."""
    pre: dict[str, Any] = {}
    size = cfg.get("input_size") or cfg.get("test_input_size")
    if size and len(size) == 3:
        channels, height, width = (int(v) for v in size)
        crop = min(height, width)
        crop_pct = cfg.get("crop_pct") or DEFAULT_CROP_PCT
        pre["resize"], pre["crop"] = max(crop, math.floor(crop / crop_pct)), crop
        if channels in (1, 3):
            pre["channels"] = channels
    interpolation = INTERPOLATIONS.get(str(cfg.get("interpolation", "")).lower())
    if interpolation:
        pre["interpolation"] = interpolation
    if cfg.get("mean") and cfg.get("std"):
        pre["mean"], pre["std"] = tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
    return pre


def labels_of(cfg: dict[str, Any]) -> tuple[str, ...] | None:
    """Class names: the pretrained_cfg's own, else timm's ImageNet tables (1k, 12k, 21k, 22k, chosen from
    num_classes), each the first name of its description ('tench, Tinca tinca' -> 'tench'); None otherwise."""
    count = cfg.get("num_classes")
    names = cfg.get("label_names")
    if names:
        descriptions = cfg.get("label_descriptions") or {}
        labels = tuple(_short(descriptions.get(n, n)) if isinstance(descriptions, dict) else str(n) for n in names)
    else:
        try:
            from timm.data import ImageNetInfo, infer_imagenet_subset

            subset = infer_imagenet_subset(cfg)
            if subset is None:
                return None
            labels = tuple(_short(d) for d in ImageNetInfo(subset).label_descriptions())
        except (ImportError, OSError, ValueError, KeyError):
            return None
    return labels if labels and (not count or len(labels) == count) else None


def _short(description: str) -> str:
    return str(description).split(",")[0].strip()
