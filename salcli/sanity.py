"""`salcli sanity`: the model-parameter randomization test of Adebayo et al. 2018, "Sanity Checks for Saliency
Maps", cascading from the top layer down. Orchestration only: the similarity measures are
``measures/randomization.py`` (over ``metrics.py``), the maps come from the engine (``resolve`` builds it as for
``explain``), files are written by ``outputs``. Never imports typer.

A copy of the model has its layers re-initialized one after another, from the logits to the first layer,
cumulatively; at each cascade point every method's maps are recomputed (same images, same targets: the
original model's top-1 classes) and compared with the original maps by Spearman rank correlation and SSIM.
A map that stays similar after every weight is random depends on the input, not on what the model learned:
the method fails the check. Adebayo et al. found that gradients and Grad-CAM pass and guided backprop fails.

Re-initialization: each parameter of a layer is redrawn from Normal(0, s), s = the standard deviation of the
original tensor (its root mean square for a constant tensor, such as a 1-element bias; an all-zero tensor,
such as an untrained bias, stays zero, as a re-initialized bias would), from a
``torch.Generator`` seeded by (``--seed``, the layer's name). Chosen over ``reset_parameters()`` because it
(1) keeps each layer's weight scale, so activations neither explode nor vanish and what changes is the learned
structure, not the magnitude; (2) works for any module that owns parameters (BatchNorm/LayerNorm affine
parameters, a ViT's class token and position embedding, custom modules without ``reset_parameters``); and
(3) draws from our own generator, where ``reset_parameters()`` draws from the global RNG. A layer's draws
depend only on the seed and its name, so a cascade point is the same whatever ``--max-steps`` is. Buffers
(BatchNorm running statistics) are kept: they are statistics of the data, not learned parameters.

Signed maps (integrated gradients, input x gradient, ...) are compared on their absolute values, the paper's
"absolute value" variant; a non-negative map is unchanged by it. An image whose original map is constant (a
Grad-CAM map zeroed by its ReLU) has no rank order to lose: it is left out of that method's means and counted
in ``constant_maps``. The verdict threshold (default 0.5, mean
Spearman at full randomization) is the midpoint of the rank-correlation scale: a map that keeps more than
half of its rank order once every weight is random mostly reflects the input, not the model.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import images, outputs
from .config import RunConfig
from .engine import Explainer
from .errors import UsageError, setting
from .methods.base import image_seed
from .resolve import resolve

DEFAULT_METHODS = ("vanilla", "gradcam", "guided-backprop", "integrated-gradients")
THRESHOLD = 0.5  # a method passes when its mean Spearman at full randomization is below this


@dataclass(frozen=True)
class SanityOptions:
    limit: int = 16  # images, the first in sorted order
    max_steps: int = 12  # cascade points evaluated, the first layer and the full randomization included
    threshold: float = THRESHOLD

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise UsageError(f"{setting('limit')} must be at least 1")
        if self.max_steps < 2:
            raise UsageError(f"{setting('max_steps')} must be at least 2 (the first layer and the full randomization)")
        if not -1.0 <= self.threshold <= 1.0:
            raise UsageError(f"{setting('threshold')} is a Spearman rank correlation, between -1 and 1")


@dataclass
class SanityResult:
    """``rows``: one per method (``randomization_similarity``, ``ssim_final``, ``verdict``, ``curve``);
    ``cascade``: the layers in the order they are randomized (the logits first); ``depths``: how many of
    them are randomized at each evaluated point (0 = the original model)."""

    rows: list[dict[str, Any]]
    cascade: list[str]
    depths: list[int]
    images: list[str]
    threshold: float
    seed: int
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": outputs.SCHEMA_VERSION, **self.settings, "seed": self.seed,
                "threshold": self.threshold, "images": self.images, "cascade": self.cascade,
                "methods": self.rows}


# ---------------------------------------------------------------------------------------------- the cascade
def parametrized_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the modules that own parameters directly, in the order the forward pass of ``example`` first
    calls them (input side first). Recorded with temporary forward pre-hooks, removed in ``finally``; a
    module that owns parameters but never runs is left out (randomizing it could not change anything).
    Pre-hooks, so a container that owns a parameter it uses first (a ViT's class token) sits before its
    children."""
    order: list[str] = []
    handles = []

    def hook_for(name: str):
        def hook(module, args):
            if name not in order:
                order.append(name)
        return hook

    try:
        for name, module in model.named_modules():
            if next(module.parameters(recurse=False), None) is not None:
                handles.append(module.register_forward_pre_hook(hook_for(name)))
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return order


