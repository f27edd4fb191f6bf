"""Layer lookup and activation capture for layer methods (the CAM family).

A ``LayerSpec`` names a module and says how to read its output as a channels-first map (B, C, h, w): conv
outputs as they are, ViT tokens (B, N, D) without their class/register tokens, Swin's (B, h, w, C) permuted.
``resolve_layer`` finds the layer by name or, without one, from the output shapes of one forward pass;
``capture`` records the layer's output during a forward pass so a method can take d score / d output.
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .errors import UsageError, did_you_mean, setting
from .logits import logits_of

MAX_PREFIX = 16  # most leading non-patch tokens (class, distillation, register tokens) a ViT layer may carry


@dataclass
class LayerSpec:
    """A layer of the model and the layout of its output.

    ``kind``: "conv" (B, C, h, w), "tokens" (B, N, D) with ``prefix`` leading non-patch tokens, or "nhwc"
    (B, h, w, C). ``grid``: (h, w) of the patch tokens when known (else a square grid is inferred).
    """

    name: str
    module: nn.Module
    kind: str = "conv"
    prefix: int = 0
    grid: tuple[int, int] | None = None

    def to_map(self, act: torch.Tensor) -> torch.Tensor:
        """The layer's raw output (or its gradient) -> a channels-first map (B, C, h, w)."""
        if self.kind == "conv":
            return act
        if self.kind == "nhwc":
            return act.permute(0, 3, 1, 2)
        tokens = act[:, self.prefix:]
        b, n, d = tokens.shape
        h, w = _token_grid(n, self.grid)
        return tokens.reshape(b, h, w, d).permute(0, 3, 1, 2)


def _token_grid(n: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    if grid is not None and grid[0] * grid[1] == n:
        return grid
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"cannot lay out {n} patch tokens on a grid: not a square, and the patch grid is unknown")
    return side, side


@dataclass
class _Record:
    """One module's output in a forward pass (the module's last call)."""

    name: str
    module: nn.Module
    shape: tuple[int, ...]
    kind: str | None
    prefix: int = 0
    grid: tuple[int, int] | None = None


def resolve_layer(model: nn.Module, name: str | None, example: torch.Tensor) -> LayerSpec:
    """The layer called ``name`` (dotted, e.g. ``layer4``, ``features.7`` or ``features[-1]``), or, with
    ``name`` None, the layer the CAM literature uses, found from one forward pass of ``example`` (1, C, H, W).

    Automatic choice, from output shapes and execution order (no table of model names):

    * CNNs: the last stage that still has a spatial map (h, w > 1). Take the last module with parameters
      whose output is (B, C, h, w); while it is a trunk whose children's outputs change resolution (e.g.
      ``features``), go down to its last child. resnet -> ``layer4``, efficientnet/convnext -> ``features.N``
      (``features[-1]``), a flat CNN -> its last conv (or the activation right after it).
    * Swin-style models whose stages output (B, h, w, C): the same rule, read channels-last
      (swin_t -> ``features.7``).
    * ViTs (tokens (B, N, D), N = prefix + h*w): the last token layer whose patch tokens still reach the
      score. A ViT that classifies from its class token ignores the patch tokens after the last block's
      attention, so the last block's output has exactly zero gradient there and its Grad-CAM would be blank;
      the last live normalization layer is that block's first norm (vit_b_16 ->
      ``encoder.layers.encoder_layer_11.ln_1``, timm -> ``blocks.11.norm1``, transformers -> the last
      layer's ``layernorm_before``), pytorch-grad-cam's recommended ``blocks[-1].norm1``; the
      attention's own key and value projections, live too, are passed over. A ViT that pools all tokens keeps
      its last block.

    Raises UsageError when ``name`` is unknown or not spatial, or when no layer fits.
    """
    records = _shape_pass(model, example)
    if name is not None:
        return _named(model, name, records)
    spec = _automatic(model, example, records)
    if spec is None:
        raise UsageError("could not find a spatial layer for the layer methods automatically; name one with "
                         f"{setting('layer')}.{_candidates_hint(records)}")
    return spec


def _named(model: nn.Module, name: str, records: list[_Record]) -> LayerSpec:
    module = _lookup(model, name)
    if module is None:
        known = [n for n, _ in model.named_modules() if n]
        raise UsageError(f"unknown layer '{name}'.{did_you_mean(name, known)}{_candidates_hint(records)}")
    found = [r for r in records if r.module is module]
    canonical = next((n for n, m in model.named_modules() if m is module), name)
    if not found:
        raise UsageError(f"layer '{canonical}' did not run in the forward pass or does not output a tensor."
                         f"{_candidates_hint(records)}")
    rec = found[-1]
    if rec.kind is None:
        raise UsageError(f"layer '{canonical}' outputs shape {tuple(rec.shape)}; layer methods need a spatial "
                         "output: (B, C, h, w), ViT tokens (B, N, D) or channels-last (B, h, w, C)."
                         f"{_candidates_hint(records)}")
    return LayerSpec(canonical, module, rec.kind, rec.prefix, rec.grid)


