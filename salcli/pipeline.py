"""Orchestration: images -> batches -> targets -> methods -> maps -> outputs. Never imports typer.

Terminal output goes through a ``Reporter`` that the caller supplies (``cli.py`` owns the terminal).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from . import __version__, fastpath, images, methods, models, outputs, render
from .config import Preprocess, RunConfig
from .errors import ModelLoadError, UsageError, did_you_mean


class Reporter(Protocol):
    def start(self, total: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def note(self, message: str) -> None: ...
    def finish(self) -> None: ...


class SilentReporter:
    def start(self, total: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def note(self, message: str) -> None: ...
    def finish(self) -> None: ...


@dataclass
class RunSummary:
    out: str
    counts: dict[str, int]
    images: int
    seconds: float
    device: str
    errors: list[dict[str, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.counts.get("error", 0) else 0

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "exit_code": self.exit_code}


@dataclass
class Setup:
    """Everything resolved before the first image is read."""

    config: RunConfig
    items: list[images.ImageItem]
    preprocess: Preprocess
    labels: tuple[str, ...] | None
    model: models.LoadedModel
    device: torch.device
    methods: list[methods.Method]
    target: int | None  # None: the top-1 prediction
    settings: dict[str, str]  # method -> fingerprint of everything its outputs depend on
    batch_size: int
    workers: int
    chunk: int  # most model inputs in one forward pass, inner samples included
    layer: Any = None  # layers.LayerSpec when a method needs one
    references: dict[str, torch.Tensor] = field(default_factory=dict)  # method -> (R, C, H, W)
    fast: fastpath.FastModel | None = None  # the model as it runs (folded, channels_last, autocast)
    backoffs: int = 0  # out-of-memory retries with smaller chunks or sub-batches


# ---------------------------------------------------------------------------------------------- set-up
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available here; use --device cpu or auto")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps: MPS is not available here; use --device cpu or auto")
    return torch.device(name)


def resolve_target(text: str, labels: tuple[str, ...] | None, num_classes: int) -> int | None:
    """'pred' -> None; an index or a label -> the class index."""
    text = str(text).strip()
    if text == "pred":
        return None
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < num_classes:
            raise UsageError(f"--target {index} is out of range: the model has {num_classes} classes (0..{num_classes - 1})")
        return index
    if labels is None:
        raise UsageError(f"--target {text!r}: the model has no class names; give --labels FILE or a class index")
    folded = {name.lower(): i for i, name in enumerate(labels)}
    if text.lower() not in folded:
        raise UsageError(f"--target {text!r} is not a class name.{did_you_mean(text, labels)} "
                         "Use 'pred', a class index or one of the --labels names")
    return folded[text.lower()]


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_run(config: RunConfig, reporter: Reporter) -> Setup:
    """Validate everything and load the model; raises UsageError / ModelLoadError before any work."""
    if config.out is None:
        raise UsageError("give an output folder with -o/--out")
    chosen = [methods.create(name, config.params.get(name)) for name in config.methods]
    for name in config.params:
        methods.get(name)  # an unknown method in -p is a usage error, even if not selected
    render.colormap_lut(config.colormap)
    items = images.discover(list(config.inputs), exclude=config.out)
    if config.shard is not None:
        items = images.shard(items, *config.shard)
    preprocess, labels, note = models.resolve_preset(config)
    if note:
        reporter.note(note)
    device = resolve_device(config.device)
    loaded = models.load_model(config.model, config.weights, config.trust_checkpoint)
    if loaded.scripted:
        layer_methods = [m.name for m in chosen if m.needs_layer]
        if layer_methods:
            raise UsageError(f"{', '.join(layer_methods)} need a layer hook, which TorchScript models cannot "
                             "take; use an input-gradient method or load the model from a factory")
    try:
        loaded.module.to(device)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"could not move the model to {device}: {exc}") from exc
    num_classes = models.count_outputs(loaded.module, preprocess, device)
    if labels is not None and len(labels) != num_classes:
        raise ModelLoadError(f"the model has {num_classes} outputs but there are {len(labels)} class names; "
                             "give --labels with one name per output, or check --model/--weights")
    target = resolve_target(config.target, labels, num_classes)
    layer = None
    example = torch.zeros(1, preprocess.channels, preprocess.crop, preprocess.crop, device=device)
    if any(m.needs_layer for m in chosen):
        from . import layers

        layer = layers.resolve_layer(loaded.module, config.layer, example)
    fast = fastpath.prepare(loaded.module, example, config.optimize, config.precision,
                            keep={layer.name} if layer is not None else set())
    if layer is not None and fast.module is not loaded.module:
        layer = layers.resolve_layer(fast.module, layer.name, example)  # the same layer in the folded copy
    references = {m.name: _references(m.params.references, preprocess, device)
                  for m in chosen if getattr(m.params, "references", "")}
    common = {"model": config.model, "checksums": loaded.checksums, "weights": config.weights,
              "preprocess": dataclasses.asdict(preprocess), "target": target,
              "layer": layer.name if layer is not None else None,
              "seed": config.seed, "colormap": config.colormap, "alpha": config.alpha,
              "labels": fingerprint(labels)}
    if config.precision != "fp32":
        common["precision"] = config.precision  # fp32 fast paths give the same maps; bf16 does not
    settings = {m.name: fingerprint({**common, "method": m.name, "params": dataclasses.asdict(m.params)})
                for m in chosen}
    batch_size = config.batch_size if isinstance(config.batch_size, int) else auto_batch(preprocess, device)
    workers = config.workers if config.workers is not None else auto_workers(len(items), batch_size, device)
    chunk = config.chunk if isinstance(config.chunk, int) else auto_chunk(batch_size, preprocess, device)
    return Setup(config, items, preprocess, labels, loaded, device, chosen, target, settings, batch_size, workers,
                 chunk, layer, references, fast)


def auto_workers(images: int, batch_size: int, device: torch.device) -> int:
    """--workers default: decoding worker processes where they pay. On a GPU the main process only launches
    kernels, so up to 4 workers decode the next batches beside it. On the CPU the model's threads already use
    every core, and worker processes cost the main process more than the decoding they take off it (measured:
    0.88 of the compute-only rate in-process against 0.66 with 1 or 2 workers, resnet50 on 2 cores; 0.95 against
    0.90 with a core left free), so the main process decodes. One batch never needs workers."""
    if images <= batch_size or device.type == "cpu":
        return 0
    return min(4, max(1, os.cpu_count() or 1))


def auto_batch(preprocess: Preprocess, device: torch.device) -> int:
    """--batch-size auto: 64 images on CUDA; on the CPU 8 images at 3x224x224, up to 64 for small images (the
    per-image rate of a CPU is flat past a few images and drops once activations fall out of cache)."""
    if device.type == "cuda":
        return 64
    values = preprocess.channels * preprocess.crop * preprocess.crop
    return int(min(64, max(8, 2 ** int(np.log2(max(1, 1_204_224 // values))))))


def auto_chunk(batch_size: int, preprocess: Preprocess, device: torch.device) -> int:
    """--chunk auto. CUDA: 256 to start (it grows, see ``_grow_chunk``). CPU: about 1.2 million input values per
    pass (8 images at 3x224x224, 1024 at 1x28x28): large batches of large images run slower per image on a
    CPU (their activations fall out of cache), small images need large passes to amortize Python."""
    if device.type == "cuda":
        return max(batch_size, 256)
    values = preprocess.channels * preprocess.crop * preprocess.crop
    return int(min(1024, max(8, 2 ** int(np.log2(max(1, 1_204_224 // values))))))


def _references(folder: str, preprocess: Preprocess, device: torch.device) -> torch.Tensor:
    """Reference images (R, C, H, W), preprocessed like the inputs, for methods that draw baselines."""
    found = images.discover([Path(folder)]) if Path(folder).is_dir() else []
    tensors = []
    for item in found:
        try:
            tensors.append(images.normalize(images.prepare(images.decode(item.path), preprocess), preprocess))
        except images.ImageError:
            continue
    if not tensors:
        raise UsageError(f"references {folder!r}: no readable images there; give a folder of reference images")
    return torch.from_numpy(np.stack(tensors)).to(device)


# ---------------------------------------------------------------------------------------------- the run
def run(config: RunConfig, reporter: Reporter | None = None, argv: list[str] | None = None) -> RunSummary:
    """Explain every image with every method; write maps, overlays, manifest and run.json."""
    reporter = reporter or SilentReporter()
    started = time.time()
    setup = prepare_run(config, reporter)
    loaded_at = time.time()
    writer = outputs.OutputWriter(config.out)
    todo = _plan(setup, writer)
    interrupted = False
    reporter.start(len(setup.items))
    reporter.advance(len(setup.items) - len(todo))
    try:
        _explain(setup, todo, writer, reporter)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        writer.close()
        reporter.finish()
        writer.write_manifest()
        finished = time.time()
        counts = {s: 0 for s in ("ok", "error", "skipped")}
        errors = []
        for rec in writer.records.values():  # one pass: each record is parsed from its JSON line once
            counts[rec["status"]] = counts.get(rec["status"], 0) + 1
            if rec["status"] == "error":
                errors.append({"image": rec["image"], "method": rec["method"], "error": rec["error"]})
        computed = len(todo)
        timings = {"started": started, "seconds": round(finished - started, 3),
                   "setup_seconds": round(loaded_at - started, 3),
                   "images_per_second": round(computed / max(finished - loaded_at, 1e-9), 3) if computed else None}
        writer.write_run_json(_run_info(setup, counts, timings, argv, interrupted), config.shard)
    return RunSummary(str(config.out), counts, len(setup.items), round(time.time() - started, 3),
                      str(setup.device), errors)


def _plan(setup: Setup, writer: outputs.OutputWriter) -> list[int]:
    """Indices of images with at least one method to compute; records skips for the rest."""
    todo = []
    for index, item in enumerate(setup.items):
        pending = False
        for m in setup.methods:
            prev = None if setup.config.overwrite else writer.done_before(item.key, m.name, setup.settings[m.name])
            if prev is None:
                pending = True
            else:
                writer.add({**prev, "status": "skipped", "error": None})
        if pending:
            todo.append(index)
    return todo


def _explain(setup: Setup, todo: list[int], writer: outputs.OutputWriter, reporter: Reporter) -> None:
    if not todo:
        return
    dataset = images.ImageDataset(setup.items, setup.preprocess)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, todo), batch_size=setup.batch_size, shuffle=False,
        num_workers=setup.workers, collate_fn=images.collate, persistent_workers=False,
        prefetch_factor=2 if setup.workers else None, pin_memory=setup.device.type == "cuda")
    trim = _malloc_trim()
    for number, batch in enumerate(loader, 1):
        for bad in batch["errors"]:
            for m in setup.methods:
                writer.add(_record(bad["key"], m.name, setup.settings[m.name], status="error", error=bad["error"]))
        if batch["pixels"] is not None:
            _explain_batch(setup, batch, writer)
        reporter.advance(len(batch["good"]) + len(batch["errors"]))
        writer.drain(wait_all=False)
        _grow_chunk(setup)
        if trim is not None and number % 32 == 0:
            trim(0)  # hand freed heap pages back, so the RSS of a long run stays flat


def _malloc_trim():
    """glibc's ``malloc_trim`` (None elsewhere). Batches of tensors, pixels and PNG buffers are freed in
    several threads; glibc keeps such memory in per-thread arenas, and the RSS drifts up and down by tens of MB
    unless it is trimmed now and then (about a millisecond per call)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def _split(batch: dict) -> list[dict]:
    """Two halves of a batch of good images (errors stay with neither: they are recorded already)."""
    half = len(batch["good"]) // 2
    return [{**batch, "good": batch["good"][a:b], "pixels": batch["pixels"][a:b], "errors": []}
            for a, b in ((0, half), (half, len(batch["good"])))]


