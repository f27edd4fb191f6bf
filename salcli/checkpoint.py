"""Checkpoint files as the world writes them: the kind of a file judged by its content, state dicts unwrapped from
the containers training code saves, and their keys matched to the model's.

- ``sniff(path)``: safetensors, a ``torch.save`` zip, a TorchScript zip, a ``torch.export`` zip, a legacy
  (pre-1.6) ``torch.save`` pickle, or unknown, from the first bytes and the zip's member names; any extension.
- ``read(path, key, trust)``: the state dict in the file. safetensors is read with safetensors; everything
  else with ``torch.load(weights_only=True)``, and with ``weights_only=False`` only when the user passed
  ``trust_checkpoint`` (never as a silent retry). A container (``state_dict``, ``model``, ``state_dict_ema``,
  ...) is unwrapped; which entry was used is reported, with the others there were.
- ``match(state, own)``: the state dict with its keys made to match the model's: a prefix stripped
  (``module.`` from DataParallel, ``model.`` from Lightning, ``_orig_mod.`` from ``torch.compile``,
  ``backbone.``, or any prefix under which the model's keys all are), BatchNorm's ``num_batches_tracked``
  filled in for checkpoints from before it existed (as ``load_state_dict`` does). A real mismatch raises with
  the first keys that differ.

Pure: no model is built here and nothing but the named file is read.
"""

from __future__ import annotations

import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import ModelLoadError, setting

# Containers, in the order they are looked for. The plain weights come before the EMA ones (as timm's loader
# and the training scripts that write both do); --weights-key chooses another.
CONTAINERS = ("state_dict", "model_state_dict", "model", "module", "net", "state_dict_ema", "model_ema")
# Entries of a checkpoint dict that may hold the class names, in order.
LABEL_KEYS = ("classes", "class_names", "labels", "idx_to_class", "class_to_idx")
FILLED = "num_batches_tracked"  # BatchNorm's counter, absent from checkpoints saved before PyTorch 0.4.1

TRUST_HINT = ("it holds pickled Python objects, which run code when loaded. If you trust where it came from, "
              "add " + setting("trust_checkpoint") + "; safer: save a state dict (safetensors) and load it with "
              + setting("weights"))

KINDS = {
    "safetensors": "a safetensors file",
    "torch-zip": "a torch.save archive",
    "torchscript": "a TorchScript archive",
    "export": "a torch.export program",
    "pickle": "a legacy torch.save pickle",
    "unknown": "not a checkpoint salcli knows",
}