def _lookup(model: nn.Module, name: str) -> nn.Module | None:
    """``a.b.3`` or ``a.b[3]`` / ``a.b[-1]`` -> the module, or None."""
    if not name.strip(" ."):
        return None
    module = model
    for part in re.sub(r"\[(-?\d+)\]", r".\1", name).strip(".").split("."):
        try:
            if re.fullmatch(r"-?\d+", part) and isinstance(module, (nn.Sequential, nn.ModuleList)):
                module = module[int(part)]
            else:
                module = module.get_submodule(part)
        except (AttributeError, IndexError):
            return None
    return module


def _candidates_hint(records: list[_Record]) -> str:
    names = list(dict.fromkeys(r.name for r in records if r.kind is not None))[-6:]
    return f" Candidates (last spatial layers): {', '.join(names)}" if names else ""


@contextmanager
def _preserved(model: nn.Module, example: torch.Tensor):
    """An extra forward pass leaves no trace: buffers (BatchNorm statistics) and RNG states restored."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    devices = [example.device] if example.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        with torch.no_grad():
            for buf, copy in saved:
                buf.copy_(copy)


def _shape_pass(model: nn.Module, example: torch.Tensor) -> list[_Record]:
    """Every module's output shape and layout, in completion order (children before their parents)."""
    records: dict[int, _Record] = {}
    order: list[int] = []
    height, width = example.shape[-2:]

    def hook_for(name: str):
        def hook(module, args, output):
            if not isinstance(output, torch.Tensor):
                return
            key = id(module)
            if key in records:
                order.remove(key)
            order.append(key)
            records[key] = _Record(name, module, tuple(output.shape), _layout(output.shape, height, width))
        return hook

    handles = []
    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(hook_for(name)))
        with torch.no_grad(), _preserved(model, example):
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    ordered = [records[k] for k in order]
    _token_layouts(ordered)
    return ordered


def _layout(shape, height: int, width: int) -> str | None:
    """'conv' or 'nhwc' for 4-D spatial outputs whose grid matches the input's aspect, 'tokens?' for 3-D."""
    if len(shape) == 4:
        if _plausible_grid(shape[2], shape[3], height, width):
            return "conv"
        if _plausible_grid(shape[1], shape[2], height, width):
            return "nhwc"
    if len(shape) == 3 and shape[1] >= 4:
        return "tokens?"
    return None


def _plausible_grid(h: int, w: int, height: int, width: int) -> bool:
    """A (h, w) map of an (height, width) input: more than one cell each way, strides alike in both axes."""
    if not (1 < h <= height and 1 < w <= width):
        return False
    sh, sw = height / h, width / w
    return max(sh, sw) / min(sh, sw) <= 2.0


def _token_layouts(records: list[_Record]) -> None:
    """Settle 3-D outputs: tokens when N = prefix + h*w for the last patch grid seen before (a patch
    embedding's (B, D, h, w)), or failing that for a square grid; otherwise not spatial."""
    grid = None
    for rec in records:
        if rec.kind == "conv":
            grid = (rec.shape[2], rec.shape[3])
        if rec.kind != "tokens?":
            continue
        n = rec.shape[1]
        rec.kind = None
        if grid is not None and 0 <= n - grid[0] * grid[1] <= MAX_PREFIX:
            rec.kind, rec.prefix, rec.grid = "tokens", n - grid[0] * grid[1], grid
            continue
        for prefix in range(0, min(MAX_PREFIX, n - 4) + 1):
            side = math.isqrt(n - prefix)
            if side > 1 and side * side == n - prefix:
                rec.kind, rec.prefix = "tokens", prefix
                break


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _automatic(model: nn.Module, example: torch.Tensor, records: list[_Record]) -> LayerSpec | None:
    weighted = [r for r in records if r.kind is not None and _has_params(r.module)]
    if not weighted:
        return None
    kind = weighted[-1].kind
    if kind == "tokens":
        rec = _last_live_tokens(model, example, [r for r in records if r.kind == "tokens"], records)
    else:
        rec = _last_stage([r for r in records if r.kind == kind])
    return None if rec is None else LayerSpec(rec.name, rec.module, rec.kind, rec.prefix, rec.grid)


