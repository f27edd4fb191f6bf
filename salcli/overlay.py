"""What a run's overlays show: the display settings, each method's sign mode, the scale, and the renderers the
pipeline hands to the writer (``render`` draws; this module decides what to draw).

- ``--overlay-on original`` (default): the map drawn back onto the original picture at its own proportions,
  scaled to fit ``--overlay-size``; the border the center crop cut away is greyed and hatched. ``input``: on the
  preprocessed crop the model saw.
- ``--sign all|positive|negative|absolute``: how a *signed* map is shown (``maps.SIGN_MODES``); maps whose method
  says they are >= 0 are always shown by magnitude with ``--colormap``, as before.
- ``--scale image`` (default): each map by its own robust range; ``run``: one range per method over every map of
  the run (the overlays are drawn again at the end, from the stored maps: ``redraw_at_run_scale``); a number:
  that fixed value saturates the colours (comparable across runs and shards).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import render
from .config import SCALES
from .maps import display_range

DEFAULT_SIZE = 512


@dataclass(frozen=True)
class Display:
    on: str = "original"
    size: int = DEFAULT_SIZE
    sign: str = "all"
    scale: str = "image"
    colormap: str = "jet"
    alpha: float = 0.5

    @classmethod
    def from_config(cls, config) -> "Display":
        return cls(on=getattr(config, "overlay_on", "original"), size=getattr(config, "overlay_size", DEFAULT_SIZE),
                   sign=getattr(config, "sign", "all"), scale=str(getattr(config, "scale", "image")),
                   colormap=config.colormap, alpha=config.alpha)

    @property
    def fixed(self) -> float | None:
        """The value of ``--scale VALUE``, or None for ``image`` and ``run``."""
        return None if self.scale in SCALES else float(self.scale)

    @property
    def note(self) -> str:
        return {"image": "", "run": "run scale"}.get(self.scale, "fixed scale")


# ---------------------------------------------------------------------------------------------- sign
def signed(method) -> bool | None:
    """Whether a method's maps carry a sign: its ``signed`` class attribute when it has one, else its map
    convention (the word "signed"), None when neither says (then each map decides: negative values = signed)."""
    flag = getattr(method, "signed", None)
    if flag is not None:
        return bool(flag)
    convention = getattr(method, "convention", "") or ""
    if not convention:
        return None
    return re.search(r"(?<![a-z])signed\b", convention) is not None


def mode_of(method, display: Display, saliency: np.ndarray | None = None) -> str:
    """The sign mode a method's maps are drawn in: ``--sign`` for signed maps, ``absolute`` for the others."""
    is_signed = signed(method)
    if is_signed is None:
        is_signed = saliency is not None and bool(np.nan_to_num(saliency).min() < 0)
    return display.sign if is_signed else "absolute"


# ---------------------------------------------------------------------------------------------- drawing
def caption(facts: dict[str, Any]) -> str:
    name = facts["pred_label"] if facts.get("pred_label") is not None else f"class {facts['pred']}"
    text = f"pred {name} {facts['prob']:.0%}" if facts["prob"] is not None else f"pred {name} (probability NaN)"
    if facts.get("target") != facts.get("pred"):
        text += f" | map for {facts.get('target_label') or facts.get('target')}"
    return re.sub(r"[\x00-\x1f\x7f]+", " ", text)  # a class name with a newline is drawn on one line


def draw(display: Display, resize: int, mode: str, saliency: np.ndarray, item: dict[str, Any],
         text: str | None, scale: tuple[float, float] | None = None) -> np.ndarray:
    """The overlay of one map: on ``item['picture']`` (the original, with ``item['size']``) or on
    ``item['pixels']`` (the crop). ``scale``: the range to use (default: ``--scale``'s)."""
    if scale is None and display.fixed is not None:
        scale = (0.0, display.fixed)
    common = dict(colormap=display.colormap, alpha=display.alpha, caption=text, mode=mode, scale=scale, legend=True,
                  max_side=display.size, note=display.note)
    if display.on == "original" and item.get("picture") is not None:
        return render.overlay_on_original(item["picture"], tuple(item["size"]), saliency, resize, **common)
    return render.overlay(item["pixels"], saliency, **common)


def renderer(display: Display, resize: int, method, item: dict[str, Any], saliency: np.ndarray,
             facts: dict[str, Any], scale: tuple[float, float] | None = None) -> Callable[[], np.ndarray]:
    """A call that draws the overlay (run on a writer thread)."""
    mode = mode_of(method, display, saliency)
    text = caption(facts)
    return lambda: draw(display, resize, mode, saliency, item, text, scale)


