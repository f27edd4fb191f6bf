"""The gradient family: maps read off d score / d input, with ReLU backward rules for guided backprop and
deconvnet."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .. import maps
from .base import Context, Method, gradients, input_gradient
from .registry import register


@register("vanilla")
class Vanilla(Method):
    """Vanilla gradient: max over channels of |d logit_target / d x|.

    Simonyan, Vedaldi, Zisserman 2014, "Deep Inside Convolutional Networks". map = max_c |∂y_t/∂x_c|.
    """

    family = "gradient"
    paper = "Simonyan et al. 2014"
    convention = "max over channels of |gradient|, >= 0"
    uses_primal = True

    def attribute(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, ctx: Context) -> torch.Tensor:
        return maps.max_abs_channels(input_gradient(model, x, target, ctx.primal))


@register("input-x-gradient")
class InputXGradient(Method):
    """Input × gradient: the channel sum of x ⊙ ∂y_t/∂x, signed.

    Shrikumar et al. 2016, "Not Just a Black Box". map = Σ_c x_c ∂y_t/∂x_c (x is the normalized input).
    """

    family = "gradient"
    signed = True
    paper = "Shrikumar et al. 2016"
    convention = "sum over channels of input x gradient, signed"
    uses_primal = True

    def attribute(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, ctx: Context) -> torch.Tensor:
        return maps.sum_channels(x.detach() * input_gradient(model, x, target, ctx.primal))


class _ReluRule(torch.autograd.Function):
    """relu(x) forward; backward relu(grad) (deconvnet) or relu(grad) ⊙ 1[x > 0] (guided backprop)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, guided: bool) -> torch.Tensor:
        out = x.clamp(min=0)
        ctx.guided = guided
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (out,) = ctx.saved_tensors
        grad = grad.clamp(min=0)
        return (grad * (out > 0) if ctx.guided else grad), None


_RELU_FUNCS = {F.relu, torch.relu, torch.Tensor.relu}
_RELU_INPLACE = {torch.relu_, torch.Tensor.relu_, getattr(F, "relu_", torch.relu_)}


class relu_rule(TorchFunctionMode):
    """While active, every ReLU call (``nn.ReLU`` modules and functional ``relu``, in-place or not) uses the
    guided-backprop or deconvnet backward rule. No hooks, no module swapping; ``count`` says how many ReLU
    calls were seen, so a model without hookable ReLUs is detected instead of silently giving gradients."""

    def __init__(self, guided: bool) -> None:
        super().__init__()
        self.guided, self.count = guided, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inplace = func in _RELU_INPLACE or (func in _RELU_FUNCS and kwargs.get("inplace", False))
        if func in _RELU_FUNCS or func in _RELU_INPLACE:
            self.count += 1
            out = _ReluRule.apply(args[0], self.guided)
            return args[0].copy_(out) if inplace else out
        return func(*args, **kwargs)


def rule_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor, guided: bool, chunk: int,
                  method: str) -> torch.Tensor:
    """Input gradient (B, C, H, W) with every ReLU's backward replaced by the guided/deconvnet rule."""
    with relu_rule(guided) as mode:
        grad = gradients(model, x, target, chunk)
    if mode.count == 0:
        raise RuntimeError(f"{method} needs ReLU activations it can intercept, and this model's forward called "
                           "none (it uses other activations such as GELU or SiLU, or it is TorchScript). "
                           "Use vanilla, integrated-gradients or a CAM method instead")
    return grad


@register("guided-backprop")
class GuidedBackprop(Method):
    """Guided backpropagation: gradients where every ReLU passes back only positive gradient at positive input.

    Springenberg et al. 2015, "Striving for Simplicity". ReLU backward: g_in = relu(g_out) ⊙ 1[x > 0].
    """

    family = "gradient"
    paper = "Springenberg et al. 2015"
    convention = "max over channels of |guided gradient|, >= 0"

    def attribute(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, ctx: Context) -> torch.Tensor:
        return maps.max_abs_channels(rule_gradient(model, x, target, True, ctx.chunk, self.name))


@register("deconvnet")
class Deconvnet(Method):
    """Deconvnet: gradients where every ReLU passes back only positive gradient, whatever its input.

    Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks". ReLU backward: relu(g_out).
    """

    family = "gradient"
    paper = "Zeiler & Fergus 2014"
    convention = "max over channels of |deconvnet signal|, >= 0"

    def attribute(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, ctx: Context) -> torch.Tensor:
        return maps.max_abs_channels(rule_gradient(model, x, target, False, ctx.chunk, self.name))
