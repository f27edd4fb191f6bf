"""Pure rendering: a map and the preprocessed picture -> an overlay as a uint8 array. No I/O."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import UsageError
from .maps import display_scale

MIN_SIDE = 224  # overlays of small inputs are upscaled to at least this many pixels on the short side


@lru_cache(maxsize=8)
def colormap_lut(name: str) -> np.ndarray:
    """(256, 3) uint8 lookup table of a matplotlib colormap."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        from .errors import did_you_mean

        raise UsageError(f"unknown colormap '{name}'.{did_you_mean(name, matplotlib.colormaps)} "
                         "Any matplotlib colormap name works (jet, viridis, inferno, turbo, ...)") from None
    return (cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)


def overlay(pixels: np.ndarray, saliency: np.ndarray, colormap: str = "jet", alpha: float = 0.5,
            caption: str | None = None, min_side: int = MIN_SIDE) -> np.ndarray:
    """Blend the colored, normalized map onto the picture.

    pixels (H, W, C) uint8 with C in {1, 3}; saliency (H, W) float. Returns (H', W', 3) uint8, upscaled by
    an integer factor (nearest, so each input pixel stays a visible square) until the short side reaches
    ``min_side``; ``caption`` adds a strip of text below.
    """
    if pixels.shape[:2] != saliency.shape:
        raise ValueError(f"map {saliency.shape} and image {pixels.shape[:2]} differ in size")
    rgb = np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels
    heat = colormap_lut(colormap)[(display_scale(saliency) * 255.0 + 0.5).astype(np.uint8)]
    out = ((1.0 - alpha) * rgb.astype(np.float32) + alpha * heat.astype(np.float32) + 0.5).astype(np.uint8)
    factor = -(-min_side // min(out.shape[:2]))  # ceil
    if factor > 1:
        out = out.repeat(factor, axis=0).repeat(factor, axis=1)
    if caption:
        out = _with_caption(out, caption)
    return out


def _with_caption(image: np.ndarray, text: str) -> np.ndarray:
    font = _font()
    height = 18
    canvas = Image.new("RGB", (image.shape[1], image.shape[0] + height), (0, 0, 0))
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    while len(text) > 4 and draw.textlength(text, font=font) > image.shape[1] - 6:
        text = text[:-2].rstrip() + "…" if not text.endswith("…") else text[:-2] + "…"
    draw.text((3, image.shape[0] + 3), text, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


@lru_cache(maxsize=1)
def _font():
    return ImageFont.load_default(size=12)


def line_plot(series: dict[str, list[float]], title: str, xlabel: str, ylabel: str,
              x: list[float] | None = None) -> bytes:
    """A PNG (bytes) of one line per named series; x defaults to evenly spaced points on [0, 1]."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    for name, ys in series.items():
        xs = x if x is not None else [i / max(1, len(ys) - 1) for i in range(len(ys))]
        ax.plot(xs, ys, label=name, linestyle="--" if name == "random" else "-")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()
