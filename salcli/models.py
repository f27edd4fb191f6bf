"""Model specs -> an eval-mode ``nn.Module``, plus weights, presets and labels. Which spec builds which model is
up to the model sources in ``salcli.sources`` (one module each); this module loads weights and freezes the model.

Nothing that runs pickled code is loaded unless the user passed ``--trust-checkpoint``: without it a failed
weights-only load is an error naming what blocked it, never retried with ``weights_only=False``; with it the
user has said the file is trusted (``salcli.checkpoint``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import checkpoint, sources
from .config import Preprocess, RunConfig
from .errors import ModelLoadError, UsageError, setting
from .logits import OutputError, logits_of

TRUST_HINT = checkpoint.TRUST_HINT


@dataclass
class LoadedModel:
    """A ready model and where it came from."""

    module: nn.Module
    spec: str
    kind: str  # builtin | torchvision | factory | torchscript | pickle | export
    checksums: dict[str, str] = field(default_factory=dict)  # file -> sha256
    labels: tuple[str, ...] | None = None  # class names the model or its checkpoint carries
    notes: list[str] = field(default_factory=list)  # what the user should know about how it was loaded
    weights: dict | None = None  # how the weights file was read (checkpoint.describe), for run.json
    random_weights: bool = False  # nothing trained was loaded: the source's random initialization (seeded)

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
def load_model(spec: str, weights: str | None = None, trust: bool = False,
               weights_key: str | None = None, seed: int = 0) -> LoadedModel:
    """Build the model named by ``spec`` (see ``salcli.sources``), load ``weights`` into it, put it in eval mode.
    ``weights_key``: the entry of a checkpoint dict that holds the state dict (default: found). The model is
    built under the global generator seeded with ``seed`` (restored after), so that whatever the source leaves
    at random initialization is the same on every run; ``random_weights`` says when nothing trained was loaded.

    Parameters are frozen (``requires_grad=False``): salcli only ever differentiates with respect to inputs.
    """
    source = sources.find(spec)
    if weights == "DEFAULT" and not source.loads_own_weights(weights):
        raise UsageError(f"{setting('weights')} DEFAULT means torchvision's published weights; it needs "
                         f"{setting('model')} torchvision:NAME")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        loaded = source.build(spec, weights, trust)
    if weights is not None and not source.loads_own_weights(weights):
        path = sources.existing_file(weights, "weights")
        report = load_weights(loaded.module, path, weights_key, trust)
        loaded.checksums[str(path)] = sha256(path)
        loaded.weights, loaded.labels = report.info, report.labels or loaded.labels
        loaded.notes += report.notes
        loaded.random_weights = False
    elif weights_key is not None:
        raise UsageError(f"{setting('weights_key')} names an entry of the {setting('weights')} file; give both")
    if loaded.kind != "export":  # an exported program is traced in the mode it was exported in
        loaded.module.eval()
    for p in loaded.module.parameters():
        p.requires_grad_(False)
    return loaded


def load_weights(module: nn.Module, path: Path, key: str | None = None,
                 trust: bool = False) -> checkpoint.Report:
    """Load the state dict in ``path`` into ``module`` (see ``salcli.checkpoint``: any file kind, containers
    unwrapped, prefixes matched, old BatchNorm state accepted); a real mismatch names the first keys that differ.
    Returns how the file was read."""
    found = checkpoint.read(path, key, trust)
    matched = checkpoint.match(found.state, module.state_dict(), path)
    on_meta = any(t.is_meta for t in (*module.parameters(), *module.buffers()))
    module.load_state_dict(matched.state, strict=True, assign=on_meta)
    if on_meta and any(t.is_meta for t in (*module.parameters(), *module.buffers())):
        raise ModelLoadError(f"the model has tensors that {path} does not hold (non-persistent buffers); "
                             f"load it through a factory ({setting('model')} FILE.py:FUNC) instead")
    return checkpoint.report(found, matched, path)


# ---------------------------------------------------------------------------------------------- presets
def resolve_preset(config: RunConfig) -> tuple[Preprocess, tuple[str, ...] | None, str | None]:
    """The model's preprocessing and labels, overridden by what the user set.

    Returns (preprocess, labels or None, a note for the user when salcli had to guess the preprocessing).
    """
    spec = config.model
    source = sources.lookup(spec)
    base, labels = source.preset(spec) if source is not None else ({}, None)
    note = None
    user = dict(config.preprocess)
    if not base and not {"mean", "std"} & set(user):
        note = (f"no preprocessing is known for {spec}: using pixels in [0, 1] (mean 0, std 1) at "
                f"{user.get('crop', user.get('resize', 224))} px; give "
                f"{setting('config_file')} or {setting('mean')}/{setting('std')}/{setting('resize')}")
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


def read_labels(source: tuple[str, ...] | str) -> tuple[str, ...]:
    """Labels given inline (a preset's list), as ``imagenet``, or as a file with one name per line."""
    if isinstance(source, tuple):
        return source
    if source == "imagenet":
        from torchvision.models import ResNet50_Weights

        return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    path = Path(source)
    if path.exists() and not path.is_file():  # a folder, or a FIFO that would block the read forever
        raise UsageError(f"{setting('labels')} {source}: not a regular file; give a text file with one class name "
                         "per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UsageError(f"{setting('labels')} {source}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{setting('labels')} {source}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise UsageError(f"{setting('labels')} {source}: not a UTF-8 text file with one class name per line") from None
    labels = tuple(line.strip() for line in lines if line.strip())
    if not labels:
        raise UsageError(f"{setting('labels')} {source}: the file holds no class names")
    return labels


def count_outputs(module: nn.Module, preprocess: Preprocess, device: torch.device) -> int:
    """Run one blank image through the model to learn its number of classes."""
    x = torch.zeros(1, preprocess.channels, preprocess.crop, preprocess.crop, device=device)
    try:
        with torch.no_grad():
            out = module(x)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"the model failed on a {tuple(x.shape)} input ({type(exc).__name__}: {exc}); "
                             f"check {setting('resize')}/{setting('crop')}/{setting('channels')} against what the "
                             "model expects") from exc
    try:
        return int(logits_of(out).shape[1])
    except OutputError as exc:
        raise ModelLoadError(str(exc)) from None
