"""The Python API: attribution maps from tensors, no files involved."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from . import methods


def explain(model: nn.Module, x: torch.Tensor, target: int | Sequence[int] | torch.Tensor | None = None,
            method: str = "vanilla", keys: Sequence[str] | None = None, seed: int = 0,
            **params: Any) -> torch.Tensor:
    """Saliency maps (B, H, W) float32 for a preprocessed batch x (B, C, H, W).

    ``target``: a class index for all images, one per image, or None for the top-1 prediction. ``keys`` name
    the images for seeding random methods (default: their position). The model is used as it is: its mode,
    hooks, parameters and their ``requires_grad`` flags are left unchanged, and no ``.grad`` is set.
    """
    m = methods.create(method, params)
    if target is None:
        with torch.no_grad():
            target = model(x).argmax(dim=1)
    target = torch.as_tensor(target, device=x.device).long().expand(x.shape[0]).contiguous()
    keys = list(keys) if keys is not None else [str(i) for i in range(x.shape[0])]
    grads_before = {id(p): p.grad for p in model.parameters()}
    out = m.attribute(model, x, target, methods.Context(keys=keys, seed=seed))
    for p in model.parameters():
        p.grad = grads_before.get(id(p))
    return out
