"""Path methods: Integrated Gradients and GradientSHAP (expected gradients)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from . import baselines
from .base import Context, Method, gradients, logits_of, stream_gradients
from .registry import register

RULES = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")
ADAPTIVE = "adaptive"  # salcli's own rule: trapezoid intervals bisected where completeness fails locally
ADAPTIVE_START = 4  # intervals of the first, uniform grid (5 gradient evaluations)


def quadrature(rule: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points α in [0, 1] and weights for ∫₀¹ f(α) dα with n evaluations (Captum's conventions)."""
    if rule == "gausslegendre":
        points, weights = np.polynomial.legendre.leggauss(n)
        return torch.from_numpy(0.5 * (points + 1)), torch.from_numpy(0.5 * weights)
    if n < 2:
        raise ValueError("Riemann rules need at least 2 steps")
    weights = torch.full((n,), 1.0 / n, dtype=torch.float64)
    kind = rule.split("_", 1)[1]
    if kind == "trapezoid":
        weights[0] /= 2
        weights[-1] /= 2
        return torch.linspace(0, 1, n, dtype=torch.float64), weights
    offset = {"left": 0.0, "middle": 0.5, "right": 1.0}[kind]
    return (torch.arange(n, dtype=torch.float64) + offset) / n, weights


@dataclass(frozen=True)
class IGParams:
    steps: int = 50  # Captum's default; the paper: 20-300 steps bring the sum within 5%
    baseline: Literal["black", "zero", "blur", "uniform", "mean"] = "black"  # black: pixel 0 before normalization
    rule: Literal[RULES + (ADAPTIVE,)] = "gausslegendre"
    tolerance: float = 0.0  # > 0: more steps for images whose completeness gap is above it
    max_steps: int = 1024

    def __post_init__(self) -> None:
        if self.steps < 1 or (self.rule != "gausslegendre" and self.steps < 2):
            raise ValueError("steps must be at least 1 (2 for Riemann rules)")
        if self.rule == ADAPTIVE and self.steps < ADAPTIVE_START + 1:
            raise ValueError(f"the adaptive rule needs at least {ADAPTIVE_START + 1} steps")
        if self.tolerance < 0:
            raise ValueError("tolerance must be >= 0")
        if self.max_steps < self.steps:
            raise ValueError("max_steps must be >= steps")


def integrate(model: nn.Module, x: torch.Tensor, base: torch.Tensor, target: torch.Tensor, steps: int,
              rule: str, chunk: int) -> torch.Tensor:
    """(x − x') ⊙ Σ_k w_k ∇f(x' + α_k (x − x')) for each image, (B, C, H, W)."""
    alphas, weights = quadrature(rule, steps)
    alphas = alphas.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)
    weights = weights.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)
    diff = x - base
    total = torch.zeros_like(x)

    def samples():
        for i in range(x.shape[0]):
            yield i, base[i] + alphas * diff[i]

    def consume(i: int, start: int, g: torch.Tensor) -> None:
        total[i] += (weights[start:start + g.shape[0]] * g).sum(0)

    stream_gradients(model, target, chunk, samples(), consume)
    return diff * total


