"""Image discovery, safe decoding and preprocessing, and a Dataset that records bad files instead of raising.

Decoding follows Pillow's traps: ``exif_transpose``; palette and alpha images composited onto black; CMYK
and other modes converted to RGB; 16-bit images scaled (not clipped) to 8 bits; decompression bombs refused.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from . import geometry
from .config import Preprocess
from .errors import UsageError, setting

EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # Pillow's own warning threshold


@dataclass(frozen=True)
class ImageItem:
    path: Path  # where to read it
    key: str  # relative path with '/' separators: output names and random seeds derive from it


class ImageError(Exception):
    """A file that cannot be used as an image; the message says why."""


# ---------------------------------------------------------------------------------------------- discovery
def discover(inputs: list[Path] | tuple[Path, ...], exclude: Path | None = None, *,
             listed: bool = False, root: Path | None = None) -> list[ImageItem]:
    """Image files under ``inputs`` (files and folders, recursive), sorted by relative path.

    Keys are relative to the deepest folder holding every input (a folder input counts as itself; a file
    input counts as the folder it is named in, a symlinked file included), so one folder gives paths inside
    it and several inputs keep their distinguishing folder names. A symlinked folder is visited once; a
    symlink cycle is not followed. The folder ``exclude`` (the output folder) is never searched, so a run's
    own overlays are not taken as inputs by the next run.

    ``listed``: the inputs come from a file list (``read_file_list``): a listed file that is missing, or whose
    extension is not an image's, is kept (its decoding fails and becomes that image's error record) instead
    of stopping the run; its key is computed as for a file given on the command line.

    ``root``: the folder keys are relative to, instead of the deepest common one, so that the same file gets
    the same key whatever else is on the command line (``find | xargs salcli explain --root DIR`` on two
    nights); every input must be inside it.
    """
    if not inputs:
        raise UsageError("give at least one image file or folder")
    parents: dict[Path, Path] = {}  # a file's folder as named -> resolved (one syscall per folder, not per file)

    def root_of(p: Path) -> Path:
        if p.is_dir():
            return p.resolve()
        if p.parent not in parents:
            parents[p.parent] = p.parent.resolve()
        return parents[p.parent]

    roots = []
    for p in inputs:
        if not listed and not p.exists():
            raise UsageError(f"input not found: {p}")
        roots.append(root_of(p))
    base = Path(os.path.commonpath([str(r) for r in roots]))
    if root is not None:
        base = root.resolve()
        outside = [str(p) for p, r in zip(inputs, roots) if not r.is_relative_to(base)]
        if outside:
            raise UsageError(f"{outside[0]} is not inside {setting('root')} {root}; keys are paths relative to it")
    files: dict[Path, Path] = {}  # resolved file -> path as found
    direct: dict[Path, str] = {}  # listed files -> key
    seen_dirs: set[Path] = {exclude.resolve()} if exclude is not None else set()
    for p in inputs:
        if p.is_dir():
            for found in _walk(p, seen_dirs):
                files.setdefault(found.resolve(), found)
        elif listed:
            direct.setdefault(p, (root_of(p).relative_to(base) / p.name).as_posix())
        elif p.suffix.lower() in EXTENSIONS:
            files.setdefault(p.resolve(), p)
        else:
            raise UsageError(f"{p} is not an image file (extensions: {', '.join(sorted(EXTENSIONS))})")
    items = {}
    for p, key in direct.items():
        items.setdefault(key, ImageItem(p, key))
    for resolved, found in files.items():
        key = _key(found, inputs, base)
        items.setdefault(key, ImageItem(found, key))
    return [items[k] for k in sorted(items)]


def read_file_list(source: Path | str) -> list[Path]:
    """The paths listed in ``source`` (``-``: standard input), one per line; blank lines and lines starting
    with ``#`` are ignored, surrounding spaces removed. Relative paths are relative to the current folder, as
    on the command line. Pass the result to ``discover(paths, exclude, listed=True)``."""
    import sys

    if str(source) == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError(f"the list {setting('files_from')} {source} was not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the list {setting('files_from')} {source}: {exc}") from None
    paths = [Path(line.strip()) for line in text.splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    if not paths:
        raise UsageError(f"the list {setting('files_from')} {source} names no files")
    return paths


def _walk(root: Path, seen_dirs: set[Path]):
    real = root.resolve()
    if real in seen_dirs:
        return
    seen_dirs.add(real)
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=True):
            yield from _walk(path, seen_dirs)
        elif entry.is_file(follow_symlinks=True) and path.suffix.lower() in EXTENSIONS:
            yield path


def _key(found: Path, inputs, base: Path) -> str:
    """Relative path of ``found`` under ``base``, following the input it was found through (keeps
    symlinked folder names as the user sees them)."""
    for p in inputs:
        start = p if p.is_dir() else p.parent
        try:
            rel_in = found.relative_to(start)
        except ValueError:
            continue
        prefix = start.resolve().relative_to(base)
        return (prefix / rel_in).as_posix()
    return found.name


def shard(items: list[ImageItem], index: int, count: int) -> list[ImageItem]:
    """The ``index``-th of ``count`` disjoint slices, in the items' order. An image's slice depends only on its
    key (``shard_of``), so adding or removing a file while shards run moves that file alone."""
    return [item for item in items if shard_of(item.key, count) == index]


def shard_of(key: str, count: int) -> int:
    """The slice of ``count`` that the image ``key`` belongs to: the first 8 bytes of sha256(key), big-endian,
    modulo ``count`` (stable across runs, machines and Python versions, unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % count


# ---------------------------------------------------------------------------------------------- decoding
def decode(path: Path) -> Image.Image:
    """Open, fully decode and normalize an image to mode ``RGB`` or ``L``; raises ``ImageError``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ImageError(f"refused: {im.width}x{im.height} pixels is over the decompression-bomb "
                                     f"limit of {MAX_PIXELS:,}")
                im.load()
                im = ImageOps.exif_transpose(im)
                return _to_standard_mode(im)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"refused as a decompression bomb: {exc}") from None
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except IsADirectoryError:
        raise ImageError("a folder, not an image file") from None
    except Image.UnidentifiedImageError:
        size = path.stat().st_size if path.exists() else 0
        what = "an empty file" if size == 0 else "not an image Pillow can read"
        raise ImageError(f"cannot decode: {what}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"cannot decode ({exc}); the file may be truncated or corrupt") from None


def _to_standard_mode(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode in ("RGB", "L"):
        return im.copy()
    if mode == "1":
        return im.convert("L")
    if mode.startswith("I;16") or mode == "I" or mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if mode == "F":
            top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0 if arr.max(initial=0) <= 255 else 65535.0
        elif mode == "I":
            top = 255.0 if arr.max(initial=0) <= 255 else 65535.0
        else:
            top = 65535.0
        return Image.fromarray(np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8), "L")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    if im.mode in ("LA", "La"):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "RGBa"):
        background = Image.new("RGBA", im.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, im.convert("RGBA")).convert("RGB")
    return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX ...


# ---------------------------------------------------------------------------------------------- preprocessing
def prepare(im: Image.Image, pre: Preprocess) -> np.ndarray:
    """Resize the short side to ``pre.resize`` (antialiased, ``pre.interpolation``), center-crop ``pre.crop``, convert to
    ``pre.channels``: returns uint8 (crop, crop, channels), the picture the model sees before normalization."""
    im = im.convert("L" if pre.channels == 1 else "RGB")
    geom = geometry.geometry(im.width, im.height, pre.resize, pre.crop)  # the numbers overlays map back with
    if geom.resized != im.size:
        im = im.resize(geom.resized, RESAMPLE[pre.interpolation], reducing_gap=None)
    im = im.crop((geom.left, geom.top, geom.left + pre.crop, geom.top + pre.crop))
    arr = np.asarray(im, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def normalize(pixels: np.ndarray, pre: Preprocess) -> np.ndarray:
    """uint8 (H, W, C) -> float32 (C, H, W), ``(x / 255 - mean) / std``: ``normalize_batch`` on one image."""
    import torch

    pixels = np.require(pixels, requirements=("C", "W"))  # torch wants writable memory (a decoded image is not)
    return normalize_batch(torch.from_numpy(pixels)[None], pre)[0].contiguous().numpy()


def normalize_batch(pixels, pre: Preprocess):
    """uint8 torch tensor (B, H, W, C) -> float32 (B, C, H, W), ``(x / 255 - mean) / std`` in float32, on the
    pixels' device and in torch's threads. A GPU receives uint8 pixels, a quarter of the bytes of float32. The
    result keeps the pixels' channels-last memory layout."""
    import torch

    x = pixels.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(pre.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def picture(im: Image.Image, cap: int) -> np.ndarray:
    """The decoded picture for display: scaled down (antialiased, never up) to at most ``cap`` pixels on its long
    side, in its own mode (RGB or L): uint8 (h, w, 3 or 1). Overlays on the original are drawn on it, so a batch
    holds at most ``cap``² pixels per image whatever the size of the files."""
    size = geometry.capped_size(im.width, im.height, cap)
    if size != im.size:
        im = im.resize(size, Image.BICUBIC, reducing_gap=3.0)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


class ImageDataset:
    """Items are dicts: ``index``, ``key``, and either ``pixels`` or ``error``.

    With ``display`` (a size cap, ``--overlay-size``), a good item also holds ``picture``, the original scaled to
    fit the cap (``picture()``), and ``size``, the original's (width, height): what an overlay on the original
    needs. The model's input (``pixels``) is the same either way.

    A file that cannot be decoded becomes an error record; it never raises, so a DataLoader worker survives.
    """

    def __init__(self, items: list[ImageItem], pre: Preprocess, display: int | None = None) -> None:
        self.items, self.pre, self.display = items, pre, display

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        extra = {}
        try:
            im = decode(item.path)
            pixels = prepare(im, self.pre)
            if self.display is not None:
                extra = {"picture": picture(im, self.display), "size": im.size}
        except ImageError as exc:
            return {"index": index, "key": item.key, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - any other failure is still this one file's failure
            return {"index": index, "key": item.key, "error": f"{type(exc).__name__}: {exc}"}
        return {"index": index, "key": item.key, "pixels": pixels, **extra}


def collate(records: list[dict]) -> dict:
    """Stack the good records' pixels into one uint8 tensor (B, H, W, C) and pass the failed records through; an
    all-bad batch has ``pixels`` None. Each good record keeps its ``picture`` and ``size`` when it has them
    (pictures differ in size: they are not stacked). Normalization happens on the batch, on the model's device
    (``normalize_batch``)."""
    import torch

    good = [r for r in records if "error" not in r]
    stacked = np.stack([r["pixels"] for r in good]) if good else None
    return {
        "good": [{**{k: v for k, v in r.items() if k in ("picture", "size")},
                  "index": r["index"], "key": r["key"], "pixels": stacked[i]} for i, r in enumerate(good)],
        "pixels": torch.from_numpy(stacked) if good else None,
        "errors": [r for r in records if "error" in r],
    }
