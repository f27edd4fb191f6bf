"""The ``webdataset`` sink: tar shards ``OUT/wds/part-<I>-of-<N>-<RUN>-<NNNNN>.tar`` in WebDataset's layout.

One sample per image, its members together: ``KEY.METHOD.npy`` (the map, a NumPy file of float32 or float16),
``KEY.METHOD.png`` (its overlay; none with ``--no-overlays``) for each method computed, and ``KEY.json``
(``{"image": the relative path, "records": {METHOD: the manifest record}}``). WebDataset's key is a member's
name up to the first dot of its base name, so the image's relative path is written with ``%``-escapes for ``%``,
``.`` and every byte outside ``A-Z a-z 0-9 _ - ~ /`` (``urllib.parse.quote``, dots too): ``Ankle boot/t10k-1.png``
is the key ``Ankle%20boot/t10k-1%2Epng``, and ``urllib.parse.unquote`` gives it back (``wds_key``, ``image_of``).
Slashes stay: a key may hold folders, as in WebDataset's own tars.

A manifest record's ``npy`` is ``wds/PART#KEY.METHOD.npy`` and its ``overlay`` ``wds/PART#KEY.METHOD.png``. A shard
is closed at the first flush past 1 GiB (Python's ``tarfile``, PAX headers, no compression). The methods of an
image computed in one run are one sample; a method added by a later run is a sample of the same key in a later
shard.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_to_bytes

import numpy as np

from ..packed import MiB, Packed, Part, Row
from . import register


def wds_key(image: str) -> str:
    """The WebDataset key of an image's relative path: no dot, reversible (``image_of``)."""
    return quote(image.encode("utf-8", "surrogateescape"), safe="/").replace(".", "%2E")


def image_of(key: str) -> str:
    return unquote_to_bytes(key).decode("utf-8", "surrogateescape")


def member(image: str, method: str, ext: str) -> str:
    return f"{wds_key(image)}.{method}.{ext}"


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


@register("webdataset")
class WebDataset(Packed):
    help = "tar shards OUT/wds/part-*.tar of KEY.METHOD.npy, KEY.METHOD.png and KEY.json per image (WebDataset)"
    folder, suffix = "wds", ".tar"
    part_bytes = 1024 * MiB

    # -- writing
    def _start(self, part: Part) -> None:
        part.handle = tarfile.open(part.tmp, "w", format=tarfile.PAX_FORMAT)

    def _append(self, part: Part, rows: list[Row], located: list[dict[str, Any]]) -> None:
        samples: dict[str, list[tuple[Row, dict[str, Any]]]] = {}  # by image, in the order they came
        for row, rec in zip(rows, located):
            samples.setdefault(rec["image"], []).append((row, rec))
        now = int(time.time())
        for image, items in samples.items():
            for row, rec in items:
                self._add(part, member(image, rec["method"], "npy"), npy_bytes(row.map), now)
                if row.png is not None:
                    self._add(part, member(image, rec["method"], "png"), row.png, now)
            doc = {"image": image, "records": {rec["method"]: rec for _, rec in items}}
            text = json.dumps(doc, ensure_ascii=False, allow_nan=False, default=str)
            self._add(part, f"{wds_key(image)}.json", text.encode("utf-8", "surrogateescape"), now)

    @staticmethod
    def _add(part: Part, name: str, data: bytes, mtime: int) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), mtime, 0o644
        part.handle.addfile(info, io.BytesIO(data))

    def _located(self, part: Part, index: int, row: Row) -> dict[str, Any]:
        image, method = row.record["image"], row.record["method"]
        return {**row.record, "npy": self._location(part, member(image, method, "npy")),
                "overlay": self._location(part, member(image, method, "png")) if row.png is not None else None}

    # -- reading
    def _valid(self, record: dict[str, Any], where: str, field: str) -> bool:
        image, method = record.get("image"), record.get("method")
        if not isinstance(image, str) or not isinstance(method, str):
            return False
        return where == member(image, method, "npy" if field == "npy" else "png")

    def _member(self, path: Path, name: str) -> bytes:
        def index() -> dict[str, tuple[int, int]]:
            try:
                with tarfile.open(path, "r:") as tar:
                    return {m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.isfile()}
            except tarfile.TarError as exc:
                raise ValueError(f"{path.name}: {exc}") from None

        found = self._cached((path, "index"), index).get(name)
        if found is None:
            raise ValueError(f"{path.name} holds no member {name}")
        offset, size = found
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(size)

    def _read_map(self, path: Path, where: str) -> np.ndarray:
        return np.load(io.BytesIO(self._member(path, where)), allow_pickle=False)

    def _read_png(self, path: Path, where: str) -> bytes | None:
        return self._member(path, where)
