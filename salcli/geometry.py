"""Where the model's input came from in the original picture, and where an overlay's pixels come from. Pure numbers.

``images.prepare`` resizes the short side of a W x H picture to ``resize`` and center-crops ``crop`` x ``crop``:

    s = resize / min(W, H);  W' = max(crop, round(W s));  H' = max(crop, round(H s))
    left = (W' - crop) // 2;  top = (H' - crop) // 2

The resampling maps pixel edges linearly (Pillow's convention, pixel centers at +0.5), so pixel (i, j) of a map
at the input resolution covers, in the original's pixel coordinates,

    x in [(left + j) W / W', (left + j + 1) W / W'),   y in [(top + i) H / H', (top + i + 1) H / H').

``Geometry`` holds those numbers for one picture; ``sample_grid`` inverts them for an overlay drawn at another
size (each overlay pixel takes the map pixel its center falls in; outside the crop it takes none).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_SIDE = 224  # overlays of small pictures are upscaled (integer factor, nearest) to at least this short side


@dataclass(frozen=True)
class Geometry:
    """The crop of one picture: the original's ``width`` x ``height``, the resized ``resized`` (W', H'), and the
    crop's top-left corner ``left``, ``top`` and side ``crop`` in resized pixels."""

    width: int
    height: int
    resized: tuple[int, int]
    left: int
    top: int
    crop: int

    @property
    def box(self) -> tuple[float, float, float, float]:
        """The crop as (x0, y0, x1, y1) in the original's pixel coordinates (edges, not centers)."""
        sx, sy = self.width / self.resized[0], self.height / self.resized[1]
        return (self.left * sx, self.top * sy, (self.left + self.crop) * sx, (self.top + self.crop) * sy)

    @property
    def full(self) -> bool:
        """Whether the crop keeps the whole picture (nothing is cut away)."""
        return self.resized == (self.crop, self.crop)


def resized_size(width: int, height: int, resize: int, crop: int) -> tuple[int, int]:
    """(W', H'): the short side scaled to ``resize``, each side at least ``crop`` (``images.prepare``'s rule)."""
    scale = resize / min(width, height)
    return max(crop, round(width * scale)), max(crop, round(height * scale))


def crop_origin(resized: tuple[int, int], crop: int) -> tuple[int, int]:
    """(left, top) of the center crop in the resized picture."""
    return (resized[0] - crop) // 2, (resized[1] - crop) // 2


def geometry(width: int, height: int, resize: int, crop: int) -> Geometry:
    """The crop that ``images.prepare`` takes from a ``width`` x ``height`` picture."""
    resized = resized_size(width, height, resize, crop)
    left, top = crop_origin(resized, crop)
    return Geometry(width, height, resized, left, top, crop)


def capped_size(width: int, height: int, cap: int) -> tuple[int, int]:
    """The picture's size scaled down (never up) so that its long side is at most ``cap``."""
    if max(width, height) <= cap:
        return width, height
    scale = cap / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def display_size(width: int, height: int, cap: int, min_side: int = MIN_SIDE) -> tuple[int, int]:
    """The size an overlay of a ``width`` x ``height`` picture is drawn at: scaled down to fit ``cap`` on the long
    side; a small picture is scaled up by the smallest integer factor that brings its short side to ``min_side``,
    as long as its long side stays within ``cap``."""
    if max(width, height) > cap:
        return capped_size(width, height, cap)
    factor = max(1, min(-(-min_side // min(width, height)), cap // max(width, height)))
    return width * factor, height * factor


def sample_grid(geom: Geometry, display: tuple[int, int], grid: int | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For an overlay of the original drawn at ``display`` (w, h): which map pixel each overlay pixel shows.

    ``grid``: the side of the (square) map being sampled (default the crop; smaller when the map was reduced
    first). Returns (rows (h,), cols (w,), row_inside (h,), col_inside (w,)): overlay pixel (v, u) shows map
    pixel (rows[v], cols[u]) when row_inside[v] and col_inside[u]; otherwise it lies in the cut-away border.
    """
    w, h = display
    n = geom.crop if grid is None else grid
    # overlay pixel center -> original -> resized -> crop -> grid, one axis at a time (the mapping is separable)
    x = (np.arange(w) + 0.5) * (geom.resized[0] / w) - geom.left
    y = (np.arange(h) + 0.5) * (geom.resized[1] / h) - geom.top
    cols = np.floor(x * (n / geom.crop)).astype(np.int64)
    rows = np.floor(y * (n / geom.crop)).astype(np.int64)
    col_in, row_in = (cols >= 0) & (cols < n), (rows >= 0) & (rows < n)
    return np.clip(rows, 0, n - 1), np.clip(cols, 0, n - 1), row_in, col_in


def describe(preprocess) -> dict:
    """run.json's ``geometry``: what it takes to map a map back onto its original picture."""
    return {
        "map_size": [preprocess.crop, preprocess.crop],
        "resize": preprocess.resize,
        "crop": preprocess.crop,
        "interpolation": preprocess.interpolation,
        "rule": "short side scaled to resize: s = resize / min(W, H), W' = max(crop, round(W s)), "
                "H' = max(crop, round(H s)) (antialiased); center crop at left = (W' - crop) // 2, "
                "top = (H' - crop) // 2; map pixel (i, j) covers x in [(left + j) W / W', (left + j + 1) W / W'), "
                "y in [(top + i) H / H', (top + i + 1) H / H') of the original",
        "original_size": "per image: the manifest's width and height",
    }