def randomize_(module: nn.Module, name: str, seed: int) -> None:
    """Redraw every parameter owned by ``module`` from Normal(0, the tensor's own std), in place, seeded by
    (seed, name). Use it on a copy only."""
    g = torch.Generator().manual_seed(image_seed(seed, f"sanity-layer:{name}"))
    with torch.no_grad():
        for _, p in sorted(module.named_parameters(recurse=False)):
            values = p.detach().double()
            scale = float(values.std()) if values.numel() > 1 else 0.0
            if not scale > 0:
                scale = float(values.pow(2).mean().sqrt())
            p.copy_((torch.randn(p.shape, generator=g, dtype=torch.float64) * scale).to(p.device, p.dtype))


def cascade_points(n: int, max_steps: int) -> list[int]:
    """Evenly spaced counts of randomized layers in 1..n, at most ``max_steps``, 1 and n always included."""
    if n <= max_steps:
        return list(range(1, n + 1))
    return sorted({round(1 + i * (n - 1) / (max_steps - 1)) for i in range(max_steps)})


def compare(original: np.ndarray, randomized: np.ndarray) -> tuple[float, float]:
    """(Spearman, SSIM) of two (H, W) maps, on absolute values (a no-op for non-negative maps)."""
    from .measures.randomization import Randomization

    return Randomization.compare(original, randomized)


# ---------------------------------------------------------------------------------------------- the test
def randomization_test(engine: Explainer, x: torch.Tensor, keys: list[str], *, max_steps: int = 12,
                       threshold: float = THRESHOLD, batch_size: int = 16, reporter=None) -> SanityResult:
    """Cascading model-parameter randomization of ``engine.model`` for normalized images x (B, C, H, W).

    The model is never changed: the cascade runs on a deep copy, and each cascade point's maps come from
    ``engine.with_model(copy)``: the same methods, parameters, references, chunk, precision, fast paths and
    seed, and the layer resolved on the original model. Targets are the original model's top-1 classes, fixed
    for every randomized model. Layers are re-initialized with draws seeded by (``engine.seed``, layer name).
    """
    from .pipeline import SilentReporter

    reporter = reporter or SilentReporter()
    model, seed = engine.model, engine.seed
    example = torch.zeros(1, *x.shape[1:], device=x.device)
    target = torch.cat([engine.forward(x[s:s + batch_size]).argmax(1) for s in range(0, x.shape[0], batch_size)])
    work = copy.deepcopy(model)
    cascade = parametrized_layers(work, example)[::-1]  # the logits first
    if not cascade:
        raise UsageError("the model has no layer with parameters that runs in its forward pass: there is "
                         "nothing to randomize")
    points = cascade_points(len(cascade), max_steps)
    by_name = dict(work.named_modules())

    reporter.start(len(points) + 1)
    original = _all_maps(engine, x, target, keys, batch_size)
    # A constant original map (a Grad-CAM map that the ReLU zeroed) has no rank order to keep or lose: it is
    # left out of that method's means, and counted.
    measured = {name: [i for i in range(len(keys)) if np.ptp(np.abs(maps0[i])) > 0]
                for name, maps0 in original.items()}
    found: dict[str, list[list[tuple[float, float]]]] = {m.name: [] for m in engine.methods}
    current, done = original, 0
    for k in [0, *points]:
        for name in cascade[done:k]:
            randomize_(by_name[name], name, seed)
        if k:
            current = _all_maps(engine.with_model(work), x, target, keys, batch_size)
        done = k
        for name, maps0 in original.items():
            found[name].append([compare(maps0[i], current[name][i]) for i in measured[name]])
        reporter.advance(1)
    reporter.finish()
    rows = [_summary(m.name, found[m.name], [0, *points], cascade, len(measured[m.name]), len(keys), threshold)
            for m in engine.methods]
    layer = engine.layer.name if engine.layer is not None else None
    return SanityResult(rows=rows, cascade=cascade, depths=[0, *points], images=list(keys), threshold=threshold,
                        seed=seed, settings={"layer": layer})


