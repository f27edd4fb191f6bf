"""The gradient family: maps read off d score / d input."""

from __future__ import annotations

import torch
from torch import nn

from .. import maps
from .base import Context, Method, input_gradient
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