def _explain_batch(setup: Setup, batch: dict, writer: outputs.OutputWriter) -> None:
    fast, good = setup.fast, batch["good"]
    model = fast.module
    x = fast.prepare_input(images.normalize_batch(batch["pixels"].to(setup.device, non_blocking=True),
                                                  setup.preprocess))
    keys = [g["key"] for g in good]
    sources = {g["key"]: str(setup.items[g["index"]].path.resolve()) for g in good}
    pending = {m.name: [i for i, k in enumerate(keys)
                        if setup.config.overwrite or (k, m.name) not in writer.records] for m in setup.methods}
    use_primal = any(m.uses_primal and len(pending[m.name]) == len(keys) for m in setup.methods)
    try:
        with torch.enable_grad() if use_primal else torch.no_grad(), fast.autocast(setup.device):
            x_leaf = x.detach().requires_grad_(use_primal)
            logits = model(x_leaf)
    except Exception as exc:  # noqa: BLE001 - the batch fails, the run goes on
        if fastpath.is_oom(exc) and len(keys) > 1:
            _free(setup)
            for part in _split(batch):
                _explain_batch(setup, part, writer)
            return
        hint = "; try --batch-size 1" if len(keys) > 1 else ""
        for m in setup.methods:
            for i in pending[m.name]:
                writer.add(_record(keys[i], m.name, setup.settings[m.name], status="error",
                                   error=f"the model failed on this batch ({type(exc).__name__}: {exc}){hint}"))
        return
    probs = torch.softmax(logits.detach().float(), dim=1)
    pred = probs.argmax(dim=1)
    target = pred if setup.target is None else torch.full_like(pred, setup.target)
    primal = (x_leaf, logits) if use_primal else None
    facts = _facts(setup, logits.detach(), probs, pred, target)
    for m in setup.methods:
        idx = pending[m.name]
        if not idx:
            continue
        sel = torch.tensor(idx, device=x.device)
        ctx = methods.Context(keys=[keys[i] for i in idx], seed=setup.config.seed, layer=setup.layer,
                              primal=primal if (m.uses_primal and len(idx) == len(keys)) else None,
                              chunk=setup.chunk, mean=setup.preprocess.mean, std=setup.preprocess.std,
                              references=setup.references.get(m.name))
        if ctx.primal is not None:
            primal = None  # the graph is spent by one backward pass
        try:
            result, extras = _attribute(setup, m, x[sel], target[sel], ctx)
            saliency = result.detach().float().cpu().numpy()
        except Exception as exc:  # noqa: BLE001 - a method failing on a batch fails those images only
            for i in idx:
                writer.add(_record(keys[i], m.name, setup.settings[m.name], status="error",
                                   error=f"{m.name} failed: {type(exc).__name__}: {exc}", **facts[i]))
            continue
        for row, i in enumerate(idx):
            record = _record(keys[i], m.name, setup.settings[m.name], status="ok", error=None, **facts[i],
                             source=sources[keys[i]],
                             **{name: values[row] for name, values in extras.items()})
            writer.submit(record, saliency[row], _renderer(setup, good[i]["pixels"], saliency[row], facts[i]))


