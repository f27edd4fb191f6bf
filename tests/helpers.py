"""What several test files share: a correlation of two maps, seeded torchvision models, the no-hooks-left check,
and a state dict saved for `salcli explain --model torchvision:NAME --weights FILE`.

A plain module, imported as conftest is (tests/ is on sys.path): `from helpers import pearson`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def pearson(a, b) -> float:
    """Pearson correlation of two maps (tensors or arrays, any shape, compared element by element in float64)."""
    a, b = _flat(a), _flat(b)
    assert a.std() > 0 and b.std() > 0, "a constant map compares with nothing"
    return float(np.corrcoef(a, b)[0, 1])


def _flat(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, np.float64).ravel()


def seeded(arch: str, seed: int = 0) -> nn.Module:
    """torchvision.models.ARCH with random weights, in eval mode. Seeds the global generator first, so that the
    draws a test makes after building its model are the same on every run."""
    torch.manual_seed(seed)
    return getattr(torchvision.models, arch)().eval()


def seeded_resnet18(trained: bool = False) -> nn.Module:
    """resnet18 with seeded random weights, in eval mode; ``trained``: with BatchNorm as a trained model has it."""
    model = seeded("resnet18")
    return trained_like(model) if trained else model


def trained_like(model: nn.Module) -> nn.Module:
    """Random but non-trivial BatchNorm statistics and affine parameters, as a trained model has; eval mode."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def assert_no_hooks(model: nn.Module) -> None:
    """No module of ``model`` (itself included) keeps a forward, forward-pre, backward or backward-pre hook."""
    left = [f"{name or type(model).__name__}.{kind}" for name, m in model.named_modules() for kind in HOOKS
            if getattr(m, kind)]
    assert not left, f"hooks left on the model: {', '.join(left)}"


def torchvision_weights(folder: Path, arch: str, model: nn.Module | None = None) -> list:
    """Saves the state dict of ``model`` (default: ``seeded(arch)``) to folder/ARCH.pth and returns the options
    that load it: ``["--model", "torchvision:ARCH", "--weights", FILE]``, to splice into a `salcli explain` call."""
    path = Path(folder) / f"{arch}.pth"
    torch.save((model if model is not None else seeded(arch)).state_dict(), path)
    return ["--model", f"torchvision:{arch}", "--weights", path]
