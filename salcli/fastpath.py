"""Fast paths that change how the model computes, never what it computes.

- BatchNorm folding: an eval-mode ``BatchNorm2d`` that consumes a ``Conv2d``'s output directly is folded into
  that convolution (w' = w·γ/σ, b' = (b − μ)·γ/σ + β) and replaced by ``nn.Identity``. The pairs are found from
  one forward pass (the BatchNorm's input is the very tensor the convolution returned, each called once), and
  the folded model's logits are checked against the original's before it is used.
- channels_last memory layout for convolutional models (oneDNN and cuDNN run NHWC convolutions without
  reordering).
- ``--precision bf16``: autocast around every forward and backward pass.
- Out-of-memory back-off: ``is_oom`` recognizes the error, and the pipeline retries with smaller chunks.

Applied only to models salcli loaded itself, never to a model object passed to the Python API.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .logits import classifier, logits_of

PRECISIONS = ("fp32", "bf16")


@dataclass
class FastModel:
    module: nn.Module  # what runs: ``base``, or ``base`` with its output read (``logits.Logits``)
    base: nn.Module | None = None  # the model with the fast paths applied (its layer names are the model's own)
    channels_last: bool = False
    precision: str = "fp32"
    notes: list[str] = field(default_factory=list)  # what was applied, for run.json

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x.contiguous()

    def autocast(self, device: torch.device):
        if self.precision == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, batchnorm name) for each BatchNorm2d whose input is exactly a Conv2d's output, both called
    once in a forward pass of ``example``. Hooks are removed before returning."""
    outputs: dict[int, tuple[str, torch.Tensor]] = {}
    calls: dict[str, int] = {}
    pairs: list[tuple[str, str]] = []
    handles = []

    def on_conv(name: str):
        def hook(module, args, out):
            calls[name] = calls.get(name, 0) + 1
            outputs[id(out)] = (name, out)  # keep the tensor alive so its id is not reused
        return hook

    def on_bn(name: str):
        def hook(module, args):
            calls[name] = calls.get(name, 0) + 1
            src = outputs.get(id(args[0]))
            if src is not None and src[1] is args[0]:
                pairs.append((src[0], name))
        return hook

    try:
        for name, module in model.named_modules():
            if type(module) is nn.Conv2d:
                handles.append(module.register_forward_hook(on_conv(name)))
            elif type(module) is nn.BatchNorm2d:
                handles.append(module.register_forward_pre_hook(on_bn(name)))
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return [(c, b) for c, b in pairs if calls.get(c) == 1 and calls.get(b) == 1]


def fold_batchnorm(model: nn.Module, example: torch.Tensor, keep: set[str] = frozenset()) -> tuple[nn.Module, int]:
    """A copy of ``model`` with its conv → BatchNorm pairs folded, and how many were folded; ``model`` itself
    when there is nothing to fold or the folded logits disagree. Pairs touching a name in ``keep`` (the layer a
    CAM method hooks) are left alone, so that layer's output is unchanged."""
    if model.training:
        return model, 0
    pairs = [(c, b) for c, b in conv_bn_pairs(model, example) if c not in keep and b not in keep]
    pairs = [(c, b) for c, b in pairs if model.get_submodule(b).track_running_stats
             and model.get_submodule(b).running_mean is not None]
    if not pairs:
        return model, 0
    folded = copy.deepcopy(model)
    for conv_name, bn_name in pairs:
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                            bn.weight, bn.bias)
        conv.weight, conv.bias = nn.Parameter(weight.detach(), False), nn.Parameter(bias.detach(), False)
        parent, _, attr = bn_name.rpartition(".")
        setattr(folded.get_submodule(parent) if parent else folded, attr, nn.Identity())
    with torch.no_grad():
        probe = torch.randn(example.shape, generator=torch.Generator().manual_seed(0)).to(example)
        before, after = logits_of(model(probe)).float(), logits_of(folded(probe)).float()
    scale = float(before.abs().max()) or 1.0
    if not torch.allclose(before, after, rtol=1e-3, atol=1e-4 * scale):
        return model, 0  # a convolution's output was also used elsewhere: folding would change the model
    return folded, len(pairs)


def count_convs(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


def prepare(model: nn.Module, example: torch.Tensor, optimize: bool, precision: str,
            keep: set[str] = frozenset()) -> FastModel:
    """The model to run, with the fast paths that apply to it. ``example`` (1, C, H, W) on the model's device."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
    fast = FastModel(model, precision=precision)
    if precision != "fp32":
        fast.notes.append(f"autocast {precision}")
    if optimize and not isinstance(model, torch.jit.ScriptModule):
        fast.module, folded = fold_batchnorm(model, example, keep)
        if folded:
            fast.notes.append(f"batchnorm folded into {folded} convolutions")
        if count_convs(fast.module) >= 3 and example.device.type in ("cpu", "cuda"):
            fast.module = fast.module.to(memory_format=torch.channels_last)
            fast.channels_last = True
            fast.notes.append("channels_last")
    fast.base = fast.module
    fast.module = classifier(fast.module, example)  # a tuple, dict or .logits output: read the logits
    return fast


def is_oom(exc: BaseException) -> bool:
    """A (CUDA or MPS) out-of-memory error, after which a smaller chunk can succeed."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
