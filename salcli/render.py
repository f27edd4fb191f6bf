"""Pure rendering: a map and a picture -> an overlay as a uint8 array. No I/O.

``overlay`` draws on the model's input (the preprocessed crop); ``overlay_on_original`` maps the map back through
the crop and resize (``geometry``) onto the original picture and shows the cut-away border greyed and hatched,
without heat. Both take the raw map, choose how to show it from a sign ``mode`` (``maps.SIGN_MODES``) and a
``scale`` (lo, hi), and can add a strip below the picture: a caption and a legend that says what the colours mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import UsageError
from .geometry import MIN_SIDE, Geometry, display_size, geometry, sample_grid
from .maps import check_finite, display_range, display_values

DIVERGING = "bwr"  # signed maps (--sign all): blue < 0 < red, white at 0
NO_CAP = 1 << 30


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


@dataclass(frozen=True)
class Legend:
    """What the legend strip says: the sign ``mode``, the range (lo, hi) the colours span, and a ``note``
    (e.g. "run scale")."""

    mode: str
    lo: float
    hi: float
    note: str = ""


# ---------------------------------------------------------------------------------------------- entry points
def overlay(pixels: np.ndarray, saliency: np.ndarray, colormap: str = "jet", alpha: float = 0.5,
            caption: str | None = None, min_side: int = MIN_SIDE, *, mode: str = "absolute",
            scale: tuple[float, float] | None = None, legend: bool = False, max_side: int = NO_CAP,
            note: str = "") -> np.ndarray:
    """Blend the colored map onto the picture the model saw.

    pixels (H, W, C) uint8 with C in {1, 3}; saliency (H, W) float, finite (``maps.MapNotFinite`` otherwise).
    Returns (H', W', 3) uint8, upscaled by an integer factor (nearest, so each input pixel stays a visible square)
    until the short side reaches ``min_side`` (within ``max_side`` on the long side; larger pictures are scaled
    down to it). ``mode`` and ``scale``: see ``colorize``. ``caption`` and ``legend`` add a strip below.
    """
    if pixels.shape[:2] != saliency.shape:
        raise ValueError(f"map {saliency.shape} and image {pixels.shape[:2]} differ in size")
    h, w = saliency.shape
    geom = Geometry(w, h, (w, h), 0, 0, w) if w == h else None
    return _draw(pixels, saliency, geom, display_size(w, h, max_side, min_side), colormap, alpha, caption, mode,
                 scale, legend, note)


def overlay_on_original(picture: np.ndarray, size: tuple[int, int], saliency: np.ndarray, resize: int,
                        colormap: str = "jet", alpha: float = 0.5, caption: str | None = None, *,
                        mode: str = "absolute", scale: tuple[float, float] | None = None, legend: bool = True,
                        max_side: int = 512, min_side: int = MIN_SIDE, note: str = "") -> np.ndarray:
    """The map (crop, crop), computed on the center crop of the original picture, drawn back onto the original.

    ``picture`` (h, w, C) uint8: the original, possibly already scaled down (``images.picture``); ``size``: the
    original's (width, height), which the geometry is computed from; ``resize``: the preprocessing's short side
    (the crop is the map's side). The overlay is the original at ``geometry.display_size(width, height, max_side,
    min_side)``; the part of the picture the model never saw is greyed and hatched, with no heat.
    """
    if saliency.ndim != 2 or saliency.shape[0] != saliency.shape[1]:
        raise ValueError(f"a map at the model's input resolution is square; got {saliency.shape}")
    width, height = size
    geom = geometry(width, height, resize, saliency.shape[0])
    return _draw(picture, saliency, geom, display_size(width, height, max_side, min_side), colormap, alpha, caption,
                 mode, scale, legend, note)


def colorize(saliency: np.ndarray, colormap: str, mode: str = "absolute",
             scale: tuple[float, float] | None = None) -> tuple[np.ndarray, tuple[float, float], np.ndarray]:
    """A finite map -> (display values, (lo, hi), LUT). ``mode`` ``all`` shows the sign: values in [-1, 1] for the
    diverging colormap ``DIVERGING`` (``colormap`` is not used); the other modes give [0, 1] for ``colormap``.
    ``scale`` (lo, hi): a range shared by several maps; default the map's own (``maps.display_range``)."""
    check_finite(saliency)
    lo, hi = scale if scale is not None else display_range(saliency, mode)
    lut = colormap_lut(DIVERGING if mode == "all" else colormap)
    return display_values(saliency, mode, lo, hi), (lo, hi), lut


