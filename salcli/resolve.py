"""The resolution layer: a ``RunConfig`` -> the model, preprocessing, labels, device, target, batch size and the
``Explainer`` that every command runs. ``explain``, ``evaluate`` and ``sanity`` all resolve through here, so a
setting means the same in each. Raises ``UsageError`` / ``ModelLoadError`` before any image is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import models, render
from .config import Preprocess, RunConfig
from .engine import Explainer, make_methods
from .errors import ModelLoadError, UsageError, did_you_mean, setting


@dataclass
class Resolved:
    """Everything a command needs before its first image."""

    config: RunConfig
    preprocess: Preprocess
    labels: tuple[str, ...] | None
    model: models.LoadedModel  # the model as loaded (eval mode, frozen), on ``device``
    device: torch.device
    target: int | None  # None: the top-1 prediction
    batch_size: int
    explainer: Explainer  # the engine: the fast model, the layer, the references, the chunk

    @property
    def methods(self):
        return self.explainer.methods

    @property
    def layer(self) -> str | None:
        return self.explainer.layer.name if self.explainer.layer is not None else None


def resolve(config: RunConfig, reporter=None, *, default_batch: int | None = None) -> Resolved:
    """Resolve ``config``: load the model, check it against the labels and the target, build the engine.

    ``default_batch``: the batch size when the config says ``auto`` (None: sized to the input and device)."""
    chosen = make_methods(config.methods, config.params)  # unknown methods and parameters fail first
    render.colormap_lut(config.colormap)
    preprocess, labels, note = models.resolve_preset(config)
    device = resolve_device(config.device)
    loaded = models.load_model(config.model, config.weights, config.trust_checkpoint, config.weights_key,
                               config.seed)
    if reporter is not None and loaded.random_weights:
        getattr(reporter, "warn", reporter.note)(
            f"{config.model} has random weights (no {setting('weights')}): its predictions and maps describe an "
            f"untrained network. They are seeded by {setting('seed')}, so reruns agree; give {setting('weights')} "
            "FILE (or DEFAULT for torchvision's published weights) to explain a trained model")
    if reporter is not None:
        for line in [*loaded.notes, *([note] if note else [])]:  # once the model loaded: no note before an error
            reporter.note(line)
    if labels is None and loaded.labels is not None:
        labels = loaded.labels  # carried by the checkpoint: used when neither the user nor a preset gave any
    try:
        loaded.module.to(device)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"could not move the model to {device}: {exc}") from exc
    num_classes = models.count_outputs(loaded.module, preprocess, device)
    if labels is not None and len(labels) != num_classes:
        raise ModelLoadError(f"the model has {num_classes} outputs but there are {len(labels)} class names; "
                             f"give {setting('labels')} with one name per output, or check {setting('model')}/"
                             f"{setting('weights')}")
    target = resolve_target(config.target, labels, num_classes)
    if isinstance(config.batch_size, int):
        batch_size = config.batch_size
    else:
        batch_size = default_batch or auto_batch(preprocess, device)
    explainer = Explainer(loaded.module, chosen, layer=config.layer, preprocess=preprocess, chunk=config.chunk,
                          batch_size=batch_size, precision=config.precision, optimize=config.optimize,
                          seed=config.seed, device=device, layer_maps=config.layer_maps)
    return Resolved(config, preprocess, labels, loaded, device, target, batch_size, explainer)


def resolve_device(name: str, env=None) -> torch.device:
    """The device ``name`` names. ``auto`` and a plain ``cuda`` take this process's own GPU when a launcher ran
    several processes on the node and more than one GPU is visible: ``cuda:{LOCAL_RANK % device_count}``
    (torchrun's ``LOCAL_RANK``, else Slurm's ``SLURM_LOCALID``), made the current device so that nothing
    lands on GPU 0 by default. One visible GPU (Slurm's per-task GPU binding) or ``cuda:N`` is used as is."""
    if name == "auto":
        if torch.cuda.is_available():
            return _local_cuda(env)
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    flag = setting("device")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"{flag} {name}: CUDA is not available here; use cpu or auto")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UsageError(f"{flag} {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        if name == "cuda":
            return _local_cuda(env)
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError(f"{flag} mps: MPS is not available here; use cpu or auto")
    return torch.device(name)


def _local_cuda(env=None) -> torch.device:
    import os

    env = os.environ if env is None else env
    local = next((env[k].strip() for k in ("LOCAL_RANK", "SLURM_LOCALID") if env.get(k, "").strip()), None)
    count = torch.cuda.device_count()
    if local is None or not local.isdigit() or count <= 1:
        return torch.device("cuda")
    device = torch.device("cuda", int(local) % count)
    torch.cuda.set_device(device)
    return device


def resolve_target(text: Any, labels: tuple[str, ...] | None, num_classes: int) -> int | None:
    """'pred' -> None; an index or a label -> the class index."""
    text = str(text).strip()
    flag = setting("target")
    if text == "pred":
        return None
    digits = text[1:] if text.startswith("-") else text
    if digits.isascii() and digits.isdigit():  # not '²' or '--5', which int() refuses
        index = int(text) if len(digits) <= 20 else num_classes  # int() reads at most 4300 digits
        if not 0 <= index < num_classes:
            raise UsageError(f"{flag} {text[:24]}{'...' if len(text) > 24 else ''} is out of range: the model has "
                             f"{num_classes} classes "
                             f"(0..{num_classes - 1})")
        return index
    if labels is None:
        raise UsageError(f"{flag} {text!r}: the model has no class names; give {setting('labels')} or a class index")
    folded = {name.lower(): i for i, name in enumerate(labels)}
    if text.lower() not in folded:
        raise UsageError(f"{flag} {text!r} is not a class name.{did_you_mean(text, labels)} "
                         f"Use 'pred', a class index or one of the {setting('labels')} names")
    return folded[text.lower()]


def auto_batch(preprocess: Preprocess, device: torch.device) -> int:
    """--batch-size auto: 64 images on CUDA; on the CPU 8 images at 3x224x224, up to 64 for small images (the
    per-image rate of a CPU is flat past a few images and drops once activations fall out of cache)."""
    if device.type == "cuda":
        return 64
    values = preprocess.channels * preprocess.crop * preprocess.crop
    return int(min(64, max(8, 2 ** int(np.log2(max(1, 1_204_224 // values))))))
