"""Pure array work on saliency maps: channel reduction, display normalization, resizing. No I/O.

torch is imported by the functions that take tensors only: the display half (NumPy) serves ``salcli render``,
which draws overlays from stored maps without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def max_abs_channels(grad: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W): max over channels of |grad|, float32."""
    return grad.detach().abs().amax(dim=1).float()


def sum_channels(values: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W): signed sum over channels, float32."""
    return values.detach().sum(dim=1).float()


def resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, H, W), bilinear (align_corners=False)."""
    import torch.nn.functional as F

    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)



# A layer map (Grad-CAM's 7x7) may be stored at its own resolution (``--layer-maps native``); its record says
# ``upsample`` and every reader brings it to the input's resolution with this one function, in NumPy (``salcli
# render`` has no torch). It is the bilinear resize ``resize`` does (PyTorch's ``interpolate``, align_corners=False:
# source coordinate (i + 0.5) * in / out - 0.5, clamped at 0), equal to it up to float32 rounding (a few ulp).
UPSAMPLE = {"mode": "bilinear", "align_corners": False}


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each output index along one axis: the two source indices and their weights."""
    d = np.arange(n_out, dtype=np.float32)
    src = np.maximum((d + np.float32(0.5)) * np.float32(n_in / n_out) - np.float32(0.5), np.float32(0.0))
    lo = np.minimum(src.astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    w_hi = (src - lo.astype(np.float32)).astype(np.float32)
    return lo, hi, (np.float32(1.0) - w_hi).astype(np.float32), w_hi


def upsample(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) -> (H, W) float32, bilinear with align_corners=False (see ``UPSAMPLE``); a map already of that
    size comes back as float32 unchanged."""
    m = np.asarray(m, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"a map is 2-D (h, w); got shape {m.shape}")
    size = (int(size[0]), int(size[1]))
    if m.shape == size:
        return m
    if min(size) < 1 or not m.size:
        raise ValueError(f"cannot resize a {m.shape} map to {size}")
    r0, r1, a0, a1 = _taps(m.shape[0], size[0])
    c0, c1, b0, b1 = _taps(m.shape[1], size[1])
    top, bottom = m[r0], m[r1]
    rows = a0[:, None] * (b0 * top[:, c0] + b1 * top[:, c1]) + a1[:, None] * (b0 * bottom[:, c0] + b1 * bottom[:, c1])
    return rows.astype(np.float32, copy=False)


def at_input(m: np.ndarray, record: dict) -> np.ndarray:
    """A stored map at the model input's resolution: upsampled as its record's ``upsample`` says, else as it is."""
    how = record.get("upsample")
    if not how:
        return m
    if how.get("mode") != "bilinear" or how.get("align_corners") not in (False, None):
        raise ValueError(f"unknown upsampling {how!r} in the record of {record.get('image')!r}")
    return upsample(m, tuple(how["size"]))

# ---------------------------------------------------------------------------------------------- display
# How a map is shown (never how it is computed: the .npy keeps the raw values). A map is drawn in one of four modes:
#   all       signed: m / hi in [-1, 1], 0 stays 0 (a diverging colormap centred on 0)
#   positive  max(m, 0) / hi in [0, 1]     negative  max(-m, 0) / hi in [0, 1]
#   absolute  (|m| - lo) / (hi - lo) in [0, 1], lo = the minimum of |m| (how every map was shown before)
# ``display_range`` gives (lo, hi) from one map: hi is the ``percentile``-th percentile of the shown magnitudes (a
# robust clip: one extreme pixel does not wash out the rest); ``display_values`` applies a range, one map's own
# or a range shared by many maps (``--scale run``) or given (``--scale VALUE``).
from .config import SIGN_MODES  # noqa: E402 (one list, no torch in config)


class MapNotFinite(ValueError):
    """A map holding NaN or infinite values: it has no honest picture."""


def check_finite(m: np.ndarray) -> None:
    """Raise ``MapNotFinite`` (with the counts) if the map holds NaN or infinite values."""
    finite = np.isfinite(m)
    if not finite.all():
        nan = int(np.isnan(m).sum())
        raise MapNotFinite(f"the map holds {nan} NaN and {int((~finite).sum()) - nan} infinite value(s) of "
                           f"{m.size}; no overlay is drawn for it (a NaN map usually means the model's output was "
                           "NaN or a method diverged)")


def _magnitudes(m: np.ndarray, mode: str) -> np.ndarray:
    if mode not in SIGN_MODES:
        raise ValueError(f"unknown sign mode '{mode}'; one of {', '.join(SIGN_MODES)}")
    a = m.astype(np.float64)
    if mode == "positive":
        return np.maximum(a, 0.0)
    if mode == "negative":
        return np.maximum(-a, 0.0)
    return np.abs(a)


def display_range(m: np.ndarray, mode: str = "absolute", percentile: float = 99.0) -> tuple[float, float]:
    """(lo, hi) of a finite map for ``display_values``: lo is the minimum magnitude in ``absolute`` mode and 0
    otherwise; hi is the ``percentile``-th percentile of the magnitudes shown (the maximum if that is not above
    lo). lo == hi means there is nothing to show."""
    a = _magnitudes(m, mode)
    if not a.size:
        return 0.0, 0.0
    lo = float(a.min()) if mode == "absolute" else 0.0
    hi = float(np.percentile(a, percentile))
    if hi <= lo:
        hi = float(a.max())
    return lo, max(hi, lo)


def display_values(m: np.ndarray, mode: str, lo: float, hi: float) -> np.ndarray:
    """A finite map (H, W) -> float32 (H, W) for a colormap: in [-1, 1] for ``all`` (0 is 0), else in [0, 1]; values
    beyond the range are clipped. An empty range (hi <= lo) gives zeros."""
    a = _magnitudes(m, mode)
    if not hi > lo:
        return np.zeros(m.shape, dtype=np.float32)
    if mode == "all":
        return np.clip(m.astype(np.float64) / hi, -1.0, 1.0).astype(np.float32)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def display_scale(m: np.ndarray, percentile: float = 99.0) -> np.ndarray:
    """A map (H, W) -> [0, 1] for display: |m| scaled from its minimum to its ``percentile``-th percentile,
    clipped (``absolute`` mode with the map's own range). The robust clip keeps one extreme pixel from washing out
    the rest; subtracting the minimum shows maps with a constant offset (RISE) with contrast. NaN and infinite
    values count as 0 here. A constant or all-zero map gives zeros.
    """
    a = np.abs(np.nan_to_num(m.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0))
    return display_values(a, "absolute", *display_range(a, "absolute", percentile))
