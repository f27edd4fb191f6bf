"""The engine: one ``Explainer`` under ``explain``, ``evaluate``, ``sanity``, ``salcli.explain`` and the benchmarks.

Configured once (model, methods and their parameters, layer, preprocessing, chunk, precision, fast paths, seed,
device), then called on batches; the only place a method's ``Context`` is built, so every caller computes the
same map for the same normalized input. Out-of-memory errors are handled inside: the batch is retried with half
the chunk, then half the images at a time; maps do not depend on either.

Pure compute: no files, no terminal. Never mutates the model it is given: methods differentiate with respect to
a detached copy of the input, and the fast paths (BatchNorm folding, channels_last) are only applied when the
caller says the model is salcli's own (``optimize=True``), on a copy.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from . import fastpath
from . import methods as registry
from .config import Preprocess
from .errors import UsageError, setting


class ModelFailure(Exception):
    """The model's forward pass failed on a batch (not out of memory, or a single image out of memory)."""


@dataclass
class BatchResult:
    """What one call returns. ``maps[m]`` (B, H, W) float32 on the CPU for method m, rows in ``keys`` order,
    for the images that were computed (``rows[m]``: their indices); ``extras[m]``: per-image values a method
    reports (e.g. IG's completeness gap); ``failures[m]``: the exception of a method that failed on the batch."""

    keys: list[str]
    logits: torch.Tensor  # (B, K) float32, detached
    probs: torch.Tensor  # (B, K) softmax
    pred: torch.Tensor  # (B,) top-1 class
    target: torch.Tensor  # (B,) the class each map explains
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    rows: dict[str, list[int]] = field(default_factory=dict)
    extras: dict[str, dict[str, list]] = field(default_factory=dict)
    failures: dict[str, BaseException] = field(default_factory=dict)

    def facts(self, labels: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Per image: pred, pred_label, prob (softmax of pred), target, target_label, score (the target's logit)."""
        label = (lambda i: labels[i]) if labels else (lambda i: None)
        prob = self.probs.gather(1, self.pred.view(-1, 1)).squeeze(1).tolist()
        score = self.logits.gather(1, self.target.view(-1, 1)).squeeze(1).tolist()
        finite = (lambda v: round(v, 6) if math.isfinite(v) else None)  # a NaN logit is recorded as null
        return [{"pred": p, "pred_label": label(p), "prob": finite(pr), "target": t, "target_label": label(t),
                 "score": finite(s)} for p, pr, t, s in zip(self.pred.tolist(), prob, self.target.tolist(), score)]


def auto_chunk(batch_size: int, preprocess: Preprocess, device: torch.device) -> int:
    """--chunk auto. CUDA: 256 to start (it grows after batches that used little memory). CPU: about 1.2 million
    input values per pass (8 images at 3x224x224, 1024 at 1x28x28): large batches of large images run slower per
    image on a CPU (their activations fall out of cache), small images need large passes to amortize Python."""
    if device.type == "cuda":
        return max(batch_size, 256)
    values = preprocess.channels * preprocess.crop * preprocess.crop
    return int(min(1024, max(8, 2 ** int(np.log2(max(1, 1_204_224 // values))))))


def make_methods(chosen, params: dict[str, dict[str, Any]] | None) -> list[registry.Method]:
    params = params or {}
    for name, table in params.items():
        registry.create(name, table)  # unknown methods, keys and bad values are errors, even if not selected
    found = []
    for m in ([chosen] if isinstance(chosen, (str, registry.Method)) else chosen):
        found.append(m if isinstance(m, registry.Method) else registry.create(m, params.get(m)))
    if not found:
        raise UsageError(f"no method chosen; give at least one with {setting('methods')}")
    return found


def load_references(folder: str, preprocess: Preprocess, device: torch.device) -> torch.Tensor:
    """Reference images (R, C, H, W) from a folder, preprocessed like the inputs, for methods that draw
    baselines from them. A missing or empty folder is an error, never an empty set."""
    from . import images

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


LAYER_MAPS = ("input", "native")  # --layer-maps


class Explainer:
    """Saliency maps for batches, with every setting fixed once.

    ``model``: an ``nn.Module`` (used as it is: its mode, hooks and flags are left alone). ``methods``: names or
    ``Method`` objects; ``params``: ``{method: {key: value}}`` for names. ``layer``: a dotted module name for the
    layer methods (None: found automatically). ``preprocess`` (or just ``mean``/``std``): the normalization the
    input went through, for pixel-space baselines (``black``) and reference images; without either, inputs are
    taken to be pixels in [0, 1]. ``chunk``: most model inputs per pass (an int, or "auto"). ``precision``:
    "fp32" or "bf16" (autocast). ``optimize``: fold BatchNorm and use channels_last, on a copy; only for models
    salcli loaded. ``seed``: random draws depend on it and each image's key only. ``layer_maps``: "input" (every
    map at the input's (H, W)) or "native" (the CAM family's maps at their layer's (h, w); ``maps.upsample``
    brings them to (H, W)).
    """

    def __init__(self, model: nn.Module, methods: Sequence[str | registry.Method] | str = ("vanilla",), *,
                 params: dict[str, dict[str, Any]] | None = None, layer: str | None = None,
                 preprocess: Preprocess | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, chunk: int | str = "auto", batch_size: int = 8,
                 precision: str = "fp32", optimize: bool = False, seed: int = 0,
                 device: torch.device | str | None = None,
                 references: dict[str, torch.Tensor] | None = None, layer_maps: str = "input") -> None:
        if layer_maps not in LAYER_MAPS:
            raise UsageError(f"layer_maps takes {' or '.join(LAYER_MAPS)}; got {layer_maps!r}")
        self.model = model
        self.layer_maps = layer_maps
        self.methods = make_methods(methods, params)
        if (mean is None) != (std is None):
            raise UsageError(f"give both {setting('mean')} and {setting('std')}, or neither")
        self._mean, self._std = mean, std  # used when ``preprocess`` is None: the size comes with the first batch
        self.preprocess = preprocess
        self.layer_name = layer
        self.chunk_setting, self.batch_size = chunk, batch_size
        self.precision, self.optimize, self.seed = precision, optimize, seed
        self.device = torch.device(device) if device is not None else _device_of(model)
        self.references = dict(references or {})
        self.backoffs = 0  # out-of-memory retries with smaller chunks or sub-batches
        self.layer = None  # layers.LayerSpec, resolved by prepare()
        self.fast: fastpath.FastModel | None = None
        self.chunk = chunk if isinstance(chunk, int) else 64
        self._folders = {m.name: m.params.references for m in self.methods if getattr(m.params, "references", "")}
        for name, folder in self._folders.items():
            if name not in self.references and not Path(folder).is_dir():
                raise UsageError(f"{name} references {folder!r}: no such folder; give a folder of reference images")
        if preprocess is not None:
            self.prepare((preprocess.channels, preprocess.crop, preprocess.crop))

    # ------------------------------------------------------------------------------------------ set-up
    @property
    def prepared(self) -> bool:
        return self.fast is not None

    def prepare(self, shape: tuple[int, int, int]) -> None:
        """Resolve the layer, the fast model, the chunk and the reference images for inputs of ``shape`` (C, H, W).
        Called by the constructor when the preprocessing is known, else by the first batch."""
        example = torch.zeros(1, *shape, device=self.device)
        if any(m.needs_layer for m in self.methods):
            from . import layers

            if isinstance(self.model, torch.jit.ScriptModule):
                layered = [m.name for m in self.methods if m.needs_layer]
                verb = "needs" if len(layered) == 1 else "need"
                raise UsageError(f"{', '.join(layered)} {verb} a layer hook, which TorchScript models cannot take; "
                                 "use an input-gradient method or load the model from a factory")
            self.layer = layers.resolve_layer(self.model, self.layer_name, example)
        keep = {self.layer.name} if self.layer is not None else set()
        self.fast = fastpath.prepare(self.model, example, self.optimize, self.precision, keep=keep)
        if self.layer is not None and self.fast.base is not self.model:
            from . import layers

            self.layer = layers.resolve_layer(self.fast.base, self.layer.name, example)  # the same layer, folded
        _check_footprints(self.methods, shape, self.batch_size)
        pre = self.preprocess
        if pre is None:  # mean/std only (or neither: pixels in [0, 1]): inputs are taken at the size they come in
            pre = Preprocess(resize=shape[1], crop=shape[1], channels=shape[0],
                             mean=tuple(self._mean) if self._mean is not None else (0.0,),
                             std=tuple(self._std) if self._std is not None else (1.0,))
        self.preprocess = pre
        if not isinstance(self.chunk_setting, int):
            self.chunk = auto_chunk(self.batch_size, pre, self.device)
        for name, folder in self._folders.items():
            if name not in self.references:
                self.references[name] = load_references(folder, pre, self.device)

    def with_model(self, model: nn.Module) -> "Explainer":
        """The same settings on another model of the same architecture (the sanity check's randomized copies);
        the layer is looked up by the name resolved on this one."""
        return Explainer(model, self.methods, layer=self.layer.name if self.layer is not None else self.layer_name,
                         preprocess=self.preprocess, mean=self._mean, std=self._std,
                         chunk=self.chunk if self.prepared else self.chunk_setting, batch_size=self.batch_size,
                         precision=self.precision, optimize=self.optimize, seed=self.seed, device=self.device,
                         references=self.references, layer_maps=self.layer_maps)

    # ------------------------------------------------------------------------------------------ calls
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the model as it runs (fast paths, precision), without a graph; x (B, C, H, W)."""
        self._ready(x)
        with torch.no_grad(), self.fast.autocast(self.device):
            return self.fast.module(self._input(x))

    def from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels (B, H, W, C) -> the normalized input (B, C, H, W) on the engine's device."""
        from .images import normalize_batch

        if self.preprocess is None:
            raise UsageError("pixels need the preprocessing's mean and std; build the Explainer with preprocess=")
        return normalize_batch(pixels.to(self.device, non_blocking=True), self.preprocess)

    def __call__(self, x: torch.Tensor, keys: Sequence[str] | None = None, target=None,
                 pending: dict[str, list[int]] | None = None) -> BatchResult:
        """Every method's maps for a normalized batch x (B, C, H, W).

        ``keys``: the images' names, which seed their random draws (default: their positions). ``target``: None
        (the top-1 class), a class index, or one per image. ``pending``: ``{method: [row, ...]}`` to compute only
        those images for a method (default: all). A model failure raises ``ModelFailure``; a method that fails
        is reported in ``failures`` and the others go on.
        """
        self._ready(x)
        keys = [str(i) for i in range(x.shape[0])] if keys is None else list(keys)
        if len(keys) != x.shape[0]:
            raise UsageError(f"{len(keys)} keys for {x.shape[0]} images")
        pending = pending if pending is not None else {m.name: list(range(len(keys))) for m in self.methods}
        x = self._input(x)
        try:
            result, primal = self._forward(x, keys, target, pending)
        except _Split:
            half = len(keys) // 2
            parts = [self(x[a:b], keys[a:b], _rows(target, a, b),
                          {n: [i - a for i in rows if a <= i < b] for n, rows in pending.items()})
                     for a, b in ((0, half), (half, len(keys)))]
            return _concat(parts, half)
        for m in self.methods:
            rows = pending.get(m.name, [])
            if not rows:
                continue
            sel = torch.tensor(rows, device=x.device)
            ctx = self._context([keys[i] for i in rows],
                                primal if (m.uses_primal and len(rows) == len(keys)) else None, m.name)
            if ctx.primal is not None:
                primal = None  # the graph is spent by one backward pass
            try:
                saliency, extras = self._attribute(m, x[sel], result.target[sel].to(x.device), ctx)
            except Exception as exc:  # noqa: BLE001 - a method failing on a batch fails those images only
                result.failures[m.name] = exc
                continue
            result.maps[m.name] = saliency.detach().float().cpu()
            result.rows[m.name] = rows
            result.extras[m.name] = extras
        self._grow_chunk()
        return result

    def attribute(self, method: str, x: torch.Tensor, target: torch.Tensor, keys: Sequence[str]) -> torch.Tensor:
        """One method's maps (B, H, W) float32 on the engine's device for x and the given targets (at the input's
        resolution, whatever ``layer_maps`` says); errors raise."""
        self._ready(x)
        m = next((m for m in self.methods if m.name == method), None)
        if m is None:
            raise UsageError(f"this engine was not configured with {method}")
        x = self._input(x)
        ctx = dataclasses.replace(self._context(list(keys), None, m.name), native=False)
        maps, _ = self._attribute(m, x, target.to(self.device), ctx)
        return maps.detach().float()

    # ------------------------------------------------------------------------------------------ internals
    def _ready(self, x: torch.Tensor) -> None:
        if self.fast is None:
            self.prepare(tuple(x.shape[1:]))

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """x on the engine's device in the model's memory layout, with canonical strides, in memory torch
        allocated. CPU kernels take other code paths for other strides (a (B, 1, H, W) tensor is "contiguous"
        with several stride patterns) and for data that is not 64-byte aligned (a tensor made from a NumPy
        array often is not), and their sums round differently: the same values must give the same maps
        wherever they come from."""
        x = x.to(self.device)
        fmt = torch.channels_last if self.fast.channels_last and x.dim() == 4 else torch.contiguous_format
        canonical = torch.empty_like(x, memory_format=fmt)
        if x.stride() == canonical.stride() and x.data_ptr() % 64 == 0:
            return x
        return canonical.copy_(x)

    def _context(self, keys: list[str], primal, method: str) -> registry.Context:
        pre = self.preprocess
        return registry.Context(keys=keys, seed=self.seed, layer=self.layer, primal=primal, chunk=self.chunk,
                               mean=pre.mean if pre else None, std=pre.std if pre else None,
                               references=self.references.get(method), native=self.layer_maps == "native")

    def _forward(self, x, keys, target, pending):
        """The batch's forward pass (kept with its graph when a single-pass method will reuse it)."""
        use_primal = any(m.uses_primal and len(pending.get(m.name, [])) == len(keys) for m in self.methods)
        try:
            with torch.enable_grad() if use_primal else torch.no_grad(), self.fast.autocast(self.device):
                x_leaf = x.detach().requires_grad_(use_primal)
                logits = self.fast.module(x_leaf)
        except Exception as exc:  # noqa: BLE001
            if fastpath.is_oom(exc) and len(keys) > 1:
                self._free()
                raise _Split() from None
            hint = "; try a smaller batch size" if len(keys) > 1 else ""
            raise ModelFailure(f"the model failed on this batch ({type(exc).__name__}: {exc}){hint}") from exc
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            raise ModelFailure(f"the model must return logits of shape (batch, classes); it returned "
                               f"{getattr(logits, 'shape', type(logits).__name__)}")
        probs = torch.softmax(logits.detach().float(), dim=1)
        pred = probs.argmax(dim=1)
        tgt = _targets(target, pred)
        result = BatchResult(keys, logits.detach().float(), probs, pred, tgt)
        return result, ((x_leaf, logits) if use_primal else None)

    def _attribute(self, m: registry.Method, x: torch.Tensor, target: torch.Tensor, ctx: registry.Context):
        """The method on these images; after an out-of-memory error, the same with half the chunk, then with
        half the images at a time."""
        try:
            with self.fast.autocast(self.device):
                return m.attribute_with_extras(self.fast.module, x, target, ctx)
        except Exception as exc:  # noqa: BLE001
            if not fastpath.is_oom(exc) or (ctx.chunk <= 1 and x.shape[0] <= 1):
                raise
        self._free()
        ctx = dataclasses.replace(ctx, primal=None)  # the failed pass may have spent the graph
        if ctx.chunk > 1:
            self.chunk = max(1, ctx.chunk // 2)  # later batches start from the smaller chunk
            ctx = dataclasses.replace(ctx, chunk=self.chunk)
        if x.shape[0] == 1:
            return self._attribute(m, x, target, ctx)
        half = x.shape[0] // 2
        parts = [self._attribute(m, x[a:b], target[a:b], dataclasses.replace(ctx, keys=ctx.keys[a:b]))
                 for a, b in ((0, half), (half, x.shape[0]))]
        extras = {k: parts[0][1][k] + parts[1][1][k] for k in parts[0][1]}
        return torch.cat([parts[0][0], parts[1][0]]), extras

    def _free(self) -> None:
        self.backoffs += 1
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _grow_chunk(self) -> None:
        """--chunk auto on CUDA: double the chunk after a batch that used under 40% of the GPU's memory, until
        the first out-of-memory error (after which the back-off has found the size that fits)."""
        if self.device.type != "cuda" or isinstance(self.chunk_setting, int) or self.backoffs or self.chunk >= 4096:
            return
        total = torch.cuda.get_device_properties(self.device).total_memory
        if torch.cuda.max_memory_allocated(self.device) < 0.4 * total:
            self.chunk *= 2
        torch.cuda.reset_peak_memory_stats(self.device)


def memory_bytes() -> int:
    """This machine's physical memory (8 GiB when the OS does not say)."""
    import os

    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return 8 << 30


def _check_footprints(methods, shape: tuple[int, int, int], batch_size: int) -> None:
    """Parameters whose draws for one batch would need more than half of the machine's memory are a usage error
    with the estimate, before any image: better than an allocation that swaps or gets the process killed."""
    limit = memory_bytes() // 2
    for m in methods:
        need = m.footprint(shape) * max(1, batch_size)
        if need > limit:
            raise UsageError(f"{m.name} with {m.params} would hold about {need / 2**30:.1f} GiB for a batch of "
                             f"{batch_size} image(s) of {shape[1]}x{shape[2]}, more than half of this machine's "
                             f"{memory_bytes() / 2**30:.0f} GiB; lower its samples, masks, cells or grid, or "
                             f"{setting('batch_size')}")


class _Split(Exception):
    """Out of memory in the forward pass of a batch of several images: run it in two halves."""


def _device_of(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def _targets(target, pred: torch.Tensor) -> torch.Tensor:
    """None -> pred; an int -> that class for every image; a sequence or tensor -> one per image."""
    if target is None:
        return pred
    t = torch.as_tensor(target, device=pred.device).long()
    if t.ndim == 0:
        return t.expand(pred.shape[0]).contiguous()
    if t.shape != pred.shape:
        raise UsageError(f"{t.shape[0]} targets for {pred.shape[0]} images")
    return t


def _rows(target, a: int, b: int):
    if target is None or isinstance(target, int) or (isinstance(target, torch.Tensor) and target.ndim == 0):
        return target
    return target[a:b]


def _concat(parts: list[BatchResult], offset: int) -> BatchResult:
    first, second = parts
    out = BatchResult(first.keys + second.keys, torch.cat([first.logits, second.logits]),
                      torch.cat([first.probs, second.probs]), torch.cat([first.pred, second.pred]),
                      torch.cat([first.target, second.target]))
    for name in dict.fromkeys([*first.maps, *second.maps, *first.failures, *second.failures]):
        if name in first.failures or name in second.failures:
            out.failures[name] = first.failures.get(name) or second.failures[name]
            # the half that worked is kept: its rows are still written
        have = [(p, shift) for p, shift in ((first, 0), (second, offset)) if name in p.maps]
        if have:
            out.maps[name] = torch.cat([p.maps[name] for p, _ in have])
            out.rows[name] = [i + shift for p, shift in have for i in p.rows[name]]
            out.extras[name] = {k: sum((p.extras[name].get(k, []) for p, _ in have), [])
                                for k in have[0][0].extras[name]}
    return out
