"""SmoothGrad and its variants: gradients averaged over noisy copies of the input."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import Context, Method, stream_gradients
from .registry import register


@dataclass(frozen=True)
class SmoothGradParams:
    samples: int = 50  # the authors' library uses 25-50; little changes past 50 (Smilkov et al. 2017)
    noise: float = 0.15  # σ as a fraction of (max - min) of each preprocessed input
    square: bool = False  # average g² instead of |g| (SmoothGrad²)
    vargrad: bool = False  # the variance of g over samples (VarGrad, Adebayo et al. 2018)

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError("samples must be at least 1")
        if self.noise < 0:
            raise ValueError("noise must be >= 0")
        if self.square and self.vargrad:
            raise ValueError("choose square or vargrad, not both")


@register("smoothgrad")
class SmoothGrad(Method):
    """SmoothGrad: the mean over n noisy copies of |∂y_t/∂x|, max over channels.

    Smilkov et al. 2017, "SmoothGrad: removing noise by adding noise". x_s = x + N(0, σ²), σ = noise·(max x −
    min x); map = max_c (1/n) Σ_s |∂y_t/∂x_s|_c (``square``: of g²; ``vargrad``: the variance of g).
    Noise is drawn per image from a generator seeded by (seed, image path).
    """

    family = "gradient"
    paper = "Smilkov et al. 2017"
    convention = "max over channels of the mean over samples of |gradient| (square: g², vargrad: variance), >= 0"
    Params = SmoothGradParams

    def passes(self) -> str:
        return f"{self.params.samples} forward + {self.params.samples} backward"

    def attribute(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, ctx: Context) -> torch.Tensor:
        p, x = self.params, x.detach()
        sigma = p.noise * (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3)))
        first, second = torch.zeros_like(x), torch.zeros_like(x)

        def samples():
            for i in range(x.shape[0]):
                noise = torch.randn((p.samples, *x.shape[1:]), generator=ctx.generator(i))
                yield i, x[i] + sigma[i] * noise.to(device=x.device, dtype=x.dtype)

        def consume(i: int, start: int, g: torch.Tensor) -> None:
            if p.vargrad:
                first[i] += g.sum(0)
                second[i] += (g * g).sum(0)
            else:
                first[i] += (g * g if p.square else g.abs()).sum(0)

        stream_gradients(model, target, ctx.chunk, samples(), consume)
        mean = first / p.samples
        values = (second / p.samples - mean * mean).clamp(min=0) if p.vargrad else mean
        return values.amax(dim=1).float()
