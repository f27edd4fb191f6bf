"""Provenance: what an output depends on (settings fingerprints), manifest records and run.json's contents.
Pure: dicts in, dicts out; ``outputs`` writes them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .errors import word
from .outputs import SCHEMA_VERSION


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def folder_contents(folder: str) -> str | None:
    """A fingerprint of the files under ``folder`` (relative names and bytes): reference images replaced under
    the same path change the maps, so they change the settings too. None when the folder does not exist."""
    root = Path(folder)
    if not root.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode("utf-8", "surrogateescape") + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())  # reference images: a few small files
    return digest.hexdigest()[:16]


def _params(params) -> dict[str, Any]:
    values = dataclasses.asdict(params)
    if values.get("references"):
        values["references_contents"] = folder_contents(values["references"])
    return values


def method_settings(resolved) -> dict[str, str]:
    """method -> a fingerprint of everything its outputs depend on (resume compares it)."""
    config = resolved.config
    common = {"model": config.model, "checksums": resolved.model.checksums, "weights": config.weights,
              "preprocess": dataclasses.asdict(resolved.preprocess), "target": resolved.target,
              "seed": config.seed, "colormap": config.colormap, "alpha": config.alpha,
              "labels": fingerprint(resolved.labels),
              "overlay": [getattr(config, k) for k in ("overlay_on", "overlay_size", "sign", "scale")]}
    if (resolved.model.weights or {}).get("key"):
        common["weights_key"] = resolved.model.weights["key"]  # which entry of the file the weights came from
    if config.precision != "fp32":
        common["precision"] = config.precision  # fp32 fast paths give the same maps; bf16 does not
    # --no-overlays and --map-dtype float16 change what is stored; named only when set, so that the fingerprints
    # of earlier runs stay as they were
    if not config.overlays:
        common["overlays"] = False
    if config.map_dtype != "float32":
        common["map_dtype"] = config.map_dtype
    # a layer map kept at the layer's size (--layer-maps native) is another array: named only then, and only for
    # the methods whose map is a layer's
    return {m.name: fingerprint({**common, "method": m.name, "params": _params(m.params),
                                 **({"layer": resolved.layer} if m.needs_layer else {}),
                                 **({"layer_maps": "native"} if m.layer_map and config.layer_maps == "native"
                                    else {})})
            for m in resolved.methods}


def record(key: str, method: str, settings: str, **fields: Any) -> dict[str, Any]:
    """A manifest line: every field the contract promises, then what the caller adds. A float that is not
    finite (a NaN completeness gap of a model whose output was NaN) is written null: JSON has no NaN."""
    fields = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in fields.items()}
    base = {"image": key, "method": method, "status": None, "error": None, "npy": None, "overlay": None,
            "pred": None, "pred_label": None, "prob": None, "target": None, "target_label": None, "score": None,
            "settings": settings, "schema_version": SCHEMA_VERSION}
    return {**base, **fields}


def _printable(value: Any) -> Any:
    """Every string in ``value`` (lists and dicts walked) as ``images.printable`` writes it."""
    from .images import printable

    if isinstance(value, str):
        return printable(value)
    if isinstance(value, (list, tuple)):
        return [_printable(v) for v in value]
    if isinstance(value, dict):
        return {k: _printable(v) for k, v in value.items()}
    return value


def run_info(resolved, settings: dict[str, str], *, images: int, workers: int, counts: dict[str, int],
             timings: dict[str, Any], argv, interrupted: bool) -> dict[str, Any]:
    """run.json's contents (the writer adds the schema version, the format and the shards)."""
    from importlib.metadata import PackageNotFoundError, version

    import numpy as np
    import PIL
    import torch

    try:
        torchvision_version = version("torchvision")  # importing torchvision costs seconds (it imports dynamo)
    except PackageNotFoundError:
        torchvision_version = None
    from . import geometry, overlay

    config, engine = resolved.config, resolved.explainer
    return {
        "salcli_version": __version__,
        "argv": _printable(argv),  # a file name that is not UTF-8 is written \xNN, as in the keys
        "settings": _printable(config.to_json()),
        "model": {"spec": config.model, "kind": resolved.model.kind, "weights": config.weights,
                  "sha256": resolved.model.checksums, "trusted": config.trust_checkpoint,
                  "random_weights": resolved.model.random_weights,
                  "weights_read": resolved.model.weights, "notes": [word(n) for n in resolved.model.notes]},
        "preprocess": dataclasses.asdict(resolved.preprocess),
        "geometry": geometry.describe(resolved.preprocess),  # how a map maps back onto its original picture
        "overlay": overlay.describe(resolved),  # how the overlays were drawn
        "labels": list(resolved.labels) if resolved.labels else None,
        "methods": {m.name: {"params": dataclasses.asdict(m.params), "settings": settings[m.name]}
                    for m in resolved.methods},
        "seed": config.seed,
        "device": str(resolved.device),
        "batch_size": resolved.batch_size,
        "chunk": engine.chunk,
        "precision": config.precision,
        "optimizations": engine.fast.notes if engine.fast else [],
        "oom_backoffs": engine.backoffs,
        "layer": resolved.layer,
        "workers": workers,
        "images": images,
        "counts": counts,
        "interrupted": interrupted,
        "timings": timings,
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "torchvision": torchvision_version, "numpy": np.__version__, "pillow": PIL.__version__,
                     "platform": platform.platform()},
    }