def _last_stage(records: list[_Record]) -> _Record | None:
    """The last spatial stage: the last container with parameters, descended while it spans resolutions."""
    by_module = {id(r.module): r for r in records}
    weighted = [r for r in records if _has_params(r.module)]
    containers = [r for r in weighted if any(id(c) in by_module for c in r.module.children())]
    after = weighted[weighted.index(containers[-1]) + 1:] if containers else []
    if not containers or any(r.shape != containers[-1].shape for r in after):
        # a flat CNN, or new layers after the last block: the last weighted layer, then any same-shape
        # activations right after it
        rec = weighted[-1]
        parent = rec.name.rpartition(".")[0]
        for later in records[records.index(rec) + 1:]:
            if later.shape != rec.shape or later.name.rpartition(".")[0] != parent or _has_params(later.module):
                break
            rec = later
        return rec
    rec = containers[-1]
    while True:
        children = [by_module[id(c)] for c in rec.module.children() if id(c) in by_module]
        if len({_grid_of(c) for c in children}) <= 1:
            return rec
        rec = max(children, key=records.index)


def _grid_of(rec: _Record) -> tuple[int, int]:
    return (rec.shape[2], rec.shape[3]) if rec.kind == "conv" else (rec.shape[1], rec.shape[2])


def _last_live_tokens(model: nn.Module, example: torch.Tensor, tokens: list[_Record],
                      records: list[_Record]) -> _Record | None:
    """The last token layer whose patch tokens reach the classifier: their gradient of a fixed random
    projection of the input to the last weighted layer (the head) is non-zero. The head's input rather than
    the logits, so that a freshly initialized head (torchvision zero-initializes ViT heads) still tells.
    One forward + backward on ``example``, the backward only as far back as the layers checked."""
    leaves = [r for r in records if _has_params(r.module) and next(r.module.children(), None) is None]
    head = leaves[-1].module if leaves else None
    for tail in ([tokens[-24:], tokens] if len(tokens) > 24 else [tokens]):  # the tail first: a short backward
        outputs: dict[int, torch.Tensor] = {}
        head_input: list[torch.Tensor] = []

        def keep(module, args, output):
            outputs[id(module)] = output

        def keep_head_input(module, args):
            if args and isinstance(args[0], torch.Tensor):
                head_input[:] = [args[0]]

        handles = [r.module.register_forward_hook(keep) for r in tail]
        if head is not None:
            handles.append(head.register_forward_pre_hook(keep_head_input))
        try:
            with torch.enable_grad(), _preserved(model, example):
                logits = logits_of(model(example.detach().requires_grad_(True)))
                feats = (head_input[0] if head_input else logits).float()
                weights = torch.randn(feats.shape, generator=torch.Generator().manual_seed(0)).to(feats.device)
                live = [r for r in tail if id(r.module) in outputs and outputs[id(r.module)].requires_grad]
                grads = torch.autograd.grad((feats * weights).sum(), [outputs[id(r.module)] for r in live],
                                            allow_unused=True) if live and feats.requires_grad else []
        finally:
            for handle in handles:
                handle.remove()
        alive = [rec for rec, grad in zip(live, grads)
                 if grad is not None and bool((grad[:, rec.prefix:] != 0).any())]
        if alive:  # a normalization layer's output is the block's whole token state, not one projection of it
            return ([r for r in alive if _is_norm(r.module)] or alive)[-1]
    return None


def _is_norm(module: nn.Module) -> bool:
    """LayerNorm, GroupNorm, BatchNorm and the like (timm's RmsNorm, a library's own ...Norm classes)."""
    norms = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
    return isinstance(module, norms) or type(module).__name__.lower().endswith("norm")


class Captured:
    """What ``capture`` records: ``output``, the layer's output from the last forward pass."""

    output: torch.Tensor | None = None


@contextmanager
def capture(spec: LayerSpec, grad: bool = True):
    """Record ``spec``'s output during the forward passes run inside the block.

    With ``grad``, the block runs without autograd up to the layer; the layer's output becomes a leaf
    (``.output``, requires grad) from which the rest of the forward pass is recorded, so
    ``torch.autograd.grad(score, cap.output)`` runs the backward pass from the score to the layer and no
    further: nothing before the layer is recorded, no parameter gets ``.grad``, frozen models work too.
    The model downstream gets a copy, so in-place operations after the layer cannot alter ``.output``.
    Without ``grad``, ``.output`` is the detached output. The hook is removed and grad mode restored on exit.
    """
    cap = Captured()

    def hook(module, args, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"layer '{spec.name}' returns {type(output).__name__}, not a tensor; "
                            "choose a layer that outputs a tensor")
        if not grad:
            cap.output = output.detach()
            return None
        cap.output = output.detach().requires_grad_(True)
        torch.set_grad_enabled(True)  # record from the layer on; restored when the block exits
        return cap.output.clone()

    previous = torch.is_grad_enabled()
    handle = spec.module.register_forward_hook(hook)
    try:
        torch.set_grad_enabled(False)
        yield cap
    finally:
        handle.remove()
        torch.set_grad_enabled(previous)
