"""Path methods: Integrated Gradients and GradientSHAP (expected gradients)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from . import baselines
from .base import Context, Method, logits_of, stream_gradients
from .registry import register

RULES = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")


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
    rule: Literal[RULES] = "gausslegendre"
    tolerance: float = 0.0  # > 0: double the steps for images whose completeness gap is above it
    max_steps: int = 1024

    def __post_init__(self) -> None:
        if self.steps < 1 or (self.rule != "gausslegendre" and self.steps < 2):
            raise ValueError("steps must be at least 1 (2 for Riemann rules)")
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
    paper = "Sundararajan et al. 2017"
    convention = "sum over channels, signed; sums to f(x) - f(baseline) up to the integration error"
    Params = IGParams

    def passes(self) -> str:
        extra = f" (more, up to {self.params.max_steps}, while the gap > tolerance)" if self.params.tolerance else ""
        return f"{self.params.steps} forward + {self.params.steps} backward + 2 forward{extra}"

    def attribute_with_extras(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                              ctx: Context) -> tuple[torch.Tensor, dict[str, list]]:
        p, x = self.params, x.detach()
        base = baselines.make(p.baseline, x, ctx)
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