# ---------------------------------------------------------------------------------------------- drawing
def _draw(picture, saliency, geom, display, colormap, alpha, caption, mode, scale, legend, note) -> np.ndarray:
    values, (lo, hi), lut = colorize(saliency, colormap, mode, scale)
    fitted = _fit(picture, display)
    if geom is None:  # a non-square input crop shown as it is: the map covers the picture exactly
        h, w = values.shape
        rows = np.minimum((np.arange(display[1]) + 0.5) * h / display[1], h - 1).astype(np.int64)
        cols = np.minimum((np.arange(display[0]) + 0.5) * w / display[0], w - 1).astype(np.int64)
        shown, inside = values[np.ix_(rows, cols)], None
    else:
        shown, inside = _sample(values, geom, display)
    signed = mode == "all"
    luma = _luma(fitted) if signed or (inside is not None and not inside.all()) else None
    out = _blend(fitted, luma, shown, lut, alpha, signed)
    if inside is not None and not inside.all():
        _cut_away(out, luma, ~inside)
    if legend or caption:
        out = _with_strip(out, caption, Legend(mode, lo, hi, note) if legend else None, lut)
    return out


def _fit(picture: np.ndarray, display: tuple[int, int]) -> np.ndarray:
    """The picture at ``display`` (w, h): integer upscaling repeats pixels (visible squares), anything else is
    resampled (antialiased when scaling down)."""
    h, w = picture.shape[:2]
    dw, dh = display
    if (dw, dh) == (w, h):
        return picture
    if dw % w == 0 and dh % h == 0 and dw // w == dh // h:
        k = dw // w
        return picture.repeat(k, axis=0).repeat(k, axis=1)
    im = Image.fromarray(picture[:, :, 0] if picture.shape[2] == 1 else picture)
    arr = np.asarray(im.resize((dw, dh), Image.BICUBIC, reducing_gap=3.0))
    return arr[:, :, None] if arr.ndim == 2 else arr


