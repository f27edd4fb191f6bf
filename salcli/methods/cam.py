"""The CAM family: maps built from one layer's activations A (B, K, h, w) and, for most, the gradient
g = ∂y_t/∂A. A base class owns the capture and the backward pass, which stops at the layer; each variant
only says how it combines A and g. Every map is ReLU(cam) bilinearly resized to (H, W), raw (not min-max
scaled), float32; with ``Context.native`` (``--layer-maps native``) the map stays at the layer's (h, w), and
``maps.at_input`` resizes it when it is read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .. import maps
from ..layers import LayerSpec, capture, resolve_layer
from .base import Context, Method
from .gradient import rule_gradient
from .registry import register


def layer_of(model: nn.Module, x: torch.Tensor, ctx: Context) -> LayerSpec:
    """The context's layer, or the automatic choice (for the Python API)."""
    return ctx.layer if ctx.layer is not None else resolve_layer(model, None, x[:1].detach())


def layer_activations(model: nn.Module, x: torch.Tensor, target: torch.Tensor, spec: LayerSpec,
                      with_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A = the layer's output and g = ∂(logit of target)/∂A, both (B, K, h, w) float32 (g None without
    ``with_grad``). One forward pass and a backward pass from the logits to the layer only."""
    with capture(spec, grad=with_grad) as cap:
        logits = model(x.detach())
        if cap.output is None:
            raise RuntimeError(f"layer '{spec.name}' did not run in the model's forward pass; choose another layer")
        grad = None
        if with_grad:
            score = logits.gather(1, target.view(-1, 1).to(logits.device)).sum()
            if not score.requires_grad:
                raise RuntimeError(f"the model's output does not depend differentiably on layer '{spec.name}'")
            (grad,) = torch.autograd.grad(score, cap.output)
    acts = spec.to_map(cap.output.detach()).float()
    return acts, (spec.to_map(grad).float() if grad is not None else None)


def finish(cam: torch.Tensor, x: torch.Tensor, ctx: Context) -> torch.Tensor:
    """ReLU of the layer map (B, h, w), resized to the input's (H, W) unless ``ctx.native``; float32."""
    cam = cam.clamp(min=0)
    return cam.float() if ctx.native else maps.resize(cam, tuple(x.shape[-2:])).float()