def record_fields(display: Display, method, item: dict[str, Any], saliency: np.ndarray) -> dict[str, Any]:
    """What a manifest record says about its overlay: the original's ``width`` and ``height`` (to map the map
    back), and with ``--scale run`` the map's own range (``display_range``) and the range it was drawn with
    (``overlay_scale``), so that the run's range can be found and stale overlays redrawn without reading maps."""
    fields: dict[str, Any] = {}
    if item.get("size") is not None:
        fields["width"], fields["height"] = (int(v) for v in item["size"])
    if display.scale == "run" and np.isfinite(saliency).all():
        own = [float(v) for v in display_range(saliency, mode_of(method, display, saliency))]
        fields["display_range"] = own
        fields["overlay_scale"] = own  # the main pass draws each map at its own range; the last pass redraws
    return fields


# ---------------------------------------------------------------------------------------------- --scale run
def run_scale(ranges: list[list[float]]) -> tuple[float, float] | None:
    """One range for many maps: the lowest lo and the highest hi (each hi is already a robust 99th percentile, so
    the strongest map saturates only its top 1%, and the others show in proportion)."""
    if not ranges:
        return None
    return float(min(r[0] for r in ranges)), float(max(r[1] for r in ranges))


def redraw_at_run_scale(resolved, writer, items, workers: int = 0) -> int:
    """``--scale run``: once every map of the run is written (this run's and those resume skipped), find each
    method's run range from the records and redraw, from the stored maps, every overlay drawn at another range.
    Images are decoded again (no model runs). Returns the number of overlays redrawn. An interrupted pass is
    finished by the next run: a record says which range its overlay was drawn with."""
    import torch

    from . import images

    display = Display.from_config(resolved.config)
    if display.scale != "run" or not getattr(resolved.config, "overlays", True) or writer.sink.buffered:
        return 0  # a packed sink's rows are never rewritten: config.py refuses --scale run with one
    writer.drain(wait_all=True)
    methods = {m.name: m for m in resolved.methods}
    records = [writer.records[k] for k in list(writer.records) if k[1] in methods]
    records = [r for r in records if r.get("status") in ("ok", "skipped")]
    ranges: dict[str, list[list[float]]] = {}
    for r in records:
        if r.get("display_range") is None:  # written before this field existed: read its map
            m = writer.sink.load_map(r)
            r["display_range"] = list(display_range(m, mode_of(methods[r["method"]], display, m)))
        ranges.setdefault(r["method"], []).append(r["display_range"])
    scales = {name: run_scale(rs) for name, rs in ranges.items()}
    stale: dict[str, list[dict]] = {}
    for r in records:
        if r.get("overlay_scale") != list(scales[r["method"]]):
            stale.setdefault(r["image"], []).append(r)
    if not stale:
        return 0
    index = {item.key: i for i, item in enumerate(items)}
    todo = [index[k] for k in stale if k in index]
    dataset = images.ImageDataset(items, resolved.preprocess, display=display.size)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, todo), batch_size=8, shuffle=False,
                                         num_workers=workers, collate_fn=images.collate)
    redrawn = 0
    for batch in loader:
        for bad in batch["errors"]:
            for r in stale[bad["key"]]:
                writer.add({**r, "status": "error",
                            "error": f"could not draw the overlay again at the run scale: {bad['error']}"})
        for item in batch["good"]:
            for r in stale[item["key"]]:
                m = writer.sink.load_map(r)
                scale = scales[r["method"]]
                draw_it = renderer(display, resolved.preprocess.resize, methods[r["method"]], item, m, r, scale)
                writer.submit({**r, "overlay_scale": list(scale)}, m, draw_it)
                redrawn += 1
        writer.drain(wait_all=False)
    writer.drain(wait_all=True)
    return redrawn


def describe(resolved) -> dict[str, Any]:
    """run.json's ``overlay``: how the overlays were drawn."""
    display = Display.from_config(resolved.config)
    return {"on": display.on, "size": display.size, "scale": display.scale, "sign": display.sign,
            "colormap": display.colormap, "diverging_colormap": render.DIVERGING, "alpha": display.alpha,
            "modes": {m.name: (mode_of(m, display) if signed(m) is not None else "by map")
                      for m in resolved.methods},
            # whether each method's maps carry a sign (None: each map decides), so that `salcli render` can draw
            # them with another --sign without loading the method registry (and torch)
            "signed": {m.name: signed(m) for m in resolved.methods},
            "robust_percentile": 99.0}
