"""Output sinks: where a run's maps and overlays go. One module per format, registered by name.

A sink is a small class registered with ``@register("name")`` in a module of this package; every module here
is imported when the package is, so adding a format is one file (plus its test). ``OutputWriter`` (in
``salcli.outputs``) drives the sink while a run writes; ``outputs.open_sink(OUT)`` gives the sink of a finished
run (run.json's ``format``), and ``report``/``evaluate`` read maps and overlays only through it.

The interface, for a sink ``S`` with ``s = S(out)`` (a finished run's, to read) or ``s = S(out, shard=(I, N),
overlays=False, map_dtype="float16")`` (a run's, to write: ``--shard``, ``--no-overlays``, ``--map-dtype``):

- ``name`` (set by ``register``) and ``help`` (one line for ``--format``'s help): class attributes.
- ``S.require() -> None``: raise UsageError saying what to install when the sink's libraries are missing
  (called when the options are checked, before any work).
- ``s.fields(method, key) -> {field: str | None}``: what the sink puts in the manifest record of image ``key``
  (its relative path) and ``method``. It always holds ``npy`` and ``overlay`` (paths relative to OUT for
  ``files``; a packed sink says where inside its part files). A failed write sets these fields to None.
- ``s.write(record, saliency, render) -> None``: store the map ``saliency`` (H, W) float32, or a layer's (h, w)
  when ``record`` says ``upsample`` (``--layer-maps native``), as it is (in ``s.map_dtype``)
  and, when ``s.overlays``, the overlay ``render()`` (H', W', 3) uint8 of ``record`` (which already holds
  ``fields``; without overlays ``render`` is never called and ``overlay`` is None). Called from several writer
  threads at once; whole or nothing: on an exception nothing of this record may look complete.
- ``s.discard(record) -> None``: remove whatever a failed write of ``record`` may have left; no error if none.
- ``s.complete(record) -> bool``: whether ``record``'s map and overlay are all there, so resume may skip it (a
  record whose ``overlay`` is None needs none). The record is data read back from the manifest: never look
  outside OUT because of it.
- ``s.read_map(record) -> ndarray``: the map as stored, float32, bit for bit what ``write`` was given (a float16
  map comes back upcast to float32): (H, W), or a layer's (h, w) when the record says ``upsample``.
- ``s.load_map(record) -> ndarray`` (given): ``read_map`` at the input's (H, W) (``maps.at_input``), what every
  reader (evaluate, report, render) takes.
- ``s.overlay_link(record) -> str | None``: a path relative to OUT that a browser can show for the report's
  ``<img>``; None when the sink keeps no browsable overlay file for it or the file is missing.
- ``s.overlay_png(record) -> bytes | None``: the overlay's PNG bytes when the sink packs them (the report copies
  them out to ``OUT/report_files/``); None by default.
- ``s.close() -> None``: called once after every write has returned and the last ``flush``.

A packed sink (``buffered = True``: ``outputs.packed.Packed``) keeps the rows ``write`` gave it until it writes a
part file, so a record is not whole when ``write`` returns. The writer then journals a record only when the sink
hands it back: ``s.full()`` says a part's worth is buffered; ``s.flush(done, final)`` (main thread, after every
write has returned) writes the buffered rows, and for each part file it finishes calls ``done(records, None)``
with the records located in it (``npy``/``overlay`` filled in) *before* renaming the part into place, or
``done(records, message)`` when the part could not be written. A kill between the two leaves journaled records
whose part is missing: ``complete`` says no, and the rows are redone.
- Optional, once per image: ``s.write_picture(key, picture)`` stores the original picture scaled down for display
  (uint8 (h, w, 1 or 3)), ``s.picture_link(key)`` gives a path relative to OUT for the report's original column
  (None: not kept), ``s.discard_picture(key)`` removes it. The base class keeps no pictures.

A sink imports heavy libraries (pyarrow, ...) inside its methods, not at the top of its module: this package is
imported by ``salcli report`` and ``salcli --help``, which must stay light.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from ...registry import Registry, discover


class Sink(ABC):
    """Base class: see the package docstring for the contract of each method."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    buffered: ClassVar[bool] = False  # a packed sink: records are whole once ``flush`` hands them back

    def __init__(self, out: Path, *, shard: tuple[int, int] | None = None, overlays: bool = True,
                 map_dtype: str = "float32") -> None:
        self.out, self.shard, self.overlays, self.map_dtype = out, shard, overlays, np.dtype(map_dtype)

    @classmethod
    def require(cls) -> None:
        pass

    @abstractmethod
    def fields(self, method: str, key: str) -> dict[str, str | None]: ...

    @abstractmethod
    def write(self, record: dict[str, Any], saliency: np.ndarray, render: Callable[[], np.ndarray]) -> None: ...

    @abstractmethod
    def discard(self, record: dict[str, Any]) -> None: ...

    @abstractmethod
    def complete(self, record: dict[str, Any]) -> bool: ...

    @abstractmethod
    def read_map(self, record: dict[str, Any]) -> np.ndarray: ...

    def load_map(self, record: dict[str, Any]) -> np.ndarray:
        from ...maps import at_input  # NumPy only (render imports no torch)

        return at_input(self.read_map(record), record)

    def overlay_link(self, record: dict[str, Any]) -> str | None:
        return None

    def overlay_png(self, record: dict[str, Any]) -> bytes | None:
        return None

    def full(self) -> bool:
        return False

    def flush(self, done: Callable[[list[dict[str, Any]], str | None], None], final: bool = False) -> None:
        pass

    def write_picture(self, key: str, picture: np.ndarray) -> None:
        pass

    def picture_link(self, key: str) -> str | None:
        return None

    def discard_picture(self, key: str) -> None:
        pass

    def close(self) -> None:
        pass


REGISTRY: Registry = Registry("output format")


def register(name: str):
    """Class decorator: ``@register("files")``; a duplicate name is an error."""
    return REGISTRY.register(name)


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str) -> type[Sink]:
    return REGISTRY.lookup(name)


discover(__name__, __path__)  # every module here registers its sinks: a new format is one file
