"""Pure array work on saliency maps: channel reduction, display normalization, resizing. No I/O."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def max_abs_channels(grad: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W): max over channels of |grad|, float32."""
    return grad.detach().abs().amax(dim=1).float()


def sum_channels(values: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W): signed sum over channels, float32."""
    return values.detach().sum(dim=1).float()


def resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, H, W), bilinear (align_corners=False)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


def display_scale(m: np.ndarray, percentile: float = 99.0) -> np.ndarray:
    """A map (H, W) -> [0, 1] for display: |m| scaled from its minimum to its ``percentile``-th percentile,
    clipped. The robust clip keeps one extreme pixel from washing out the rest; subtracting the minimum shows
    maps with a constant offset (RISE) with contrast. Signed maps are shown by magnitude
    (the ``.npy`` keeps the sign). A constant or all-zero map gives zeros.
    """
    a = np.abs(np.nan_to_num(m.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0))
    if not a.size or a.max() == a.min():
        return np.zeros_like(a, dtype=np.float32)  # a constant map has nothing to show
    low = a.min()
    top = np.percentile(a, percentile) - low
    if top <= 0:
        top = a.max() - low
    return np.clip((a - low) / top, 0.0, 1.0).astype(np.float32)
