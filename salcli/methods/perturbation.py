"""Perturbation methods: maps read off the model's scores on occluded, masked or switched-off copies of x.

No gradients. Each method runs the model on many perturbed copies of the batch, the copies of all images side
by side, ``ctx.chunk`` inputs per forward. Removed pixels take a baseline (``baselines.KINDS``, default
``zero``: 0 in normalized space, Captum's default). Random draws for image i come from ``ctx.generator(i)``
only, so maps do not depend on batching or order. Scores are the target's logit, except RISE (softmax
probability, as in the paper). Small regressions run on the CPU in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn

from . import baselines
from .base import Context, Method, logits_of
from .registry import register

Fill = Literal[baselines.KINDS]


def _check_fill(fill: str) -> None:
    if fill not in baselines.KINDS:
        raise ValueError(f"fill must be one of {', '.join(baselines.KINDS)}; got '{fill}'")


def _pairs(batch: int, n: int, chunk: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(image, sample) indices of the batch * n perturbed inputs, ``chunk`` at a time, images side by side."""
    total = batch * n
    for start in range(0, total, max(1, chunk)):
        flat = torch.arange(start, min(start + max(1, chunk), total), device=device)
        yield flat // n, flat % n


def _scores(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, prob: bool = False) -> torch.Tensor:
    """The target's logit (or softmax probability) for each input, (N,), without a graph."""
    with torch.no_grad():
        out = model(inputs)
        if prob:
            out = out.softmax(dim=1)
        return out.gather(1, target.view(-1, 1)).squeeze(1)


def _pixels(value: float, whole: int) -> int:
    """A length given in pixels (value >= 1) or as a fraction of ``whole`` (value < 1), at least 1 pixel."""
    return int(value) if value >= 1 else max(1, math.floor(value * whole + 0.5))


def _check_length(name: str, value: float) -> None:
    if value <= 0 or (value >= 1 and not float(value).is_integer()):
        raise ValueError(f"{name} must be a whole number of pixels (>= 1) or a fraction in (0, 1); got {value}")


def _windows(size: int, window: int, stride: int) -> torch.Tensor:
    """(n, size) bool: the windows along one axis where Captum's Occlusion puts them. Starts 0, s, 2s, ... until
    one reaches size − window, ceil((size − window) / s) + 1 of them; the last may overhang and is clipped."""
    starts = torch.arange(math.ceil((size - window) / stride) + 1) * stride
    pos = torch.arange(size)
    return (pos >= starts[:, None]) & (pos < starts[:, None] + window)


@dataclass(frozen=True)
class OcclusionParams:
    window: float = 0.125  # < 1: fraction of the shorter side (28 px at 224, 4 px at 28); >= 1: pixels
    stride: float = 0.5  # < 1: fraction of the window; >= 1: pixels
    fill: Fill = "zero"

    def __post_init__(self) -> None:
        _check_length("window", self.window)
        _check_length("stride", self.stride)
        if self.window >= 1 and self.stride >= 1 and self.stride > self.window:
            raise ValueError("stride must not exceed the window, or pixels would never be occluded")
        _check_fill(self.fill)