def _sample(values: np.ndarray, geom: Geometry, display: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The display values at every overlay pixel, and the mask of the pixels inside the crop. A map shown smaller
    than its resolution is box-averaged first (no aliasing); a larger one is sampled nearest (its pixels stay
    visible as what they are)."""
    n = values.shape[0]
    side = n * display[0] / geom.resized[0]  # the crop's width in overlay pixels
    grid = n
    if side < n:
        grid = max(1, int(np.ceil(side)))
        values = np.asarray(Image.fromarray(values.astype(np.float32), "F").resize((grid, grid), Image.BOX))
    rows, cols, row_in, col_in = sample_grid(geom, display, grid)
    return values[np.ix_(rows, cols)], row_in[:, None] & col_in[None, :]


LEVELS = 127  # signed values are drawn at 2 x 127 + 1 levels (0 exactly one of them); unsigned at 256


def _blend(picture: np.ndarray, luma: np.ndarray | None, values: np.ndarray, lut: np.ndarray, alpha: float,
           signed: bool) -> np.ndarray:
    """Unsigned values in [0, 1]: the colormap at opacity ``alpha`` over the picture. Signed values in [-1, 1]: the
    diverging colormap's end colour for the value's sign over the picture in grey (``luma``; so that red and blue
    mean only the sign), at opacity |value| x min(1, 2 alpha): zero evidence leaves the picture as it is, the
    strongest is opaque at the default alpha 0.5. Over white this is exactly the diverging colormap (its legend).

    Both are table look-ups: the result depends only on the quantized value and the picture's byte under it."""
    table = _blend_table(lut.tobytes(), float(alpha), signed)
    if signed:
        k = (np.rint(values * LEVELS) + LEVELS).astype(np.intp)
        return table[k, luma]
    k = np.rint(values * 255.0).astype(np.intp)
    rgb = np.repeat(picture, 3, axis=2) if picture.shape[2] == 1 else picture
    return np.stack([table[c][k, rgb[:, :, c]] for c in range(3)], axis=2)


@lru_cache(maxsize=16)
def _blend_table(lut_bytes: bytes, alpha: float, signed: bool) -> np.ndarray:
    """Signed: (2 LEVELS + 1, 256, 3) uint8, [value level, grey] -> colour. Unsigned: (3, 256, 256) uint8,
    [channel, value level, picture byte] -> byte."""
    lut = np.frombuffer(lut_bytes, dtype=np.uint8).reshape(256, 3).astype(np.float64)
    p = np.arange(256, dtype=np.float64)
    if signed:
        v = np.arange(-LEVELS, LEVELS + 1, dtype=np.float64) / LEVELS
        colour = np.where((v < 0)[:, None], lut[0], lut[255])  # (levels, 3)
        opacity = (min(1.0, 2.0 * alpha) * np.abs(v))[:, None, None]
        out = p[None, :, None] * (1.0 - opacity) + colour[:, None, :] * opacity
    else:
        out = p[None, None, :] * (1.0 - alpha) + lut.T[:, :, None] * alpha
    return (out + 0.5).astype(np.uint8)


def _luma(picture: np.ndarray) -> np.ndarray:
    """uint8 (h, w) grey of a picture (Pillow's ITU-R 601-2 luma; a grey picture is its own)."""
    if picture.shape[2] == 1:
        return picture[:, :, 0]
    return np.asarray(Image.fromarray(np.ascontiguousarray(picture)).convert("L"))


HATCH = 8  # pixels between the hatch lines of the cut-away border
_FADE = (110.0 + 0.35 * np.arange(256) + 0.5).astype(np.uint8)  # grey byte -> its faded border byte
_HATCHED = (0.6 * (110.0 + 0.35 * np.arange(256)) + 0.5).astype(np.uint8)  # ... on a hatch line


@lru_cache(maxsize=8)
def _hatch(h: int, w: int) -> np.ndarray:
    return ((np.arange(h)[:, None] + np.arange(w)[None, :]) % HATCH) == 0


def _cut_away(out: np.ndarray, luma: np.ndarray, border: np.ndarray) -> None:
    """Draw the border the model never saw into ``out``: the picture faded to grey, with diagonal hatching; no
    heat."""
    grey = luma[border]
    out[border] = np.where(_hatch(*luma.shape)[border], _HATCHED[grey], _FADE[grey])[:, None]


# ---------------------------------------------------------------------------------------------- caption and legend
def strip_font_size(width: int) -> int:
    """Text size of the strip under an overlay ``width`` pixels wide: about 4.5% of the width (at least 11 px), so
    that it stays readable when the overlay is shown 240 px wide (the report's thumbnails)."""
    return max(11, round(width * 0.045))


def legend_labels(legend: Legend) -> tuple[str, str, str]:
    """(left, right, words) of a legend: the values at the ends of the colorbar and what the colours show."""
    def num(v: float) -> str:  # two significant digits; what is negligible beside hi reads 0
        return "0" if abs(v) <= 1e-3 * abs(legend.hi) else f"{v:.2g}"

    if legend.mode == "all":
        left, right, words = f"-{num(legend.hi)}", f"+{num(legend.hi)}", "blue -  0  + red"
    elif legend.mode == "positive":
        left, right, words = "0", f"+{num(legend.hi)}", "positive part"
    elif legend.mode == "negative":
        left, right, words = "0", f"-{num(legend.hi)}", "negative part"
    else:
        left, right, words = num(legend.lo), num(legend.hi), "low - high"
    return left, right, ", ".join(w for w in (words, legend.note) if w)


def _with_strip(image: np.ndarray, caption: str | None, legend: Legend | None, lut: np.ndarray) -> np.ndarray:
    width = image.shape[1]
    size = strip_font_size(width)
    font = _font(size)
    line = round(size * 1.45)
    rows = (1 if caption else 0) + (1 if legend else 0)
    canvas = Image.new("RGB", (width, image.shape[0] + rows * line + 4), (0, 0, 0))
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = image.shape[0] + 2
    pad = max(3, size // 4)
    if caption:
        draw.text((pad, y + (line - size) // 2), _fit_text(draw, caption, font, width - 2 * pad), fill=(255, 255, 255),
                  font=font)
        y += line
    if legend:
        _draw_legend(canvas, draw, legend, lut, font, size, (pad, y, width - pad, y + line))
    return np.asarray(canvas)


def _draw_legend(canvas, draw, legend: Legend, lut, font, size, box) -> None:
    """[left] [colorbar] [right]  words: the bar takes what the labels leave, within 45% of the width."""
    x0, y0, x1, y1 = box
    left, right, words = legend_labels(legend)
    gap = max(4, size // 3)
    lw, rw = draw.textlength(left, font=font), draw.textlength(right, font=font)
    ww = draw.textlength(words, font=font) if words else 0
    total = x1 - x0
    bar = int(min(0.45 * total, total - lw - rw - 3 * gap - ww - gap))
    if bar < 3 * size:  # too narrow for the words: drop them
        words, ww = "", 0
        bar = int(min(0.6 * total, total - lw - rw - 2 * gap))
    bar = max(bar, 8)
    text_y = y0 + (y1 - y0 - size) // 2
    draw.text((x0, text_y), left, fill=(255, 255, 255), font=font)
    bx = x0 + int(lw) + gap
    bh = max(6, round(size * 0.8))
    by = y0 + (y1 - y0 - bh) // 2
    ramp = lut[np.linspace(0, 255, bar).round().astype(np.uint8)]
    canvas.paste(Image.fromarray(np.repeat(ramp[None], bh, axis=0)), (bx, by))
    draw.rectangle((bx - 1, by - 1, bx + bar, by + bh), outline=(160, 160, 160))
    if legend.mode == "all":  # mark 0, the white middle
        mid = bx + bar // 2
        draw.line((mid, by, mid, by + bh - 1), fill=(90, 90, 90))
    draw.text((bx + bar + gap, text_y), right, fill=(255, 255, 255), font=font)
    if words:
        draw.text((bx + bar + 2 * gap + int(rw), text_y), words, fill=(200, 200, 200), font=font)


def _fit_text(draw, text: str, font, width: float) -> str:
    while len(text) > 4 and draw.textlength(text, font=font) > width:
        text = text[:-2].rstrip() + "…" if not text.endswith("…") else text[:-2] + "…"
    return text


@lru_cache(maxsize=16)
def _font(size: int = 12):
    return ImageFont.load_default(size=size)


# ---------------------------------------------------------------------------------------------- plots
def line_plot(series: dict[str, list[float]], title: str, xlabel: str, ylabel: str,
              x: list[float] | None = None, auc: bool = False) -> bytes:
    """A PNG (bytes) of one line per named series; x defaults to evenly spaced points on [0, 1]. ``auc``: each
    legend entry ends with the area under its line (trapezoid rule over x), e.g. "gradcam (AUC 0.213)"."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    labels = []
    for name, ys in series.items():
        xs = x if x is not None else [i / max(1, len(ys) - 1) for i in range(len(ys))]
        labels.append(f"{name} (AUC {area(xs, ys):.3f})" if auc else name)
        ax.plot(xs, ys, label=labels[-1], linestyle="--" if name == "random" else "-")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    # the legend's entries also go in a PNG text chunk ("Legend"), for scripts and tests
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Title": title, "Legend": " | ".join(labels)})
    return buf.getvalue()


def area(xs: list[float], ys: list[float]) -> float:
    """The area under a polyline (trapezoid rule)."""
    return float(sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2.0 for i in range(len(ys) - 1)))
