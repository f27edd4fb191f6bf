"""``hf:DIR`` or ``hf:ID``: a Hugging Face transformers image classifier (``AutoModelForImageClassification``)
from a local folder (``config.json`` with ``model.safetensors`` or ``pytorch_model.bin``, as ``save_pretrained``
writes them) or from the local Hugging Face hub cache. Never the network, unless ``SALCLI_ALLOW_DOWNLOAD=1``.

Its preset comes from the model's ``preprocessor_config.json`` (size, crop, mean/std, resample) and its class
names from ``config.json``'s ``id2label``: plain JSON, read without importing transformers. The model is returned
as transformers builds it; salcli reads the ``.logits`` of its ``ImageClassifierOutput`` (``salcli.logits``).

The helpers ``hub_cache``, ``cached`` and ``download_allowed`` are shared with the timm source.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError, setting
from . import Source, register

PREFIX = "hf:"
ALLOW_DOWNLOAD = "SALCLI_ALLOW_DOWNLOAD"  # =1: sources may download published weights (timm, hf)
INSTALL = "pip install 'salcli[hf]'"
SAFETENSORS, PICKLED, PROCESSOR = "model.safetensors", "pytorch_model.bin", "preprocessor_config.json"
# PIL resampling codes as transformers' image processors save them -> salcli's interpolations. Lanczos, box and
# hamming, which salcli does not offer, get the nearest in kind.
RESAMPLE = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bilinear"}
NAMED_RESAMPLE = {"nearest": "nearest", "lanczos": "bicubic", "bilinear": "bilinear", "bicubic": "bicubic",
                  "box": "bilinear", "hamming": "bilinear"}


# ---------------------------------------------------------------------------------------------- shared helpers
def download_allowed() -> bool:
    """Whether the user let salcli download published weights (``SALCLI_ALLOW_DOWNLOAD=1``)."""
    return os.environ.get(ALLOW_DOWNLOAD, "").strip().lower() in ("1", "true", "yes", "on")


def hub_cache() -> Path:
    """The Hugging Face hub cache folder, read from the environment now (``HF_HUB_CACHE``, else
    ``HF_HOME``/hub, else ``XDG_CACHE_HOME``/huggingface/hub, else ~/.cache/huggingface/hub), as huggingface_hub
    resolves it, but at call time rather than at its import."""
    env = os.environ
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(name):
            return Path(env[name]).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def cached(repo_id: str, filenames) -> Path | None:
    """The first of ``filenames`` that the local hub cache holds for ``repo_id`` (its ``main`` revision), or
    None. Never touches the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in filenames:
        try:
            found = try_to_load_from_cache(repo_id, filename, cache_dir=str(hub_cache()))
        except Exception:  # noqa: BLE001 - an ID huggingface_hub refuses (bad characters) is simply not cached
            return None
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def get_hint(repo_id: str) -> str:
    """How the user gets ``repo_id`` into the cache."""
    return f"download it once with `hf download {repo_id}`, or set {ALLOW_DOWNLOAD}=1 to let salcli download it"


# ---------------------------------------------------------------------------------------------- the source
@register("hf")
class HuggingFace(Source):
    forms = ("hf:DIR", "hf:ID")
    summary = ("a transformers image classifier (`AutoModelForImageClassification`) from a folder written by "
               f"`save_pretrained` or the local Hugging Face cache ({ALLOW_DOWNLOAD}=1: downloaded), with its "
               "preprocessing and `id2label` class names")
    order = 22

    def claims(self, spec: str) -> bool:
        return spec.startswith(PREFIX)

    def build(self, spec, weights, trust):
        from ..models import LoadedModel, sha256

        folder, repo_id = _locate(spec)
        transformers = _transformers()
        if repo_id and download_allowed() and (folder is None or weights is None and not _weight_files(folder)):
            folder = _download(spec, repo_id)
        config = _config(spec, folder)
        _check_classifier(spec, config)
        labels = _labels(config.to_dict())
        if weights is not None:  # salcli loads the user's weights after build: no weights file needed here
            module = transformers.AutoModelForImageClassification.from_config(config)
            config_file = folder / "config.json"
            return LoadedModel(module, spec, self.name, {str(config_file): sha256(config_file)}, labels=labels)
        files = _weight_files(folder)
        if not files:
            where = f"the local hub cache's copy of {repo_id}" if repo_id else str(folder)
            hint = f"; {get_hint(repo_id)}" if repo_id else ""
            raise ModelLoadError(f"{_named(spec)}: no {SAFETENSORS} or {PICKLED} in {where} ({folder}){hint}, "
                                 f"or give the weights with {setting('weights')} FILE")
        module = _from_pretrained(spec, folder, config, transformers)
        sums = {str(path): sha256(path) for path in [folder / "config.json", *files]}
        return LoadedModel(module, spec, self.name, sums, labels=labels)

    def preset(self, spec):
        try:
            folder, repo_id = _locate(spec)
        except ModelLoadError:
            return {}, None
        pre_path, config_path = (folder / PROCESSOR, folder / "config.json") if folder else (
            _cached_or_fetched(repo_id, PROCESSOR), _cached_or_fetched(repo_id, "config.json"))
        config = _read_json(config_path) or {}
        processor = _read_json(pre_path)
        return (preprocess_of(processor, config) if processor else {}), _labels(config)


