"""Model specs -> an eval-mode ``nn.Module``: builtin models, torchvision, factories, TorchScript, checkpoints.

Nothing that runs pickled code is loaded unless the user passed ``--trust-checkpoint``; a failed weights-only
load is never retried with ``weights_only=False``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Preprocess, RunConfig
from .errors import ModelLoadError, UsageError, did_you_mean

STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
MODULE_SUFFIXES = (".pt", ".pth", ".ts")
TRUST_HINT = ("it holds pickled Python objects, which run code when loaded. If you trust where it came from, "
              "add --trust-checkpoint; safer: save a state dict (safetensors) and load it with --weights")


@dataclass
class LoadedModel:
    """A ready model and where it came from."""

    module: nn.Module
    spec: str
    kind: str  # builtin | torchvision | factory | torchscript | pickle | export
    checksums: dict[str, str] = field(default_factory=dict)  # file -> sha256

    @property
    def scripted(self) -> bool:
        return isinstance(self.module, torch.jit.ScriptModule)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- loading
def load_model(spec: str, weights: str | None = None, trust: bool = False) -> LoadedModel:
    """Build the model named by ``spec``, load ``weights`` into it, put it in eval mode.

    Parameters are frozen (``requires_grad=False``): salcli only ever differentiates with respect to inputs.
    """
    loaded = _build(spec, weights, trust)
    if weights is not None and not (loaded.kind == "torchvision" and weights == "DEFAULT"):
        path = _existing(weights, "--weights")
        load_weights(loaded.module, path)
        loaded.checksums[str(path)] = sha256(path)
    if loaded.kind != "export":  # an exported program is traced in the mode it was exported in
        loaded.module.eval()
    for p in loaded.module.parameters():
        p.requires_grad_(False)
    return loaded


def _build(spec: str, weights: str | None, trust: bool) -> LoadedModel:
    if spec.startswith("builtin:"):
        from .builtin import BUILTINS

        name = spec.split(":", 1)[1]
        if name not in BUILTINS:
            raise ModelLoadError(f"unknown builtin model '{name}'.{did_you_mean(name, BUILTINS)} "
                                 f"Builtin models: {', '.join(BUILTINS)}")
        entry = BUILTINS[name]
        module = entry["factory"]()
        if weights is None:
            if not entry["weights"].exists():
                raise ModelLoadError(f"the weights of builtin:{name} are missing from the installation "
                                     f"({entry['weights']}); reinstall salcli")
            load_weights(module, entry["weights"])
            return LoadedModel(module, spec, "builtin", {str(entry["weights"].name): sha256(entry["weights"])})
        return LoadedModel(module, spec, "builtin")
    if spec.startswith("torchvision:"):
        return LoadedModel(_torchvision(spec.split(":", 1)[1], weights), spec, "torchvision")
    if weights == "DEFAULT":
        raise UsageError("--weights DEFAULT means torchvision's published weights; it needs --model torchvision:NAME")
    if ":" in spec and not Path(spec).exists():
        target, func = spec.rsplit(":", 1)
        module = _factory(target, func)
        checksums = {target: sha256(Path(target))} if target.endswith(".py") else {}
        return LoadedModel(module, spec, "factory", checksums)
    path = _existing(spec, "--model")
    checksums = {str(path): sha256(path)}
    if path.suffix == ".pt2":
        if not trust:
            raise ModelLoadError(f"{path} is a torch.export program; loading it unpickles data, so "
                                 f"{TRUST_HINT}")
        try:
            return LoadedModel(torch.export.load(str(path)).module(), spec, "export", checksums)
        except Exception as exc:  # noqa: BLE001 - any failure here is a load failure
            raise ModelLoadError(f"could not load the torch.export program {path}: {exc}") from exc
    if path.suffix not in MODULE_SUFFIXES:
        raise UsageError(f"--model {spec}: expected builtin:NAME, torchvision:NAME, FILE.py:FUNC, "
                         f"package.module:FUNC, or a .pt/.pth/.ts/.pt2 file")
    if _is_torchscript(path):
        try:
            return LoadedModel(torch.jit.load(str(path), map_location="cpu"), spec, "torchscript", checksums)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"could not load the TorchScript archive {path}: {exc}") from exc
    return LoadedModel(_pickled_module(path, trust), spec, "pickle", checksums)


def _existing(path_text: str, option: str) -> Path:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"{option} {path_text}: no such file")
    return path


def _torchvision(name: str, weights: str | None) -> nn.Module:
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
            "elsewhere and pass it with --weights FILE") from exc


def _factory(target: str, func: str) -> nn.Module:
    try:
        if target.endswith(".py"):
            path = _existing(target, "--model")
            name = f"salcli_user_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's file failed to import
        raise ModelLoadError(f"could not import {target} ({type(exc).__name__}: {exc})") from exc
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


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def _pickled_module(path: Path, trust: bool) -> nn.Module:
    if not trust:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - not loadable as plain data: it needs trust
            raise ModelLoadError(f"{path} is not a TorchScript archive; {TRUST_HINT}") from None
        if isinstance(obj, dict):
            raise ModelLoadError(f"{path} holds weights (a state dict), not a model: give the architecture "
                                 f"with --model (torchvision:NAME or FILE.py:FUNC) and this file with --weights")
        raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not a model")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)  # explicit --trust-checkpoint only
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"could not load {path} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, nn.Module):
        raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not a torch.nn.Module; if it is a state "
                             "dict, pass the architecture with --model and this file with --weights")
    return obj


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a weights-only torch file; unwraps ``state_dict``/``model`` and
    strips a ``module.`` prefix (DataParallel/DDP)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelLoadError(f"could not read safetensors file {path}: {exc}") from exc
    elif path.suffix in STATE_DICT_SUFFIXES:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"could not read {path} as weights only ({type(exc).__name__}). If it is a "
                                 f"pickled whole model, {TRUST_HINT}") from exc
    else:
        raise ModelLoadError(f"--weights {path}: expected .safetensors, .pt, .pth, .bin or .ckpt")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(module: nn.Module, path: Path) -> None:
    """Load a state dict strictly; a mismatch names the first few keys that differ."""
    state = read_state_dict(path)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if items:
                more = f" and {len(items) - 5} more" if len(items) > 5 else ""
                parts.append(f"{label} ({len(items)}): {', '.join(items[:5])}{more}")
        raise ModelLoadError(f"the weights in {path} do not fit the model: {'; '.join(parts)}. "
                             "Check that --model names the architecture these weights were trained for")
    on_meta = any(t.is_meta for t in (*module.parameters(), *module.buffers()))
    module.load_state_dict(state, strict=True, assign=on_meta)
    if on_meta and any(t.is_meta for t in (*module.parameters(), *module.buffers())):
        raise ModelLoadError(f"the model has tensors that {path} does not hold (non-persistent buffers); "
                             "load it through a factory (--model FILE.py:FUNC) instead")


# ---------------------------------------------------------------------------------------------- presets
def resolve_preset(config: RunConfig) -> tuple[Preprocess, tuple[str, ...] | None, str | None]:
    """The model's preprocessing and labels, overridden by what the user set.

    Returns (preprocess, labels or None, a note for the user when salcli had to guess the preprocessing).
    """
    base: dict[str, Any] = {}
    labels: tuple[str, ...] | None = None
    note = None
    spec = config.model
    if spec.startswith("builtin:"):
        from .builtin import BUILTINS

        entry = BUILTINS.get(spec.split(":", 1)[1])
        if entry:
            base, labels = dict(entry["preprocess"]), tuple(entry["labels"])
    elif spec.startswith("torchvision:"):
        base, labels = _torchvision_preset(spec.split(":", 1)[1])
    user = dict(config.preprocess)
    if not base and not {"mean", "std"} & set(user):
        note = (f"no preprocessing is known for {spec}: using pixels in [0, 1] (mean 0, std 1) at "
                f"{user.get('crop', user.get('resize', 224))} px; give --config or --mean/--std/--resize")
    merged = {**base, **user}
    if "resize" in user and "crop" not in user:
        merged["crop"] = min(merged.get("crop", user["resize"]), user["resize"])
    if "crop" in user and "resize" not in user and merged.get("resize", 0) < user["crop"]:
        merged["resize"] = user["crop"]
    if "channels" in user and "mean" not in user and len(merged.get("mean", ())) not in (1, user["channels"]):
        merged.pop("mean", None), merged.pop("std", None)
    if "mean" not in merged:
        merged["mean"], merged["std"] = (0.0,), (1.0,)
    preprocess = Preprocess(**merged)
    if config.labels is not None:
        labels = read_labels(config.labels)
    return preprocess, labels, note


def _torchvision_preset(name: str) -> tuple[dict[str, Any], tuple[str, ...] | None]:
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        return {}, None
    t = weights.transforms()
    pre = {"resize": int(t.resize_size[0]), "crop": int(t.crop_size[0]), "mean": tuple(t.mean),
           "std": tuple(t.std), "channels": 3, "interpolation": t.interpolation.value}
    return pre, tuple(weights.meta["categories"])


def read_labels(source: tuple[str, ...] | str) -> tuple[str, ...]:
    """Labels given inline (a preset's list), as ``imagenet``, or as a file with one name per line."""
    if isinstance(source, tuple):
        return source
    if source == "imagenet":
        from torchvision.models import ResNet50_Weights

        return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    path = Path(source)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UsageError(f"--labels {source}: no such file") from None
    except UnicodeDecodeError:
        raise UsageError(f"--labels {source}: not a UTF-8 text file with one class name per line") from None
    labels = tuple(line.strip() for line in lines if line.strip())
    if not labels:
        raise UsageError(f"--labels {source}: the file holds no class names")
    return labels


def count_outputs(module: nn.Module, preprocess: Preprocess, device: torch.device) -> int:
    """Run one blank image through the model to learn its number of classes."""
    x = torch.zeros(1, preprocess.channels, preprocess.crop, preprocess.crop, device=device)
    try:
        with torch.no_grad():
            out = module(x)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"the model failed on a {tuple(x.shape)} input ({type(exc).__name__}: {exc}); "
                             "check --resize/--crop/--channels against what the model expects") from exc
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise ModelLoadError(f"the model must return logits of shape (batch, classes); it returned "
                             f"{getattr(out, 'shape', type(out).__name__)}")
    return int(out.shape[1])
