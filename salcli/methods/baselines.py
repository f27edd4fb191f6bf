"""Reference inputs ("baselines") shared by path methods, occlusion fills and perturbation metrics.

All are built in the model's normalized input space from a batch x (B, C, H, W):
- ``black``: pixel value 0 before normalization (the paper's "blank image"); equals ``zero`` when the input
  is not normalized.
- ``zero``: 0 in normalized space (the dataset mean when mean/std are the data's statistics).
- ``blur``: x blurred with a Gaussian (kernel 11, σ 5 by default, as RISE's insertion metric).
- ``uniform``: independent uniform pixel noise in [0, 1], seeded per image.
- ``mean``: each image's own per-channel mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Context

KINDS = ("black", "zero", "blur", "uniform", "mean")


def gaussian_blur(x: torch.Tensor, kernel: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with reflect padding (replicate for tiny images)."""
    half = kernel // 2
    t = torch.arange(kernel, dtype=x.dtype, device=x.device) - half
    w = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    w = w / w.sum()
    c = x.shape[1]
    mode = "reflect" if min(x.shape[-2:]) > half else "replicate"
    y = F.pad(x, (half, half, 0, 0), mode=mode)
    y = F.conv2d(y, w.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    y = F.pad(y, (0, 0, half, half), mode=mode)
    return F.conv2d(y, w.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def make(kind: str, x: torch.Tensor, ctx: Context) -> torch.Tensor:
    """A baseline of the same shape as x (B, C, H, W)."""
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "black":
        return ctx.from_pixels(torch.zeros_like(x))
    if kind == "blur":
        return gaussian_blur(x)
    if kind == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()
    if kind == "uniform":
        noise = torch.stack([torch.rand(x.shape[1:], generator=ctx.generator(i, "baseline"),
                                        dtype=torch.float32)
                             for i in range(x.shape[0])])
        return ctx.from_pixels(noise.to(device=x.device, dtype=x.dtype))
    raise ValueError(f"unknown baseline '{kind}'; choose one of {', '.join(KINDS)}")