# ---------------------------------------------------------------------------------------------- locating
def _locate(spec: str) -> tuple[Path | None, str | None]:
    """(folder, None) for a local folder; (snapshot folder, ID) for a hub ID the cache holds; (None, ID) for one
    it does not hold. A path that is not a folder is a load error."""
    text = spec[len(PREFIX):].strip()
    if not text:
        raise ModelLoadError(f"{_named(spec)}: give a folder (hf:DIR) or a Hugging Face model ID "
                             "(hf:ORG/NAME)")
    path = Path(text).expanduser()
    if path.is_dir():
        return path, None
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text:
        what = "not a folder" if path.exists() else "no such folder"
        raise ModelLoadError(f"{_named(spec)}: {what}. hf:DIR takes a folder holding config.json and "
                             f"{SAFETENSORS} (what save_pretrained writes); hf:ID a model ID such as "
                             "google/vit-base-patch16-224")
    config = cached(text, ["config.json"])
    return (config.parent if config is not None else None), text


def _cached_or_fetched(repo_id: str, filename: str) -> Path | None:
    """A small file of an uncached ID for the preset: downloaded only when the user allowed downloads."""
    if not download_allowed():
        return None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id, filename, cache_dir=str(hub_cache())))
    except Exception:  # noqa: BLE001 - no such file, or no network: the preset is unknown, build says why
        return None


def _download(spec: str, repo_id: str) -> Path:
    """The snapshot folder of ``repo_id``, downloaded (the user set SALCLI_ALLOW_DOWNLOAD=1)."""
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", SAFETENSORS, "model.safetensors.index.json", "model-*.safetensors"]
        folder = Path(snapshot_download(repo_id, cache_dir=str(hub_cache()), allow_patterns=patterns))
        if not _weight_files(folder):  # an old repository with pickled weights only
            folder = Path(snapshot_download(repo_id, cache_dir=str(hub_cache()),
                                            allow_patterns=[PICKLED, "pytorch_model.bin.index.json",
                                                            "pytorch_model-*.bin"]))
    except Exception as exc:  # noqa: BLE001 - network, authentication, no such repository
        raise ModelLoadError(f"{_named(spec)}: could not download {repo_id} from the Hugging Face Hub "
                             f"({type(exc).__name__}: {exc})") from exc
    return folder


def _weight_files(folder: Path) -> list[Path]:
    """The weight files transformers loads from ``folder``: safetensors when there are any, else pickled ones
    (a sharded checkpoint: every shard its index names)."""
    for single, index in ((SAFETENSORS, "model.safetensors.index.json"), (PICKLED, "pytorch_model.bin.index.json")):
        if (folder / single).is_file():
            return [folder / single]
        table = _read_json(folder / index)
        if table and isinstance(table.get("weight_map"), dict):
            shards = [folder / name for name in sorted(set(table["weight_map"].values()))]
            if all(p.is_file() for p in shards):
                return shards
    return []


def _read_json(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------------------------------------- building
def _transformers():
    try:
        import transformers
    except ImportError:
        raise ModelLoadError(f"hf:DIR and hf:ID models need Hugging Face transformers: {INSTALL}") from None
    return transformers


def _config(spec: str, folder: Path | None):
    if folder is None:
        repo_id = spec[len(PREFIX):].strip()
        raise ModelLoadError(f"{_named(spec)}: {repo_id} is not in the local Hugging Face cache "
                             f"({hub_cache()}) and is not a folder. salcli downloads nothing unless asked: "
                             f"{get_hint(repo_id)}; or give a folder written by save_pretrained (hf:DIR)")
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{_named(spec)}: no config.json in {folder}; hf:DIR takes a folder written by a "
                             f"transformers model's save_pretrained (config.json and {SAFETENSORS} or {PICKLED})")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - unknown model_type, malformed JSON
        raise ModelLoadError(f"{_named(spec)}: transformers cannot read {folder / 'config.json'} "
                             f"({type(exc).__name__}: {_first_line(exc)})") from exc


def _check_classifier(spec: str, config) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES as KNOWN

    kind = getattr(config, "model_type", None)
    if kind not in KNOWN:
        what = ", ".join(getattr(config, "architectures", None) or []) or "no architecture given"
        examples = ", ".join(k for k in ("vit", "deit", "beit", "convnext", "resnet", "swin", "efficientnet")
                             if k in KNOWN)
        raise ModelLoadError(f"{_named(spec)}: its config.json describes a '{kind}' model ({what}), not an "
                             "image classifier; hf: takes models that transformers' AutoModelForImageClassification "
                             f"loads ({examples}, ...)")


