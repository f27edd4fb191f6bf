"""Output sinks: where a run's maps and overlays go. One module per format, registered by name.

A sink is a small class registered with ``@register("name")`` in a module of this package; every module here
is imported when the package is, so adding a format is one file (plus its test). ``OutputWriter`` (in
``salcli.outputs``) drives the sink while a run writes; ``outputs.open_sink(OUT)`` gives the sink of a finished
run (run.json's ``format``), and ``report``/``evaluate`` read maps and overlays only through it.

The interface, for a sink ``S`` with ``s = S(out)``:

- ``name`` (set by ``register``) and ``help`` (one line for ``--format``'s help): class attributes.
- ``s.fields(method, key) -> {field: str | None}``: what the sink puts in the manifest record of image ``key``
  (its relative path) and ``method``. It always holds ``npy`` and ``overlay`` (paths relative to OUT for
  ``files``; a packed sink says where inside its part files). A failed write sets these fields to None.
- ``s.write(record, saliency, render) -> None``: store the map ``saliency`` (H, W) float32 and the overlay
  ``render()`` (H', W', 3) uint8 of ``record`` (which already holds ``fields``). Called from several writer
  threads at once; whole or nothing: on an exception nothing of this record may look complete.
- ``s.discard(record) -> None``: remove whatever a failed write of ``record`` may have left; no error if none.
- ``s.complete(record) -> bool``: whether ``record``'s map and overlay are all there, so resume may skip it.
  The record is data read back from the manifest: never look outside OUT because of it.
- ``s.load_map(record) -> ndarray``: the map (H, W) float32, bit for bit what ``write`` was given.
- ``s.overlay_link(record) -> str | None``: a path relative to OUT that a browser can show for the report's
  ``<img>``; None when the sink keeps no browsable overlay file for it or the file is missing.
- ``s.close() -> None``: called once after every write has returned (a packed sink flushes its part files).
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

    def __init__(self, out: Path) -> None:
        self.out = out

    @abstractmethod
    def fields(self, method: str, key: str) -> dict[str, str | None]: ...

    @abstractmethod
    def write(self, record: dict[str, Any], saliency: np.ndarray, render: Callable[[], np.ndarray]) -> None: ...

    @abstractmethod
    def discard(self, record: dict[str, Any]) -> None: ...

    @abstractmethod
    def complete(self, record: dict[str, Any]) -> bool: ...

    @abstractmethod
    def load_map(self, record: dict[str, Any]) -> np.ndarray: ...

    def overlay_link(self, record: dict[str, Any]) -> str | None:
        return None

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