@register("integrated-gradients")
class IntegratedGradients(Method):
    """Integrated Gradients: the path integral of gradients from a baseline x' to x, times (x − x').

    Sundararajan et al. 2017, "Axiomatic Attribution for Deep Networks". IG_i = (x_i − x'_i) ∫₀¹ ∂f(x' +
    α(x − x'))/∂x_i dα, summed over channels; Σ IG = f(x) − f(x') (completeness). The manifest gets each
    image's completeness gap |Σ map − (f(x) − f(x'))| / |f(x) − f(x')| and the steps used.
    """

    family = "path"
    signed = True
    paper = "Sundararajan et al. 2017"
    convention = "sum over channels, signed; sums to f(x) - f(baseline) up to the integration error"
    Params = IGParams

    def passes(self) -> str:
        p = self.params
        if p.rule == ADAPTIVE:
            if p.tolerance:
                return f"{ADAPTIVE_START + 1} to {p.max_steps} forward + backward, until the gap <= tolerance"
            return f"{p.steps} forward + {p.steps} backward"
        extra = f" (more, up to {p.max_steps}, while the gap > tolerance)" if p.tolerance else ""
        return f"{p.steps} forward + {p.steps} backward + 2 forward{extra}"

    def attribute_with_extras(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                              ctx: Context) -> tuple[torch.Tensor, dict[str, list]]:
        p, x = self.params, x.detach()
        base = baselines.make(p.baseline, x, ctx)
        if p.rule == ADAPTIVE:
            budget = p.max_steps if p.tolerance else p.steps
            maps, steps, gap = adaptive_integrate(model, x, base, target, budget, p.tolerance, ctx.chunk)
            return maps.float(), {"completeness_gap": [round(float(v), 6) for v in gap],
                                  "ig_steps": [int(v) for v in steps]}
        scores = logits_of(model, torch.cat([x, base]), torch.cat([target, target]), ctx.chunk)
        delta = (scores[: x.shape[0]] - scores[x.shape[0]:]).double()
        maps = integrate(model, x, base, target, p.steps, p.rule, ctx.chunk).sum(dim=1)
        steps = torch.full((x.shape[0],), p.steps)
        gap = completeness_gap(maps, delta)
        n = p.steps
        while p.tolerance > 0 and n * 2 <= p.max_steps and bool((gap > p.tolerance).any()):
            n *= 2
            redo = (gap > p.tolerance).nonzero().flatten()
            maps[redo] = integrate(model, x[redo], base[redo], target[redo], n, p.rule, ctx.chunk).sum(dim=1)
            steps[redo.cpu()] = n
            gap = completeness_gap(maps, delta)
        return maps.float(), {"completeness_gap": [round(float(v), 6) for v in gap],
                              "ig_steps": [int(v) for v in steps]}