def _grow_chunk(setup: Setup) -> None:
    """--chunk auto on CUDA: double the chunk after a batch that used under 40% of the GPU's memory, until the
    first out-of-memory error (after which the back-off has found the size that fits)."""
    if setup.device.type != "cuda" or setup.config.chunk != "auto" or setup.backoffs or setup.chunk >= 4096:
        return
    total = torch.cuda.get_device_properties(setup.device).total_memory
    if torch.cuda.max_memory_allocated(setup.device) < 0.4 * total:
        setup.chunk *= 2
    torch.cuda.reset_peak_memory_stats(setup.device)


def _free(setup: Setup) -> None:
    setup.backoffs += 1
    if setup.device.type == "cuda":
        torch.cuda.empty_cache()


def _attribute(setup: Setup, m: methods.Method, x: torch.Tensor, target: torch.Tensor, ctx: methods.Context):
    """The method on these images; after an out-of-memory error, the same with half the chunk, then with half
    the images at a time. Maps do not depend on either, so nothing is lost and nothing changes."""
    try:
        with setup.fast.autocast(setup.device):
            return m.attribute_with_extras(setup.fast.module, x, target, ctx)
    except Exception as exc:  # noqa: BLE001
        if not fastpath.is_oom(exc) or (ctx.chunk <= 1 and x.shape[0] <= 1):
            raise
    _free(setup)
    ctx = dataclasses.replace(ctx, primal=None)  # the failed pass may have spent the graph
    if ctx.chunk > 1:
        setup.chunk = max(1, ctx.chunk // 2)  # later batches start from the smaller chunk
        ctx = dataclasses.replace(ctx, chunk=setup.chunk)
    if x.shape[0] == 1:
        return _attribute(setup, m, x, target, ctx)
    half = x.shape[0] // 2
    parts = [_attribute(setup, m, x[a:b], target[a:b], dataclasses.replace(ctx, keys=ctx.keys[a:b]))
             for a, b in ((0, half), (half, x.shape[0]))]
    extras = {k: parts[0][1][k] + parts[1][1][k] for k in parts[0][1]}
    return torch.cat([parts[0][0], parts[1][0]]), extras


def _facts(setup: Setup, logits, probs, pred, target) -> list[dict[str, Any]]:
    label = (lambda i: setup.labels[i]) if setup.labels else (lambda i: None)
    pred_l, target_l = pred.tolist(), target.tolist()
    prob = probs.gather(1, pred.view(-1, 1)).squeeze(1).tolist()
    score = logits.float().gather(1, target.view(-1, 1)).squeeze(1).tolist()
    return [{"pred": p, "pred_label": label(p), "prob": round(pr, 6), "target": t, "target_label": label(t),
             "score": round(s, 6)} for p, pr, t, s in zip(pred_l, prob, target_l, score)]


def _renderer(setup: Setup, pixels: np.ndarray, saliency: np.ndarray, facts: dict[str, Any]):
    name = facts["pred_label"] if facts["pred_label"] is not None else f"class {facts['pred']}"
    caption = f"pred {name} {facts['prob']:.0%}"
    if facts["target"] != facts["pred"]:
        caption += f" | map for {facts['target_label'] or facts['target']}"
    return lambda: render.overlay(pixels, saliency, setup.config.colormap, setup.config.alpha, caption)


def _record(key: str, method: str, settings: str, **fields: Any) -> dict[str, Any]:
    base = {"image": key, "method": method, "status": None, "error": None, "npy": None, "overlay": None,
            "pred": None, "pred_label": None, "prob": None, "target": None, "target_label": None, "score": None,
            "settings": settings, "schema_version": outputs.SCHEMA_VERSION}
    return {**base, **fields}


def _run_info(setup: Setup, counts: dict[str, int], timings: dict[str, Any], argv, interrupted: bool) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import PIL

    try:
        torchvision_version = version("torchvision")  # importing torchvision costs seconds (it imports dynamo)
    except PackageNotFoundError:
        torchvision_version = None
    config = setup.config
    return {
        "salcli_version": __version__,
        "argv": argv,
        "settings": config.to_json(),
        "model": {"spec": config.model, "kind": setup.model.kind, "weights": config.weights,
                  "sha256": setup.model.checksums, "trusted": config.trust_checkpoint},
        "preprocess": dataclasses.asdict(setup.preprocess),
        "labels": list(setup.labels) if setup.labels else None,
        "methods": {m.name: {"params": dataclasses.asdict(m.params), "settings": setup.settings[m.name]}
                    for m in setup.methods},
        "seed": config.seed,
        "device": str(setup.device),
        "batch_size": setup.batch_size,
        "chunk": setup.chunk,
        "precision": config.precision,
        "optimizations": setup.fast.notes if setup.fast else [],
        "oom_backoffs": setup.backoffs,
        "layer": setup.layer.name if setup.layer is not None else None,
        "workers": setup.workers,
        "images": len(setup.items),
        "counts": counts,
        "interrupted": interrupted,
        "timings": timings,
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "torchvision": torchvision_version, "numpy": np.__version__, "pillow": PIL.__version__,
                     "platform": platform.platform()},
    }