class _Cam(Method):
    """Base: capture A (and g), ``cam(A, g)`` -> (B, h, w), ReLU, resize to the input."""

    family = "cam"
    needs_layer = True
    layer_map = True
    convention = "ReLU of the layer map, bilinearly resized to (H, W), raw values >= 0"
    with_grad: ClassVar[bool] = True

    def passes(self) -> str:
        return "1 forward + 1 backward to the layer"

    def cam(self, acts: torch.Tensor, grads: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def attribute(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, ctx: Context) -> torch.Tensor:
        acts, grads = layer_activations(model, x, target, layer_of(model, x, ctx), self.with_grad)
        return finish(self.cam(acts, grads), x, ctx)


class _ChannelWeights(_Cam):
    """cam = Σ_k w_k A^k; subclasses give the weights w (B, K)."""

    def weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def cam(self, acts: torch.Tensor, grads: torch.Tensor | None) -> torch.Tensor:
        return (self.weights(acts, grads)[:, :, None, None] * acts).sum(dim=1)


@register("gradcam")
class GradCam(_ChannelWeights):
    """Grad-CAM: channels weighted by their mean gradient.

    Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization".
    map = ReLU(Σ_k α_k A^k), α_k = mean_ij ∂y_t/∂A^k_ij.
    """

    paper = "Selvaraju et al. 2017"

    def weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads.mean(dim=(2, 3))


@register("gradcam++")
class GradCamPlusPlus(_ChannelWeights):
    """Grad-CAM++: channels weighted by positive gradients with pixel-wise coefficients.

    Chattopadhay et al. 2018, "Grad-CAM++". a_ij^k = g² / (2g² + Σ_ab A^k_ab · g³) (0 where g = 0),
    w_k = Σ_ij a_ij^k ReLU(g_ij^k), map = ReLU(Σ_k w_k A^k), with g = ∂y_t/∂A^k_ij (eq. 19).
    """

    paper = "Chattopadhay et al. 2018"
    eps: ClassVar[float] = 1e-6

    def weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        g2 = grads.pow(2)
        total = acts.sum(dim=(2, 3), keepdim=True)
        alpha = torch.where(grads != 0, g2 / (2 * g2 + total * g2 * grads + self.eps), torch.zeros_like(grads))
        return (alpha * grads.clamp(min=0)).sum(dim=(2, 3))


@register("xgradcam")
class XGradCam(_ChannelWeights):
    """XGrad-CAM: channels weighted by their activation-weighted gradient.

    Fu et al. 2020, "Axiom-based Grad-CAM". w_k = Σ_ij (A^k_ij / Σ_ab A^k_ab) ∂y_t/∂A^k_ij,
    map = ReLU(Σ_k w_k A^k).
    """

    paper = "Fu et al. 2020"
    eps: ClassVar[float] = 1e-7

    def weights(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        total = acts.sum(dim=(2, 3), keepdim=True)
        return (grads * acts / (total + self.eps)).sum(dim=(2, 3))


@register("layercam")
class LayerCam(_Cam):
    """LayerCAM: activations weighted position by position by their positive gradient.

    Jiang et al. 2021, "LayerCAM: Exploring Hierarchical Class Activation Maps for Localization".
    map = ReLU(Σ_k ReLU(∂y_t/∂A^k) ⊙ A^k).
    """

    paper = "Jiang et al. 2021"

    def cam(self, acts: torch.Tensor, grads: torch.Tensor | None) -> torch.Tensor:
        return (grads.clamp(min=0) * acts).sum(dim=1)


@register("hirescam")
class HiResCam(_Cam):
    """HiResCAM: activations times gradients, position by position, summed over channels.

    Draelos & Carin 2020, "Use HiResCAM instead of Grad-CAM for faithful explanations".
    map = ReLU(Σ_k ∂y_t/∂A^k ⊙ A^k).
    """

    paper = "Draelos & Carin 2020"

    def cam(self, acts: torch.Tensor, grads: torch.Tensor | None) -> torch.Tensor:
        return (grads * acts).sum(dim=1)


@register("eigencam")
class EigenCam(_Cam):
    """Eigen-CAM: the activations projected on their first principal component; class-agnostic, no gradient.

    Muhammad & Yeasin 2020, "Eigen-CAM". X = A as (h·w, K) rows, centered per channel; v1 = first right
    singular vector of X; p = X v1; map = ReLU(±p). The SVD leaves the sign open (pytorch-grad-cam's EigenCAM
    keeps whatever its SVD routine returns); it is fixed as in Seg-Eigen-CAM (Chung & Ying 2025, eq. 13):
    p is flipped when |min p| > |max p|, so the stronger extreme is positive.
    """

    paper = "Muhammad & Yeasin 2020"
    convention = "ReLU of the first-principal-component projection, resized to (H, W), raw values >= 0"
    with_grad = False

    def passes(self) -> str:
        return "1 forward (no backward)"

    def cam(self, acts: torch.Tensor, grads: torch.Tensor | None) -> torch.Tensor:
        b, _, h, w = acts.shape
        rows = torch.nan_to_num(acts, nan=0.0).flatten(2).transpose(1, 2)  # (B, h·w, K)
        rows = rows - rows.mean(dim=1, keepdim=True)
        _, _, vh = torch.linalg.svd(rows, full_matrices=False)
        proj = (rows @ vh[:, 0, :, None]).squeeze(2)  # (B, h·w)
        flip = proj.amin(dim=1, keepdim=True).abs() > proj.amax(dim=1, keepdim=True).abs()
        return torch.where(flip, -proj, proj).view(b, h, w)


@dataclass(frozen=True)
class ScoreCamParams:
    channels: int = 0  # score only the channels with the largest mean activation; 0: all (as in the paper)

    def __post_init__(self) -> None:
        if self.channels < 0:
            raise ValueError("channels must be >= 0 (0 scores every channel)")


@register("scorecam")
class ScoreCam(_Cam):
    """Score-CAM: channels weighted by how much their upsampled map, used as a mask, keeps the target score.

    Wang et al. 2020, "Score-CAM: Score-Weighted Visual Explanations for CNNs". M_k = min-max scaled
    upsample(A^k) in [0, 1]; s_k = y_t(x ⊙ M_k); w = softmax_k(s) (Algorithm 1); map = ReLU(Σ_k w_k A^k).
    As in pytorch-grad-cam, the masks are upsampled with corners aligned and the softmax runs over channels.
    Masked inputs run ``ctx.chunk`` at a time, mixed across images.
    """

    paper = "Wang et al. 2020"
    Params = ScoreCamParams
    with_grad = False

    def passes(self) -> str:
        cap = self.params.channels
        return f"1 + min(K, {cap}) forwards (K = layer channels)" if cap else "1 + K forwards (K = layer channels)"

    def attribute(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, ctx: Context) -> torch.Tensor:
        acts, _ = layer_activations(model, x, target, layer_of(model, x, ctx), with_grad=False)
        b, k = acts.shape[:2]
        if self.params.channels and self.params.channels < k:
            k = self.params.channels
            order = acts.mean(dim=(2, 3)).topk(k, dim=1).indices
            acts = acts.gather(1, order[:, :, None, None].expand(-1, -1, *acts.shape[2:]))
        scores = self.mask_scores(model, x, target, acts, ctx.chunk).view(b, k)
        cam = (scores.softmax(dim=1)[:, :, None, None] * acts).sum(dim=1)
        return finish(cam, x, ctx)

    @staticmethod
    def mask_scores(model: nn.Module, x: torch.Tensor, target: torch.Tensor, acts: torch.Tensor,
                    chunk: int) -> torch.Tensor:
        """Target logits (B·K,) of every image masked by each of its K upsampled channel maps."""
        b, k = acts.shape[:2]
        flat = acts.flatten(0, 1)  # (B·K, h, w), image-major
        scores = []
        with torch.no_grad():
            for start in range(0, b * k, max(1, chunk)):
                masks = F.interpolate(flat[start:start + chunk, None], size=tuple(x.shape[-2:]), mode="bilinear",
                                      align_corners=True).squeeze(1)
                low = masks.amin(dim=(1, 2), keepdim=True)
                high = masks.amax(dim=(1, 2), keepdim=True)
                masks = (masks - low) / (high - low + 1e-8)
                images = torch.arange(start, start + masks.shape[0], device=x.device) // k
                logits = model(x.detach()[images] * masks[:, None].to(x.dtype))
                scores.append(logits.gather(1, target.to(logits.device)[images].view(-1, 1)).squeeze(1).float())
        return torch.cat(scores)


@register("guided-gradcam")
class GuidedGradCam(_Cam):
    """Guided Grad-CAM: the Grad-CAM map times the guided-backprop gradient, pixel by pixel.

    Selvaraju et al. 2017, "Grad-CAM". map = Grad-CAM(H, W) · max_c |guided ∂y_t/∂x_c|
    (= max_c |guided gradient ⊙ Grad-CAM|, since Grad-CAM >= 0).
    """

    paper = "Selvaraju et al. 2017"
    convention = "Grad-CAM map x max over channels of |guided-backprop gradient|, >= 0"
    layer_map = False  # a pixel-level map

    def passes(self) -> str:
        return "1 forward + 1 backward to the layer, then 1 forward + 1 backward to the input"

    def attribute(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, ctx: Context) -> torch.Tensor:
        cam = GradCam().attribute(model, x, target, dataclasses.replace(ctx, native=False))  # at (H, W)
        guided = rule_gradient(model, x, target, guided=True, chunk=ctx.chunk, method=self.name)
        return (maps.max_abs_channels(guided) * cam).float()
