"""Evaluation and sanity measures. Pure: arrays and tensors in, numbers out; no files, no terminal.

- Localization against an object mask: pointing game (Zhang et al. 2016), energy-based pointing game
  (Wang et al. 2020, Score-CAM), IoU of the top-k% region.
- Faithfulness: deletion and insertion curves and their AUC (Petsiuk et al. 2018, RISE), with the RISE fills
  (deletion: zeros in normalized space; insertion: from a blur, kernel 11, σ 5) or a fill closer to the data
  (blur for deletion, ROAD's noisy linear imputation, Rong et al. 2022).
- Similarity of two maps: Spearman rank correlation and SSIM (Adebayo et al. 2018 use both).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .methods.baselines import gaussian_blur


# ---------------------------------------------------------------------------------------------- localization
def pointing_hit(saliency: np.ndarray, mask: np.ndarray, tolerance: float) -> bool:
    """True if the map's maximum lies within ``tolerance`` pixels of the object (mask > 0)."""
    if not mask.any():
        raise ValueError("empty mask")
    y, x = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    ys, xs = np.nonzero(mask)
    return bool(((ys - y) ** 2 + (xs - x) ** 2).min() <= tolerance ** 2)


def energy_inside(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's positive mass inside the object, in [0, 1] (0 for a map with no positive mass)."""
    pos = np.clip(saliency.astype(np.float64), 0, None)
    total = pos.sum()
    return float(pos[mask > 0].sum() / total) if total > 0 else 0.0


def top_k_iou(saliency: np.ndarray, mask: np.ndarray, k: float = 0.2) -> float:
    """IoU between the object and the top-k fraction of pixels by map value."""
    n = max(1, int(round(k * saliency.size)))
    order = np.argsort(-saliency.astype(np.float64), axis=None, kind="stable")[:n]
    top = np.zeros(saliency.size, dtype=bool)
    top[order] = True
    obj = (mask > 0).reshape(-1)
    union = np.logical_or(top, obj).sum()
    return float(np.logical_and(top, obj).sum() / union) if union else 0.0


# ---------------------------------------------------------------------------------------------- faithfulness
def noisy_linear_imputation(x: torch.Tensor, removed: torch.Tensor, noise: float = 0.01,
                            iterations: int = 60, generators: list[torch.Generator] | None = None) -> torch.Tensor:
    """ROAD's fill: removed pixels take the average of their neighbours (a discrete Laplace equation,
    solved here by Jacobi iterations), plus Gaussian noise of std ``noise``. x (B, C, H, W); removed (B, 1, H, W)
    bool. ``generators``: one per image, so an image's noise does not depend on the batch it is in (default:
    torch's global generator)."""
    removed = removed.to(x.dtype)
    kernel = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]],
                          dtype=x.dtype, device=x.device)
    kernel = kernel.view(1, 1, 3, 3).repeat(x.shape[1], 1, 1, 1)
    y = x * (1 - removed) + (x * (1 - removed)).mean(dim=(2, 3), keepdim=True) * removed
    ones = torch.ones_like(x[:, :1])
    weight = F.conv2d(F.pad(ones, (1, 1, 1, 1)), kernel[:1])  # border pixels have fewer neighbours
    for _ in range(iterations):
        smooth = F.conv2d(F.pad(y, (1, 1, 1, 1)), kernel, groups=x.shape[1]) / weight
        y = x * (1 - removed) + smooth * removed
    if noise > 0:
        if generators is None:
            eps = torch.randn(x.shape)
        else:
            eps = torch.stack([torch.randn(x.shape[1:], generator=g) for g in generators])
        eps = eps.to(x.device, x.dtype)
        y = y + noise * eps * removed
    return y


def perturbation_curve(model, x: torch.Tensor, saliency: torch.Tensor, target: torch.Tensor, mode: str,
                       fill: str, steps: int = 32, chunk: int = 64,
                       generators: list[torch.Generator] | None = None) -> torch.Tensor:
    """Probability of ``target`` as pixels are deleted (or inserted) in the order of the map, most salient
    first. x (B, C, H, W), saliency (B, H, W) -> curve (B, steps + 1), from 0% to 100% of the pixels.

    mode ``deletion``: start at x, replace pixels by the fill. mode ``insertion``: start at the fill, put back
    pixels of x. fill: ``zero`` (0 in normalized space), ``blur`` (kernel 11, σ 5) or ``road`` (noisy linear
    imputation of the removed pixels, for deletion only; ``generators``, one per image, draw its noise).
    ``model`` is any callable from inputs to logits.
    """
    b, c, h, w = x.shape
    order = torch.argsort(saliency.reshape(b, -1).to(x.device), dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=x.device).expand(b, -1))
    rank = rank.view(b, 1, h, w)
    counts = [round(i * h * w / steps) for i in range(steps + 1)]
    if fill == "zero":
        other = torch.zeros_like(x)
    elif fill == "blur":
        other = gaussian_blur(x)
    elif fill == "road":
        if mode != "deletion":
            raise ValueError("the road fill is for deletion")
        other = None
    else:
        raise ValueError(f"unknown fill '{fill}'; use zero, blur or road")
    inputs = []
    for n in counts:
        changed = rank < n  # the n most salient pixels
        if mode == "deletion":
            inputs.append(noisy_linear_imputation(x, changed, generators=generators) if other is None
                          else torch.where(changed, other, x))
        elif mode == "insertion":
            inputs.append(torch.where(changed, x, other))
        else:
            raise ValueError("mode is deletion or insertion")
    stacked = torch.stack(inputs, dim=1).reshape(b * len(counts), c, h, w)
    tgt = target.to(x.device).repeat_interleave(len(counts))
    probs = []
    with torch.no_grad():
        for s in range(0, stacked.shape[0], chunk):
            logits = model(stacked[s:s + chunk])
            probs.append(torch.softmax(logits.float(), dim=1).gather(1, tgt[s:s + chunk].view(-1, 1)).squeeze(1))
    return torch.cat(probs).view(b, len(counts)).cpu()


def auc(curve: torch.Tensor) -> torch.Tensor:
    """Area under curves (B, n) sampled evenly on [0, 1], trapezoid rule."""
    n = curve.shape[-1] - 1
    return (curve[..., 1:] + curve[..., :-1]).sum(-1) / (2 * n)


# ---------------------------------------------------------------------------------------------- similarity
def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (average ranks for ties); 0 when either is constant."""
    ra, rb = _ranks(a.reshape(-1)), _ranks(b.reshape(-1))
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v), dtype=np.float64)
    ranks[order] = np.arange(len(v), dtype=np.float64)
    values, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    if len(values) < len(v):  # average the ranks of ties
        sums = np.bincount(inverse, weights=ranks)
        ranks = (sums / counts)[inverse]
    return ranks


def ssim(a: np.ndarray, b: np.ndarray, window: int = 7) -> float:
    """Structural similarity of two maps, each first scaled to [0, 1] by its own min and max (as Adebayo et
    al. compare normalized maps); uniform window, the standard constants."""
    def scale(m):
        m = m.astype(np.float64)
        span = m.max() - m.min()
        return (m - m.min()) / span if span > 0 else np.zeros_like(m)

    x = torch.from_numpy(scale(a))[None, None]
    y = torch.from_numpy(scale(b))[None, None]
    win = min(window, x.shape[-1], x.shape[-2])
    pool = lambda t: F.avg_pool2d(t, win, stride=1)  # noqa: E731
    mx, my = pool(x), pool(y)
    vx, vy, cxy = pool(x * x) - mx * mx, pool(y * y) - my * my, pool(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())