def _all_maps(engine: Explainer, x: torch.Tensor, target: torch.Tensor, keys: list[str],
              batch_size: int) -> dict[str, np.ndarray]:
    """Every method's maps (N, H, W) for x, ``batch_size`` images at a time; a method that fails raises."""
    parts: dict[str, list[np.ndarray]] = {m.name: [] for m in engine.methods}
    for s in range(0, x.shape[0], batch_size):
        result = engine(x[s:s + batch_size], keys[s:s + batch_size], target[s:s + batch_size])
        for m in engine.methods:
            if m.name in result.failures:
                raise result.failures[m.name]
            parts[m.name].append(result.maps[m.name].numpy())
    return {name: np.concatenate(p) for name, p in parts.items()}


def _summary(name: str, points: list[list[tuple[float, float]]], depths: list[int], cascade: list[str],
             measured: int, total: int, threshold: float) -> dict[str, Any]:
    """One method's row: the curve (mean and std of Spearman and SSIM per cascade point) and the verdict."""
    def stat(f, values):
        return float(f(values)) if values else None

    curve = []
    for depth, pairs in zip(depths, points):
        rho, sim = [p[0] for p in pairs], [p[1] for p in pairs]
        curve.append({"depth": depth, "randomized": cascade[:depth],
                      "spearman_mean": stat(np.mean, rho), "spearman_std": stat(np.std, rho),
                      "ssim_mean": stat(np.mean, sim), "ssim_std": stat(np.std, sim)})
    final = curve[-1]["spearman_mean"]
    return {"method": name, "images": measured, "constant_maps": total - measured,
            "randomization_similarity": final, "ssim_final": curve[-1]["ssim_mean"],
            "verdict": "n/a" if final is None else "pass" if final < threshold else "fail", "curve": curve}


# ---------------------------------------------------------------------------------------------- the command
def run(config: RunConfig, opts: SanityOptions, reporter=None) -> SanityResult:
    """Resolve the model and methods as ``explain`` does, read the first images, run the randomization test."""
    resolved = resolve(config, reporter, default_batch=16)
    if resolved.model.scripted:
        raise UsageError("salcli sanity re-initializes the model's layers one by one, which a TorchScript "
                         "archive does not allow; load the model from a factory or a state dict")
    items = images.discover(list(config.inputs), exclude=config.out)[:opts.limit]  # never read OUT's own files
    pre = resolved.preprocess
    tensors, keys = [], []
    for item in items:
        try:
            tensors.append(torch.from_numpy(images.normalize(images.prepare(images.load(item), pre), pre)))
            keys.append(item.key)
        except images.ImageError as exc:
            if reporter is not None:
                reporter.note(f"skipped {item.key}: {exc}")
    if not tensors:
        raise UsageError("none of the input images could be read")
    result = randomization_test(resolved.explainer, torch.stack(tensors).to(resolved.device), keys,
                                max_steps=opts.max_steps, threshold=opts.threshold,
                                batch_size=resolved.batch_size, reporter=reporter)
    result.settings = {"model": config.model, "weights": config.weights, "checksums": resolved.model.checksums,
                       "preprocess": dataclasses.asdict(pre), "device": str(resolved.device),
                       "params": {m.name: dataclasses.asdict(m.params) for m in resolved.methods},
                       **result.settings}
    return result


def write_results(out: Path, result: SanityResult) -> list[str]:
    """OUT/sanity.json (everything) and OUT/sanity.png (mean Spearman against depth, one line per method)."""
    from . import render

    outputs.write_json(out / "sanity.json", result.to_json())
    series = {r["method"]: [c["spearman_mean"] for c in r["curve"]] for r in result.rows
              if r["randomization_similarity"] is not None}
    png = render.line_plot(series, "Cascading randomization (Adebayo et al. 2018)",
                           "layers randomized, from the logits down",
                           "mean Spearman rank correlation with the original map", x=result.depths)
    outputs.write_bytes(out / "sanity.png", png)
    return ["sanity.json", "sanity.png"]