def sniff(path: Path) -> str:
    """The kind of checkpoint ``path`` holds, from its content: a key of ``KINDS``."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return "unknown"
    if head[:4] == b"PK\x03\x04":
        return _zip_kind(path)
    if len(head) >= 9:
        (size,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and 2 <= size <= 100_000_000 and size <= path.stat().st_size - 8:
            return "safetensors"
    if head[:1] == b"\x80" and 1 <= head[1] <= 5:  # a pickle's protocol opcode
        return "pickle"
    return "unknown"


def _zip_kind(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return "unknown"
    tails = {name.split("/", 1)[-1] for name in names}
    if "models/model.json" in tails or any(t.startswith("models/") and t.endswith(".json") for t in tails):
        return "export"
    if "constants.pkl" in tails or any(t.startswith("code/") for t in tails):
        return "torchscript"
    if "data.pkl" in tails:
        return "torch-zip"
    return "unknown"


@dataclass
class Checkpoint:
    """A state dict read from a file, and how it was found in it."""

    state: dict[str, torch.Tensor]
    key: str | None = None  # the container entry used ("state_dict", "model.state_dict", ...); None: the top level
    others: list[str] = field(default_factory=list)  # other entries that hold a state dict too
    labels: tuple[str, ...] | None = None  # class names the checkpoint carries
    format: str = "safetensors"
    trusted: bool = False  # read with weights_only=False (the user passed trust_checkpoint)


def read(path: Path, key: str | None = None, trust: bool = False) -> Checkpoint:
    """The state dict in ``path`` (see the module docstring); ``key`` names the entry (dots go down levels)."""
    kind = sniff(path)
    trusted = False
    if kind == "safetensors":
        obj = _safetensors(path)
    elif kind in ("torch-zip", "pickle"):
        obj, trusted = _torch_load(path, trust)
    elif kind in ("torchscript", "export"):
        raise ModelLoadError(f"{setting('weights')} {path} is {KINDS[kind]}, a whole model, not weights: give it "
                             f"as {setting('model')} {path}")
    else:
        raise ModelLoadError(f"{setting('weights')} {path}: {KINDS['unknown']}. It takes a safetensors file or a "
                             "file written by torch.save (a state dict, or a dict holding one), whatever its "
                             "extension")
    labels = _labels(obj)
    state, used, others = _unwrap(obj, key, path)
    if isinstance(state, torch.nn.Module):  # a pickled whole module under 'model' (read with trust only)
        state = state.state_dict()
    return Checkpoint(dict(state), used, others, labels, kind, trusted)


def _safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"could not read safetensors file {path}: {exc}") from exc


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _torch_load(path: Path, trust: bool) -> tuple[Any, bool]:
    """torch.load weights-only; without it only when the user trusts the file. Returns (object, trusted)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True), False
    except Exception as exc:  # noqa: BLE001
        if trust:
            try:
                return torch.load(path, map_location="cpu", weights_only=False), True  # explicit trust only
            except Exception as again:  # noqa: BLE001
                raise ModelLoadError(f"could not load {path} ({type(again).__name__}: {again})") from again
        found = _GLOBAL.search(str(exc))
        what = (f"it refers to {found.group(1)}, which plain weights never need" if found
                else f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        raise ModelLoadError(f"could not read {path} as weights only ({what}). If it is a training checkpoint or "
                             f"a pickled whole model, {TRUST_HINT}") from exc


def _is_state(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items())


def _entries(obj: Any, prefix: str = "", depth: int = 0):
    """(dotted key, value) of every container entry that holds a state dict (or a module), up to 3 levels."""
    if not isinstance(obj, dict) or depth > 2:
        return
    for name in CONTAINERS:
        value = obj.get(name)
        if _is_state(value) or isinstance(value, torch.nn.Module):
            yield prefix + name, value
        elif isinstance(value, dict):
            yield from _entries(value, f"{prefix}{name}.", depth + 1)


def _unwrap(obj: Any, key: str | None, path: Path) -> tuple[Any, str | None, list[str]]:
    if key is not None:
        value = obj
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                have = ", ".join(map(str, list(obj)[:12])) if isinstance(obj, dict) else type(obj).__name__
                raise ModelLoadError(f"{setting('weights_key')} {key}: {path} has no such entry (it holds: {have})")
            value = value[part]
        if not (_is_state(value) or isinstance(value, torch.nn.Module)):
            raise ModelLoadError(f"{setting('weights_key')} {key}: the entry in {path} is a {type(value).__name__}, "
                                 "not a state dict (a mapping of names to tensors)")
        return value, key, [k for k, _ in _entries(obj) if k != key]
    if _is_state(obj):
        return obj, None, []
    found = list(_entries(obj))
    if not found:
        held = (f"a dict with keys {', '.join(map(str, list(obj)[:12]))}" if isinstance(obj, dict)
                else f"a {type(obj).__name__}")
        raise ModelLoadError(f"{path} does not hold a state dict (a mapping of names to tensors): it holds {held}. "
                             f"Name the entry that does with {setting('weights_key')}")
    (used, value), others = found[0], [k for k, _ in found[1:]]
    return value, used, others


def _labels(obj: Any) -> tuple[str, ...] | None:
    """Class names stored beside the weights: a list, or a name -> index / index -> name mapping."""
    if not isinstance(obj, dict):
        return None
    for name in LABEL_KEYS:
        value = obj.get(name)
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            return tuple(value)
        if isinstance(value, dict) and value:
            pairs = [(v, k) if name == "class_to_idx" else (k, v) for k, v in value.items()]
            try:
                ordered = sorted((int(i), str(label)) for i, label in pairs)
            except (TypeError, ValueError):
                continue
            if [i for i, _ in ordered] == list(range(len(ordered))):
                return tuple(label for _, label in ordered)
    return None


# ---------------------------------------------------------------------------------------------- matching
@dataclass
class Match:
    """A state dict with the model's keys, and what was done to get there (for run.json and the user)."""

    state: dict[str, torch.Tensor]
    stripped: str | None = None  # the prefix taken off every key used
    added: str | None = None  # the prefix put in front of every key (the model wraps the checkpoint's)
    filled: list[str] = field(default_factory=list)  # num_batches_tracked buffers set to 0
    ignored: list[str] = field(default_factory=list)  # checkpoint keys outside the prefix (not the model's)


def match(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], path: Path) -> Match:
    """``state`` keyed like ``own`` (the model's state dict), or ModelLoadError naming the first keys that differ."""
    best = None
    for stripped, added in _candidates(state, own):
        keyed = {added + k[len(stripped):]: v for k, v in state.items() if k.startswith(stripped)}
        problems = _problems(keyed, own)
        if not any(problems.values()):
            ignored = [k for k in state if not k.startswith(stripped)]
            filled = [k for k in own if k not in keyed]
            keyed.update({k: torch.zeros_like(own[k], device="cpu") for k in filled})
            return Match(keyed, stripped or None, added or None, filled, ignored)
        if best is None or sum(map(len, problems.values())) < sum(map(len, best.values())):
            best = problems  # the reading closest to the model: the differences the user can act on
    parts = []
    for label, items in best.items():
        if items:
            more = f" and {len(items) - 5} more" if len(items) > 5 else ""
            parts.append(f"{label} ({len(items)}): {', '.join(items[:5])}{more}")
    raise ModelLoadError(f"the weights in {path} do not fit the model: {'; '.join(parts)}. Check that "
                         f"{setting('model')} names the architecture these weights were trained for")


