"""What every attribution method shares: one call shape, a context, and helpers for input gradients."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class NoParams:
    """A method without parameters."""


@dataclass
class Context:
    """What a method may use besides the model, the batch and the targets.

    ``keys`` are the images' relative paths: random draws for image i come from ``generator(i)``, seeded by
    (seed, key) alone, so maps do not depend on batching, order or sharding. ``primal`` is an already
    computed forward pass ``(x_leaf, logits)`` on the batch, with its graph, that a single-pass gradient method
    may reuse instead of running the model again.
    """

    keys: list[str]
    seed: int = 0
    layer: Any = None  # a layers.LayerSpec for methods with needs_layer
    primal: tuple[torch.Tensor, torch.Tensor] | None = None
    chunk: int = 64  # most model inputs in one forward pass (inner samples x images)
    mean: tuple[float, ...] | None = None  # the preprocessing's normalization, to build pixel-space baselines;
    std: tuple[float, ...] | None = None  # None: the input is taken to be pixels in [0, 1]
    references: torch.Tensor | None = None  # (R, C, H, W) reference images, for methods that take them
    native: bool = False  # a layer_map method returns its map at the layer's resolution (--layer-maps native)

    def from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel values in [0, 1] (..., C, H, W) -> the model's normalized input space."""
        if self.mean is None or self.std is None:
            return pixels
        mean = torch.tensor(self.mean, dtype=pixels.dtype, device=pixels.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=pixels.dtype, device=pixels.device).view(-1, 1, 1)
        return (pixels - mean) / std

    def generator(self, i: int, stream: str = "") -> torch.Generator:
        """A CPU generator for image i: draw on the CPU, then move, so draws match on every device. A named
        ``stream`` gives an independent sequence (a baseline's noise is not the method's own draws)."""
        key = f"{self.keys[i]}#{stream}" if stream else self.keys[i]
        return torch.Generator().manual_seed(image_seed(self.seed, key))


def image_seed(seed: int, key: str) -> int:
    """A 63-bit seed from the run's seed and an image's relative path."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class Method:
    """Base class. Subclasses set the class attributes and implement ``attribute``."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    convention: ClassVar[str] = ""
    needs_layer: ClassVar[bool] = False
    layer_map: ClassVar[bool] = False  # its map is a layer's map resized to the input (kept native on request)
    signed: ClassVar[bool | None] = None  # maps may be negative (drawn with a diverging colormap); None: by convention
    uses_primal: ClassVar[bool] = False  # can reuse Context.primal
    Params: ClassVar[type] = NoParams

    def __init__(self, params=None) -> None:
        self.params = params if params is not None else self.Params()

    def passes(self) -> str:
        """Cost per image in forward/backward passes, for ``salcli methods``."""
        return "1 forward + 1 backward"

    def footprint(self, shape: tuple[int, int, int]) -> int:
        """Bytes the method holds per image for an input of ``shape`` (C, H, W) beyond the chunked model passes
        (random draws, coalition matrices): the engine refuses parameters whose batch would not fit in memory,
        before the first image. Most methods hold nothing that grows with their parameters."""
        return 0

    def attribute(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, ctx: Context) -> torch.Tensor:
        """x (B, C, H, W), target (B,) class indices -> map (B, H, W) float32."""
        return self.attribute_with_extras(model, x, target, ctx)[0]

    def attribute_with_extras(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                              ctx: Context) -> tuple[torch.Tensor, dict[str, list]]:
        """Like ``attribute``, plus per-image values for the manifest (``{name: [value per image]}``).

        Subclasses override one of the two.
        """
        if type(self).attribute is Method.attribute:
            raise TypeError(f"{type(self).__name__} must implement attribute or attribute_with_extras")
        return self.attribute(model, x, target, ctx), {}


def input_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                   primal: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """d logit[target] / d x for each image, (B, C, H, W); gradients flow to the input only.

    Works on a detached copy of ``x``; the model's parameters get no ``.grad``.
    """
    with torch.enable_grad():
        if primal is not None:
            x_leaf, logits = primal
        else:
            x_leaf = x.detach().requires_grad_(True)
            logits = model(x_leaf)
        score = logits.gather(1, target.view(-1, 1).to(logits.device)).sum()
        (grad,) = torch.autograd.grad(score, x_leaf)
    return grad


def gradients(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, chunk: int,
              with_scores: bool = False):
    """d logit[target] / d input for many inputs, ``chunk`` at a time: inputs (N, C, H, W), target (N,).

    Returns grads (N, C, H, W), and the target logits (N,) when ``with_scores``.
    """
    grads, scores = [], []
    for start in range(0, inputs.shape[0], max(1, chunk)):
        part = inputs[start:start + chunk]
        with torch.enable_grad():
            leaf = part.detach().requires_grad_(True)
            logit = model(leaf).gather(1, target[start:start + chunk].view(-1, 1)).squeeze(1)
            (g,) = torch.autograd.grad(logit.sum(), leaf)
        grads.append(g)
        scores.append(logit.detach())
    grads = torch.cat(grads)
    return (grads, torch.cat(scores)) if with_scores else grads


def logits_of(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, chunk: int) -> torch.Tensor:
    """The target logits (N,) for inputs (N, C, H, W), without a graph, ``chunk`` at a time."""
    out = []
    with torch.no_grad():
        for start in range(0, inputs.shape[0], max(1, chunk)):
            logits = model(inputs[start:start + chunk])
            out.append(logits.gather(1, target[start:start + chunk].view(-1, 1)).squeeze(1))
    return torch.cat(out)


def stream_gradients(model: nn.Module, target: torch.Tensor, chunk: int, samples, consume) -> None:
    """Input gradients for per-image sample sets, packed across images into forward passes of ``chunk``.

    ``samples`` yields ``(i, inputs (S_i, C, H, W))`` for image i (built lazily, so only a few images' samples
    are in memory at once); ``consume(i, start, grads)`` receives the gradients of inputs[start:start+len]
    in order. Reductions happen in ``consume``, so memory stays bounded whatever the sample count.
    """
    chunk = max(1, chunk)
    pending: list[tuple[int, int, torch.Tensor]] = []
    size = 0

    def flush() -> None:
        inputs = torch.cat([t for _, _, t in pending])
        tgt = torch.cat([target[i].expand(t.shape[0]) for i, _, t in pending])
        grads = gradients(model, inputs, tgt, chunk)
        offset = 0
        for i, start, t in pending:
            consume(i, start, grads[offset:offset + t.shape[0]])
            offset += t.shape[0]

    for i, inputs in samples:
        start, n = 0, inputs.shape[0]
        while start < n:
            take = min(chunk - size, n - start)
            pending.append((i, start, inputs[start:start + take]))
            size += take
            start += take
            if size == chunk:
                flush()
                pending, size = [], 0
    if pending:
        flush()