def adaptive_integrate(model: nn.Module, x: torch.Tensor, base: torch.Tensor, target: torch.Tensor, budget: int,
                       tolerance: float, chunk: int) -> tuple[torch.Tensor, list[int], list[float]]:
    """Integrated gradients by adaptive trapezoid intervals, driven by completeness on each interval.

    On an interval [a, b] of the path, the trapezoid estimate of the attribution sum, (b − a)/2 · (s_a + s_b)
    with s = Σ ∇f ⊙ (x − x'), must equal f(b) − f(a) (completeness holds piecewise). Every gradient evaluation
    also gives f at its point, so each interval's error is known for free; the worst intervals are bisected,
    batched across images, until an image's gap |Σ map − (f(x) − f(x'))| / |f(x) − f(x')| is at most
    ``tolerance`` (when > 0) or it has used ``budget`` evaluations. The end points are evaluated too, so no
    extra forward passes are needed. Returns maps (B, H, W) float64, evaluations and gaps per image.
    """
    diff = x - base
    n = x.shape[0]
    alphas: list[list[float]] = [[] for _ in range(n)]
    h: list[dict[float, torch.Tensor]] = [{} for _ in range(n)]  # α -> Σ_c ∇f ⊙ (x − x'), (H, W)
    s: list[dict[float, float]] = [{} for _ in range(n)]  # α -> Σ h
    f: list[dict[float, float]] = [{} for _ in range(n)]  # α -> f(x' + α (x − x'))

    def evaluate(pairs: list[tuple[int, float]]) -> None:
        index = torch.tensor([i for i, _ in pairs], device=x.device)
        a = torch.tensor([a for _, a in pairs], device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)
        for start in range(0, len(pairs), max(1, chunk)):
            part = index[start:start + chunk]
            grads, scores = gradients(model, base[part] + a[start:start + chunk] * diff[part], target[part], chunk,
                                      with_scores=True)
            hs = (grads * diff[part]).sum(dim=1).double()
            for k, (i, alpha) in enumerate(pairs[start:start + chunk]):
                alphas[i].append(alpha)
                h[i][alpha], s[i][alpha], f[i][alpha] = hs[k], float(hs[k].sum()), float(scores[k])
        for i in {i for i, _ in pairs}:
            alphas[i].sort()

    def intervals(i: int) -> list[tuple[float, float, float]]:
        """(error, a, b) for each interval of image i."""
        pts = alphas[i]
        return [(abs((b - a) / 2 * (s[i][a] + s[i][b]) - (f[i][b] - f[i][a])), a, b) for a, b in zip(pts, pts[1:])]

    def gap(i: int) -> float:
        pts = alphas[i]
        total = sum((b - a) / 2 * (s[i][a] + s[i][b]) for a, b in zip(pts, pts[1:]))
        delta = f[i][1.0] - f[i][0.0]
        return abs(total - delta) / max(abs(delta), 1e-12)

    grid = [k / ADAPTIVE_START for k in range(ADAPTIVE_START + 1)]
    evaluate([(i, a) for i in range(n) for a in grid])
    while True:
        pairs = []
        for i in range(n):
            room = budget - len(alphas[i])
            if room <= 0 or (tolerance > 0 and gap(i) <= tolerance):
                continue
            worst = sorted(intervals(i), reverse=True)
            take = min(room, max(1, -(-len(worst) // 4)))  # a quarter of the intervals per round, at least one
            pairs += [(i, (a + b) / 2) for _, a, b in worst[:take]]
        if not pairs:
            break
        evaluate(pairs)
    maps = torch.stack([sum((b - a) / 2 * (h[i][a] + h[i][b]) for a, b in zip(alphas[i], alphas[i][1:]))
                        for i in range(n)])
    return maps, [len(alphas[i]) for i in range(n)], [gap(i) for i in range(n)]


def completeness_gap(maps: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """|Σ map − Δ| / |Δ| per image (|Σ map − Δ| when Δ is 0)."""
    err = (maps.double().sum(dim=(1, 2)) - delta.to(maps.device)).abs()
    return err / delta.to(maps.device).abs().clamp(min=1e-12)


@dataclass(frozen=True)
class GradientShapParams:
    samples: int = 50
    stdev: float = 0.0  # Gaussian noise added to the input, as a fraction of its (max - min); Captum's default 0
    baseline: Literal["uniform", "black", "zero", "blur"] = "uniform"  # the reference distribution (no references)
    references: str = ""  # a folder of reference images: baselines are drawn from them instead

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError("samples must be at least 1")
        if self.stdev < 0:
            raise ValueError("stdev must be >= 0")


@register("gradient-shap")
class GradientShap(Method):
    """GradientSHAP (expected gradients): E over baselines x' and α ~ U(0, 1) of ∇f(x' + α(x − x')) ⊙ (x − x').

    Lundberg & Lee 2017 (SHAP), Erion et al. 2021 (expected gradients). Baselines are uniform pixel noise by
    default, or images from ``references`` (drawn with replacement); every draw is seeded per image.
    """

    family = "path"
    signed = True
    paper = "Lundberg & Lee 2017; Erion et al. 2021"
    convention = "sum over channels, signed; sums to f(x) - E f(baseline) in expectation"
    Params = GradientShapParams

    def passes(self) -> str:
        return f"{self.params.samples} forward + {self.params.samples} backward"

    def attribute(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, ctx: Context) -> torch.Tensor:
        p, x = self.params, x.detach()
        refs = ctx.references
        spread = (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3))) * p.stdev
        total = torch.zeros_like(x)
        diffs: dict[int, torch.Tensor] = {}

        def samples():
            for i in range(x.shape[0]):
                g = ctx.generator(i)
                if refs is not None:
                    base = refs[torch.randint(refs.shape[0], (p.samples,), generator=g)].to(x.device, x.dtype)
                elif p.baseline == "uniform":
                    base = ctx.from_pixels(torch.rand((p.samples, *x.shape[1:]), generator=g)).to(x.device, x.dtype)
                else:
                    base = baselines.make(p.baseline, x[i:i + 1], ctx).expand(p.samples, *x.shape[1:])
                noisy = x[i] + spread[i] * torch.randn((p.samples, *x.shape[1:]), generator=g).to(x.device, x.dtype)
                alpha = torch.rand((p.samples, 1, 1, 1), generator=g).to(x.device, x.dtype)
                diffs[i] = noisy - base
                yield i, base + alpha * diffs[i]

        def consume(i: int, start: int, grads: torch.Tensor) -> None:
            total[i] += (grads * diffs[i][start:start + grads.shape[0]]).sum(0)
            if start + grads.shape[0] == p.samples:
                del diffs[i]

        stream_gradients(model, target, ctx.chunk, samples(), consume)
        return (total / p.samples).sum(dim=1).float()