def _problems(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    return {
        "missing": [k for k in own if k not in state and not k.endswith("." + FILLED) and k != FILLED],
        "unexpected": [k for k in state if k not in own],
        "wrong shape": [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                        for k in own if k in state and state[k].shape != own[k].shape],
    }


def _candidates(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]):
    """(prefix to strip, prefix to add) pairs to try: none, then every prefix that puts the model's first key
    under a checkpoint key (``module.``, ``model.``, ``_orig_mod.``, ``module._orig_mod.``, ``backbone.``, any
    other), then every prefix that puts a checkpoint key under the model's first key (a wrapped model). Each is
    checked against all the keys by ``match``, so the order only decides which error a mismatch reports."""
    yield "", ""
    first = next((k for k in own if not k.endswith(FILLED)), None)
    if first is None:
        return
    strip = dict.fromkeys(k[:-len(first)] for k in state if k.endswith("." + first))
    add = dict.fromkeys(first[:-len(k)] for k in state if first.endswith("." + k))
    yield from ((prefix, "") for prefix in strip)
    yield from (("", prefix) for prefix in add)


@dataclass
class Report:
    """How a weights file was read, for run.json (``info``) and the user (``notes``), with the class names the
    checkpoint carries."""

    info: dict[str, Any]
    notes: list[str]
    labels: tuple[str, ...] | None = None


def report(checkpoint: Checkpoint, matched: Match, path: Path) -> Report:
    return Report(describe(checkpoint, matched), notes(checkpoint, matched, path), checkpoint.labels)


def describe(checkpoint: Checkpoint, matched: Match) -> dict[str, Any]:
    """What run.json says about how the weights were read."""
    return {"format": checkpoint.format, "key": checkpoint.key, "other_keys": checkpoint.others,
            "stripped_prefix": matched.stripped, "added_prefix": matched.added,
            "filled": matched.filled, "ignored": len(matched.ignored), "ignored_first": matched.ignored[:5],
            "read_with_trust": checkpoint.trusted}


def notes(checkpoint: Checkpoint, matched: Match, path: Path) -> list[str]:
    """Lines for the user: which entry was used, what was stripped, filled or ignored."""
    said = []
    if checkpoint.key is not None:
        also = (f"; it also holds {', '.join(checkpoint.others)} (choose with {setting('weights_key')})"
                if checkpoint.others else "")
        said.append(f"weights: used entry '{checkpoint.key}' of {path.name}{also}")
    if matched.stripped:
        said.append(f"weights: stripped the prefix '{matched.stripped}' from the checkpoint's keys")
    if matched.added:
        said.append(f"weights: added the prefix '{matched.added}' to the checkpoint's keys")
    if matched.filled:
        said.append(f"weights: {len(matched.filled)} BatchNorm {FILLED} buffers are not in the checkpoint "
                    "(saved before PyTorch 0.4.1); set to 0, as load_state_dict does (unused in eval mode)")
    if matched.ignored:
        said.append(f"weights: ignored {len(matched.ignored)} checkpoint entries outside '{matched.stripped}' "
                    f"(e.g. {', '.join(matched.ignored[:3])})")
    return said