def _from_pretrained(spec: str, folder: Path, config, transformers):
    """The model with its weights, from the folder alone (no network, no remote code, pickles weights-only)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar on salcli's stderr
    try:
        module, info = transformers.AutoModelForImageClassification.from_pretrained(
            str(folder), config=config, local_files_only=True, trust_remote_code=False, output_loading_info=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{_named(spec)}: transformers could not load the model in {folder} "
                             f"({type(exc).__name__}: {_first_line(exc)})") from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ModelLoadError(f"{_named(spec)}: the weights in {folder} lack {len(missing)} tensor(s) of the "
                             f"model ({', '.join(missing[:5])}{more}); transformers would initialize them at random. "
                             "Is it a backbone without its classification head? salcli needs a fine-tuned "
                             "image classifier")
    return module


def _named(spec: str) -> str:
    """The start of a message about ``spec``: 'model= hf:...' (``--model hf:...`` on the command line)."""
    return f"{setting('model')} {spec}"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------- preset
def _labels(config: dict[str, Any]) -> tuple[str, ...] | None:
    """``id2label`` ordered by index; None unless it names every index 0..n-1 once."""
    table = config.get("id2label")
    if not isinstance(table, dict) or not table:
        return None
    try:
        by_index = {int(k): str(v) for k, v in table.items()}
    except (TypeError, ValueError):
        return None
    if sorted(by_index) != list(range(len(by_index))):
        return None
    return tuple(by_index[i] for i in range(len(by_index)))


def _edge(value) -> int | None:
    """A size entry (an int, or a dict of shortest_edge or height/width) -> one side in pixels."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, dict):
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        if "height" in value and "width" in value:  # salcli crops squares: the smaller side
            return int(min(value["height"], value["width"]))
    return None


def _floats(value) -> tuple[float, ...] | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float)) for v in value):
        return tuple(float(v) for v in value)
    return None


def preprocess_of(processor: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """A transformers ``preprocessor_config.json`` (and the model's ``config.json``) -> salcli's preprocess keys.

    - size: ``shortest_edge`` or ``height``/``width`` (an int in old configs) -> ``resize``; with
      ``do_center_crop`` and ``crop_size`` -> ``crop``, else crop = resize. ConvNeXt-style ``crop_pct``:
      resize = int(size / crop_pct), crop = size (below 384 px, as ``ConvNextImageProcessor`` does).
      A ``height``/``width`` resize (ViT) distorts non-square images; salcli keeps the aspect and crops instead.
    - ``image_mean``/``image_std``, with ``rescale_factor`` other than 1/255 folded in (salcli divides by 255);
      ``do_normalize: false`` -> mean 0, std 1.
    - ``resample`` (PIL codes: 0 nearest, 2 bilinear, 3 bicubic) -> ``interpolation``.
    - ``num_channels`` of config.json -> ``channels`` (1 or 3).
    """
    pre: dict[str, Any] = {}
    edge = _edge(processor.get("size")) if processor.get("do_resize", True) else None
    crop = _edge(processor.get("crop_size")) if processor.get("do_center_crop") else None
    crop_pct = processor.get("crop_pct")
    if edge is not None:
        if isinstance(crop_pct, (int, float)) and 0 < crop_pct < 1 and (edge < 384 or crop is not None):
            pre["resize"], pre["crop"] = int(edge / crop_pct), crop or edge
        else:
            pre["resize"], pre["crop"] = edge, crop or edge
        pre["crop"] = min(pre["crop"], pre["resize"])
    elif crop is not None:
        pre["resize"] = pre["crop"] = crop
    channels = config.get("num_channels", 3)
    if channels in (1, 3):
        pre["channels"] = channels
    mean, std = _floats(processor.get("image_mean")), _floats(processor.get("image_std"))
    if processor.get("do_normalize", True) is False:
        mean, std = (0.0,), (1.0,)
    if mean is not None and std is not None:
        rescale = processor.get("rescale_factor", 1 / 255) if processor.get("do_rescale", True) else 1.0
        scale = 255.0 * float(rescale)  # salcli computes (x/255 - mean) / std; transformers (x*rescale - m) / s
        if not math.isclose(scale, 1.0, rel_tol=1e-9):
            mean, std = tuple(m / scale for m in mean), tuple(s / scale for s in std)
        pre["mean"], pre["std"] = mean, std
    resample = processor.get("resample")
    if isinstance(resample, str):
        resample = NAMED_RESAMPLE.get(resample.lower().rsplit(".", 1)[-1])
    elif isinstance(resample, int):
        resample = RESAMPLE.get(resample)
    if resample:
        pre["interpolation"] = resample
    return pre
