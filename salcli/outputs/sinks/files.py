"""The ``files`` sink: one ``OUT/METHOD/KEY.npy`` (the raw map) and one ``OUT/METHOD/KEY.png`` (its overlay).

With ``--no-overlays`` only the ``.npy`` is written (an overlay left by an earlier run of the image is removed, so
none stays beside a newer map); with ``--map-dtype float16`` the ``.npy`` holds float16."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ... import outputs  # the module, not its functions: write_npy/write_png are looked up at each call
from . import Sink, register


def npy_rel(method: str, key: str) -> str:
    return f"{method}/{key}.npy"


def png_rel(method: str, key: str) -> str:
    return f"{method}/{key}.png"


PICTURES = "original"  # OUT/original/KEY.jpg: the picture the report shows beside the overlays


def picture_rel(key: str) -> str:
    return f"{PICTURES}/{key}.jpg"


def jpeg_bytes(picture: np.ndarray, quality: int = 90) -> bytes:
    """uint8 (h, w, 1 or 3) -> JPEG bytes (4:4:4, so small and gray pictures stay sharp)."""
    import io

    from PIL import Image

    im = Image.fromarray(picture[:, :, 0] if picture.ndim == 3 and picture.shape[2] == 1 else picture)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


@register("files")
class Files(Sink):
    """A .npy map and a .png overlay per (image, method), under OUT/METHOD/ at the image's relative path."""

    help = ("OUT/METHOD/KEY.npy (float32 map) and OUT/METHOD/KEY.png (overlay) per image and method, "
            "OUT/original/KEY.jpg (the picture) per image")

    def fields(self, method: str, key: str) -> dict[str, str | None]:
        return {"npy": npy_rel(method, key), "overlay": png_rel(method, key) if self.overlays else None}

    def _paths(self, record: dict[str, Any]) -> tuple[Path, Path] | None:
        """(npy, png) inside OUT for the record's image and method; None for a record that would leave OUT."""
        method, key = record.get("method"), record.get("image")
        if not isinstance(method, str) or not isinstance(key, str):
            return None
        try:
            return (outputs._safe_join(self.out, npy_rel(method, key)),
                    outputs._safe_join(self.out, png_rel(method, key)))
        except ValueError:
            return None

    def write(self, record: dict[str, Any], saliency: np.ndarray, render: Callable[[], np.ndarray]) -> None:
        npy = outputs._safe_join(self.out, npy_rel(record["method"], record["image"]))
        png = outputs._safe_join(self.out, png_rel(record["method"], record["image"]))
        outputs.write_npy(npy, saliency, self.map_dtype)
        if not self.overlays:
            png.unlink(missing_ok=True)  # an earlier run's overlay of another map
            return
        try:
            outputs.write_png(png, render())
        except BaseException:
            npy.unlink(missing_ok=True)  # never a lone .npy that looks like half of a pair
            raise

    def discard(self, record: dict[str, Any]) -> None:
        for path in self._paths(record) or ():
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)

    def complete(self, record: dict[str, Any]) -> bool:
        paths = self._paths(record)
        if paths is None:
            return False
        wanted = paths if "overlay" not in record or record["overlay"] is not None else paths[:1]  # --no-overlays
        return all(p.is_file() for p in wanted)

    def read_map(self, record: dict[str, Any]) -> np.ndarray:
        npy = outputs._safe_join(self.out, npy_rel(record["method"], record["image"]))
        saliency = np.load(npy, allow_pickle=False)
        return saliency.astype(np.float32) if saliency.dtype == np.float16 else saliency

    def overlay_link(self, record: dict[str, Any]) -> str | None:
        paths = self._paths(record)
        return png_rel(record["method"], record["image"]) if paths and paths[1].is_file() else None

    def write_picture(self, key: str, picture: np.ndarray) -> None:
        outputs.write_bytes(outputs._safe_join(self.out, picture_rel(key)), jpeg_bytes(picture))

    def picture_link(self, key: str) -> str | None:
        try:
            path = outputs._safe_join(self.out, picture_rel(key))
        except ValueError:
            return None
        return picture_rel(key) if path.is_file() else None

    def discard_picture(self, key: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            outputs._safe_join(self.out, picture_rel(key)).unlink(missing_ok=True)
