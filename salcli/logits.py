"""A model's output -> its logits (B, K). Models return what their authors chose: a tensor, a tuple whose first
element is the logits (torchvision's GoogLeNet and Inception in training mode, many research models), a dict
with ``logits`` or ``out``, or an object with ``.logits`` (Hugging Face transformers' ``ModelOutput``). salcli
takes the logits from any of these, everywhere a model runs, with no wrapper written by the user.

``logits_of`` reads one output; ``classifier`` wraps a model whose output needs reading, so that the methods,
which call ``model(x)`` and expect a tensor, run on it unchanged. Anything else is refused with a message that
names what the model returned.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

KEYS = ("logits", "out")  # dict keys holding the class scores, in the order they are looked for


class OutputError(ValueError):
    """The model's output holds no (batch, classes) logits."""


def describe(out) -> str:
    """A short description of an output for error messages: 'a tensor of shape (2, 3, 4)', 'a dict with keys ...'."""
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, Mapping):
        return f"a {type(out).__name__} with keys {', '.join(map(str, list(out)[:6]))}"
    if isinstance(out, (tuple, list)):
        inner = ", ".join(describe(o) if isinstance(o, torch.Tensor) else type(o).__name__ for o in out[:3])
        return f"a {type(out).__name__} of {len(out)} ({inner}{', ...' if len(out) > 3 else ''})"
    return f"a {type(out).__module__}.{type(out).__name__}"


def find(out):
    """The tensor of ``out`` that holds the logits (not checked for shape), or None."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):  # a dict, or a transformers ModelOutput (an OrderedDict)
        return next((out[k] for k in KEYS if isinstance(out.get(k), torch.Tensor)), None)
    if isinstance(out, (tuple, list)):
        return out[0] if out and isinstance(out[0], torch.Tensor) else None
    value = getattr(out, "logits", None)
    return value if isinstance(value, torch.Tensor) else None


def logits_of(out) -> torch.Tensor:
    """The (B, K) logits in a model's output; ``OutputError`` naming what it returned otherwise."""
    value = find(out)
    if value is None or value.ndim != 2:
        where = "" if value is None or value is out else f" (its logits: a tensor of shape {tuple(value.shape)})"
        raise OutputError(f"the model must return logits of shape (batch, classes): a tensor, a tuple whose first "
                          f"element they are, a dict with 'logits' or 'out', or an object with .logits; it "
                          f"returned {describe(out)}{where}")
    return value


class Logits(nn.Module):
    """``model`` with its output read by ``logits_of``. The model is a child named ``model``; layer lookups are
    done on the model itself (``classifier`` only wraps what runs), so layer names do not change."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(x))


def needs_reading(out) -> bool:
    """Whether an output is something other than a plain tensor (then the model runs wrapped in ``Logits``)."""
    return not isinstance(out, torch.Tensor)


def classifier(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """``model`` itself when it returns a tensor for ``example``, else ``Logits(model)``. Raises ``OutputError``
    when the output holds no (batch, classes) logits."""
    with torch.no_grad():
        out = model(example)
    logits_of(out)
    return Logits(model) if needs_reading(out) else model
