"""What every attribution method shares: one call shape, a context, and helpers for input gradients."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import ClassVar

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
    layer: nn.Module | None = None
    primal: tuple[torch.Tensor, torch.Tensor] | None = None

    def generator(self, i: int, device: torch.device | str = "cpu") -> torch.Generator:
        return torch.Generator(device=device).manual_seed(image_seed(self.seed, self.keys[i]))


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
    uses_primal: ClassVar[bool] = False  # can reuse Context.primal
    Params: ClassVar[type] = NoParams

    def __init__(self, params=None) -> None:
        self.params = params if params is not None else self.Params()

    def passes(self) -> str:
        """Cost per image in forward/backward passes, for ``salcli methods``."""
        return "1 forward + 1 backward"

    def attribute(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, ctx: Context) -> torch.Tensor:
        """x (B, C, H, W), target (B,) class indices -> map (B, H, W) float32."""
        raise NotImplementedError


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
