"""The Python API: attribution maps from tensors, no files involved. Both forms run the same engine as the CLI.

- ``salcli.Explainer(model, methods, ...)``: configured once, called on batches (see ``engine.Explainer``).
- ``salcli.explain(model, x, method=..., ...)``: one call, one method.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .engine import Explainer


def explain(model: nn.Module, x: torch.Tensor, target: int | Sequence[int] | torch.Tensor | None = None,
            method: str = "vanilla", keys: Sequence[str] | None = None,
            seed: int = 0, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
            layer: str | None = None, **params: Any) -> torch.Tensor:
    """Saliency maps (B, H, W) float32 for a normalized batch x (B, C, H, W), on x's device. Everything after
    ``target`` is best passed by keyword.

    ``target``: a class index for all images, one per image, or None for the top-1 prediction. ``keys`` name the
    images for seeding random methods (the CLI uses their relative paths; default: their positions). ``mean`` and
    ``std``: the normalization x went through (give them, as the CLI knows them from the model's preset, for
    pixel-space baselines such as integrated gradients' ``black``; without them x is taken to be pixels in
    [0, 1]). ``layer``: the layer of layer methods (default: found automatically). ``params``: the method's
    parameters (``salcli methods``), e.g. ``steps=32`` or ``references="refs/"``. With the same inputs these are
    the CLI's maps (``--no-optimize``; the default fast paths change only rounding).

    The model is used as it is: its mode, hooks, parameters and their ``requires_grad`` flags are left unchanged,
    and no ``.grad`` is set. A method that fails raises.
    """
    engine = Explainer(model, [method], params={method: params}, layer=layer, mean=mean, std=std, seed=seed,
                       device=x.device)
    grads_before = {id(p): p.grad for p in model.parameters()}
    try:
        result = engine(x, keys=keys, target=target)
    finally:
        for p in model.parameters():
            p.grad = grads_before.get(id(p))
    name = engine.methods[0].name  # the registered name of `method` (GradCAM -> gradcam)
    if name in result.failures:
        raise result.failures[name]
    return result.maps[name].to(x.device)