@register("occlusion")
class Occlusion(Method):
    """Occlusion: how much the target's score drops when a square window is filled with a baseline.

    Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks". For windows W_k sliding with a
    stride (placed and clipped as Captum's Occlusion does), map(u) = mean over {k : u ∈ W_k} of
    f(x) − f(x with W_k filled). Equals Captum's ``Occlusion`` with window (C, w, w) and strides (C, s, s).
    """

    family = "perturbation"
    signed = True
    paper = "Zeiler & Fergus 2014"
    convention = "score drop per pixel, averaged over the windows covering it, signed"
    Params = OcclusionParams

    def passes(self) -> str:
        return "1 + (number of windows) forwards; 226 at 224 px with the defaults"

    def attribute(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, ctx: Context) -> torch.Tensor:
        p, (batch, _, h, w), x = self.params, x.shape, x.detach()
        size = _pixels(p.window, min(h, w))
        stride = _pixels(p.stride, size)
        if stride > size:
            raise ValueError(f"occlusion: the stride ({stride} px) exceeds the window ({size} px)")
        rows, cols = _windows(h, min(size, h), stride), _windows(w, min(size, w), stride)
        n_cols, fill = cols.shape[0], baselines.make(p.fill, x, ctx)
        rows_d, cols_d = rows.to(x.device), cols.to(x.device)
        scores = []
        for b, k in _pairs(batch, rows.shape[0] * n_cols, ctx.chunk, x.device):
            hole = rows_d[k // n_cols][:, :, None] & cols_d[k % n_cols][:, None, :]
            scores.append(_scores(model, torch.where(hole[:, None], fill[b], x[b]), target[b]))
        drop = logits_of(model, x, target, ctx.chunk)[:, None] - torch.cat(scores).view(batch, -1)
        r, c = rows.double(), cols.double()
        total = torch.einsum("brc,rh,cw->bhw", drop.cpu().double().view(batch, -1, n_cols), r, c)
        return (total / torch.outer(r.sum(0), c.sum(0))).float().to(x.device)


@dataclass(frozen=True)
class RiseParams:
    masks: int = 1000  # the paper: 4000 for ResNet-50; 1000 is ~2 min per ResNet-50 image on 2 CPU cores
    cells: int = 7  # grid side s; cells of ceil(H / s) px
    p: float = 0.5  # probability that a cell is kept
    fill: Fill = "zero"  # zero: the paper's x ⊙ M in normalized space

    def __post_init__(self) -> None:
        if self.masks < 1 or self.cells < 1:
            raise ValueError("masks and cells must be at least 1")
        if not 0 < self.p <= 1:
            raise ValueError("p must be in (0, 1]")
        _check_fill(self.fill)


def rise_masks(grid: torch.Tensor, shift: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Binary grids (n, s, s) and shifts (n, 2) -> soft masks (n, H, W): each grid upsampled bilinearly to
    s + 1 cells of ceil(H / s) px, then cropped to (H, W) at its shift."""
    n, s = grid.shape[0], grid.shape[-1]
    cell = (math.ceil(size[0] / s), math.ceil(size[1] / s))
    up = F.interpolate(grid[:, None].float(), size=((s + 1) * cell[0], (s + 1) * cell[1]), mode="bilinear",
                       align_corners=False)[:, 0]
    rows = shift[:, :1] + torch.arange(size[0], device=grid.device)
    cols = shift[:, 1:] + torch.arange(size[1], device=grid.device)
    return up[torch.arange(n, device=grid.device)[:, None, None], rows[:, :, None], cols[:, None, :]]


@register("rise")
class Rise(Method):
    """RISE: the mean of random smooth masks, each weighted by the target's probability on the masked input.

    Petsiuk, Das, Saenko 2018, "RISE: Randomized Input Sampling for Explanation of Black-box Models".
    map = Σ_i P_t(x ⊙ M_i + fill ⊙ (1 − M_i)) M_i / (N p), M_i a random s×s grid of cells kept with
    probability p, upsampled bilinearly and shifted by up to a cell. With fill ``zero`` this is the paper's
    x ⊙ M_i in normalized space (its PyTorch code); other fills (``blur``, ``black``) mask toward that baseline.
    """

    family = "perturbation"
    paper = "Petsiuk et al. 2018"
    convention = "weighted mean of masked scores per pixel, >= 0"
    Params = RiseParams

    def passes(self) -> str:
        return f"{self.params.masks} forwards (N masks)"

    def footprint(self, shape: tuple[int, int, int]) -> int:
        return self.params.masks * (self.params.cells ** 2 * 5 + 16)  # the draws (float, then bool), the shifts

    def attribute(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, ctx: Context) -> torch.Tensor:
        p, (batch, _, h, w), x = self.params, x.shape, x.detach()
        cell_h, cell_w = math.ceil(h / p.cells), math.ceil(w / p.cells)
        grids, shifts = [], []
        for i in range(batch):  # the draws only: one generator per image
            g = ctx.generator(i)
            grids.append(torch.rand(p.masks, p.cells, p.cells, generator=g) < p.p)
            shifts.append(torch.stack([torch.randint(cell_h, (p.masks,), generator=g),
                                       torch.randint(cell_w, (p.masks,), generator=g)], dim=1))
        grids, shifts = torch.stack(grids).to(x.device), torch.stack(shifts).to(x.device)
        fill = baselines.make(p.fill, x, ctx)
        acc = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
        total = torch.zeros(batch, h, w, dtype=acc, device=x.device)
        for b, j in _pairs(batch, p.masks, ctx.chunk, x.device):
            m = rise_masks(grids[b, j], shifts[b, j], (h, w))
            prob = _scores(model, x[b] * m[:, None] + fill[b] * (1 - m[:, None]), target[b], prob=True)
            total.index_add_(0, b, (prob[:, None, None] * m).to(acc))
        return (total / (p.masks * p.p)).float()


def coalition_footprint(samples: int, grid: int, shape: tuple[int, int, int]) -> int:
    """Bytes per image of LIME's and KernelSHAP's coalitions (drawn as floats, kept as bools, fitted in float64)
    and of the fit's (M, M) system, for ``samples`` coalitions of grid x grid segments."""
    segments = min(grid, shape[1]) * min(grid, shape[2])
    return samples * segments * 17 + segments * segments * 8


def grid_segments(h: int, w: int, grid: int) -> tuple[torch.Tensor, int]:
    """A regular grid of segments, at most one per pixel: ids (H, W) long, row-major, and their count."""
    gh, gw = min(grid, h), min(grid, w)
    ids = (torch.arange(h) * gh // h)[:, None] * gw + (torch.arange(w) * gw // w)[None, :]
    return ids, gh * gw


def coalition_scores(model: nn.Module, x: torch.Tensor, fill: torch.Tensor, seg: torch.Tensor, z: torch.Tensor,
                     target: torch.Tensor, chunk: int) -> torch.Tensor:
    """Target logits (B, n) for coalitions z (B, n, M) bool: a segment in the coalition keeps x, the others
    take the fill. x, fill (B, C, H, W); seg (H, W) segment ids."""
    z, seg = z.to(x.device), seg.to(x.device)
    out = []
    for b, j in _pairs(z.shape[0], z.shape[1], chunk, x.device):
        keep = z[b, j][:, seg]
        out.append(_scores(model, torch.where(keep[:, None], x[b], fill[b]), target[b]))
    return torch.cat(out).view(z.shape[0], z.shape[1])


def weighted_ridge(z: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """argmin_β Σ_i w_i (y_i − b − z_i·β)² + α |β|² with a free intercept b (sklearn's Ridge with sample
    weights): z (B, n, M), y and weight (B, n) -> β (B, M)."""
    wsum = weight.sum(1, keepdim=True)
    zc = z - (weight[..., None] * z).sum(1, keepdim=True) / wsum[..., None]
    yc = y - (weight * y).sum(1, keepdim=True) / wsum
    lhs = zc.transpose(1, 2) @ (weight[..., None] * zc) + alpha * torch.eye(z.shape[-1], dtype=z.dtype)
    return torch.linalg.solve(lhs, zc.transpose(1, 2) @ (weight * yc)[..., None])[..., 0]


@dataclass(frozen=True)
class LimeParams:
    grid: int = 7  # grid × grid square segments: 32 px at 224, 4 px at 28, RISE's cells
    samples: int = 500  # ~10 per coefficient (LIME's image default: 1000); seed-to-seed r ≈ 0.93 at 28 px
    fill: Fill = "zero"  # for switched-off segments (Captum's default baseline)
    kernel_width: float = 0.25  # LIME's image explainer default, on the cosine distance

    def __post_init__(self) -> None:
        if self.grid < 1 or self.samples < 1:
            raise ValueError("grid and samples must be at least 1")
        if self.kernel_width <= 0:
            raise ValueError("kernel_width must be > 0")
        _check_fill(self.fill)


@register("lime")
class Lime(Method):
    """LIME: a weighted linear fit of the target's score on which grid segments are switched on.

    Ribeiro, Singh, Guestrin 2016, "Why Should I Trust You?". Samples z ∈ {0,1}^M (the first all ones, the rest
    uniform); weight π(z) = sqrt(exp(−d(z, 1)² / σ²)), d the cosine distance, σ = kernel_width; β = the ridge
    fit (α = 1, with intercept, as the lime package) of f(x_z) on z. Each pixel gets its segment's β_j.
    """

    family = "perturbation"
    signed = True
    paper = "Ribeiro et al. 2016"
    convention = "segment coefficient per pixel, signed"
    Params = LimeParams

    def passes(self) -> str:
        return f"{self.params.samples} forwards"

    def footprint(self, shape: tuple[int, int, int]) -> int:
        return coalition_footprint(self.params.samples, self.params.grid, shape)

    def attribute(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, ctx: Context) -> torch.Tensor:
        p, x = self.params, x.detach()
        seg, m = grid_segments(x.shape[2], x.shape[3], p.grid)
        z = torch.stack([torch.cat([torch.ones(1, m, dtype=torch.bool),
                                    torch.rand(p.samples - 1, m, generator=ctx.generator(i)) < 0.5])
                         for i in range(x.shape[0])])
        y = coalition_scores(model, x, baselines.make(p.fill, x, ctx), seg, z, target, ctx.chunk)
        z = z.double()
        distance = 1 - (z.sum(-1) / m).sqrt()  # cosine distance to the all-ones vector
        weight = torch.exp(-distance ** 2 / p.kernel_width ** 2).sqrt()
        coef = weighted_ridge(z, y.cpu().double(), weight, alpha=1.0)
        return coef[:, seg].float().to(x.device)


def kernel_shap_coalitions(m: int, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n coalitions (n, m) bool and their regression weights (n,), as shap's KernelExplainer draws them.

    A size s has Shapley-kernel mass (m − 1) / (s (m − s)); sizes s and m − s are paired. Going up from s = 1,
    sizes whose coalitions all fit the budget are enumerated with their exact weights; the rest are drawn by
    mass, each with its complement, at equal weights summing to the remaining mass. (Unlike shap, a repeated
    draw is kept as another row rather than merged.)
    """
    half, paired = math.ceil((m - 1) / 2), (m - 1) // 2
    sizes = torch.arange(1, half + 1, dtype=torch.float64)
    mass = (m - 1) / (sizes * (m - sizes))
    mass[:paired] *= 2
    mass /= mass.sum()
    rows, weights, left, remaining, full = [], [], n, mass.clone(), 0
    for s in range(1, half + 1):
        count = math.comb(m, s) * (2 if s <= paired else 1)
        if left * remaining[s - 1] / count < 1 - 1e-8:
            break
        full, left = s, left - count
        if remaining[s - 1] < 1:
            remaining /= 1 - remaining[s - 1]
        members = torch.tensor(list(combinations(range(m), s)))
        z = torch.zeros(members.shape[0], m, dtype=torch.bool).scatter_(1, members, True)
        z = torch.stack([z, ~z], dim=1).flatten(0, 1) if s <= paired else z
        rows.append(z)
        weights.append(torch.full((z.shape[0],), float(mass[s - 1]) / count, dtype=torch.float64))
    if left > 0:
        probs = mass.clone()
        probs[:paired] /= 2  # a paired draw yields two rows
        drawn = torch.multinomial(probs[full:], left, replacement=True, generator=g) + full + 1
        per_draw = torch.where(drawn <= paired, 2, 1)
        drawn = drawn[:int((per_draw.cumsum(0) < left).sum()) + 1]
        z = torch.rand(drawn.shape[0], m, generator=g).argsort(1).argsort(1) < drawn[:, None]
        with_complement = torch.stack([torch.ones_like(drawn, dtype=torch.bool), drawn <= paired], dim=1)
        z = torch.stack([z, ~z], dim=1)[with_complement][:left]  # z1, ~z1, z2, ... (no complement at m / 2)
        rows.append(z)
        weights.append(torch.full((left,), float(mass[full:].sum()) / left, dtype=torch.float64))
    return torch.cat(rows), torch.cat(weights)


def constrained_wls(z: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """argmin_φ Σ_i w_i (y_i − z_i·φ)² subject to Σ_j φ_j = total, by eliminating the last φ (as shap does):
    z (B, n, M), y and weight (B, n), total (B,) -> φ (B, M)."""
    if z.shape[-1] == 1:
        return total[:, None]
    last, root = z[..., -1], weight.sqrt()
    lhs = (z[..., :-1] - last[..., None]) * root[..., None]
    rhs = (y - last * total[:, None]) * root
    head = torch.linalg.lstsq(lhs, rhs[..., None], driver="gelsd").solution[..., 0]
    return torch.cat([head, total[:, None] - head.sum(1, keepdim=True)], dim=1)


@dataclass(frozen=True)
class KernelShapParams:
    grid: int = 7  # grid × grid square segments: 32 px at 224, 4 px at 28, RISE's cells
    samples: int = 1000  # all 2^M − 2 coalitions when fewer (exact then); 500 gave seed-to-seed r ≈ 0.77
    fill: Fill = "zero"  # the baseline a switched-off segment takes

    def __post_init__(self) -> None:
        if self.grid < 1 or self.samples < 1:
            raise ValueError("grid and samples must be at least 1")
        _check_fill(self.fill)


@register("kernel-shap")
class KernelShap(Method):
    """KernelSHAP: Shapley values of grid segments by a Shapley-kernel weighted linear fit.

    Lundberg & Lee 2017, "A Unified Approach to Interpreting Model Predictions". Kernel π(z) = (M − 1) /
    (C(M, |z|) |z| (M − |z|)); φ = argmin Σ π(z) (f(x_z) − f(x') − z·φ)² subject to Σ φ = f(x) − f(x')
    (efficiency), x_z keeping the segments in z and the baseline x' elsewhere. Each pixel gets its segment's φ_j.
    """

    family = "perturbation"
    signed = True
    paper = "Lundberg & Lee 2017"
    convention = "segment coefficient per pixel, signed"
    Params = KernelShapParams

    def passes(self) -> str:
        return f"2 + {self.params.samples} forwards"

    def footprint(self, shape: tuple[int, int, int]) -> int:
        return coalition_footprint(self.params.samples, self.params.grid, shape)

    def attribute(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, ctx: Context) -> torch.Tensor:
        p, (batch, _, h, w), x = self.params, x.shape, x.detach()
        seg, m = grid_segments(h, w, p.grid)
        n = min(p.samples, 2 ** m - 2)
        drawn = [kernel_shap_coalitions(m, n, ctx.generator(i)) if m > 1 else
                 (torch.zeros(0, 1, dtype=torch.bool), torch.zeros(0, dtype=torch.float64)) for i in range(batch)]
        ends = torch.tensor([[True], [False]]).expand(2, m)  # f(x) and f(x') first
        z = torch.stack([torch.cat([ends, rows]) for rows, _ in drawn])
        scores = coalition_scores(model, x, baselines.make(p.fill, x, ctx), seg, z, target, ctx.chunk)
        scores = scores.cpu().double()
        phi = constrained_wls(z[:, 2:].double(), scores[:, 2:] - scores[:, 1:2],
                              torch.stack([wt for _, wt in drawn]), scores[:, 0] - scores[:, 1])
        return phi[:, seg].float().to(x.device)
