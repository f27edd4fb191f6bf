"""What the packed sinks (``parquet``, ``webdataset``) share: rows buffered in memory by the writer threads, part
files under ``OUT/FOLDER/`` written under a temporary name and renamed once whole, and the manifest's locations.

A part is ``OUT/FOLDER/part-<I>-of-<N>-<RUN>-<NNNNN>.<ext>``: the shard (``00000-of-00001`` without shards, as in
the journals' names), the run (when it started, in hexadecimal nanoseconds, so that names sort in the order runs
started and never repeat) and the part's number within the run. A manifest record says where its row is:
``npy`` and ``overlay`` are ``FOLDER/PART#WHERE`` (the part's path relative to OUT, then where inside it: a row
number, a tar member), ``overlay`` None with ``--no-overlays``.

Life of a row: ``write`` (a writer thread) encodes the map (and draws and encodes the overlay) and appends the row
to a buffer under a lock. At the writer's checkpoint after a batch (the main thread), once ``flush_rows`` rows or
``flush_bytes`` are buffered, every queued write is waited for and the buffer goes into the open part (a row group,
tar members). A part is closed at the first flush that takes it past ``part_rows`` rows or ``part_bytes``, and at
the end of the run: finished under its temporary name, fsync'ed, its records journaled, then renamed. So

- no part ever looks whole before it is (a kill leaves only ``.part-*.part`` temporary files, never read);
- a record is journaled ``ok`` only once its row is in a finished part; a kill -9 between the journal and the
  rename leaves records whose part is missing, which ``complete`` refuses, so they are redone;
- a kill -9 loses the rows of the open part (up to ``part_rows`` / ``part_bytes`` of work); SIGTERM, SIGHUP and
  Ctrl-C close the part first and lose nothing (unless one arrives while a part is being written: that part is
  dropped, and its rows are redone by the next run).

Rows are never rewritten: a map redone later (``--overwrite``, changed settings, a replaced image) or pruned leaves
its old row in its old part, and the manifest names the current one.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from . import _FILE_MODE, _safe_join, journal, png_bytes
from .sinks import Sink

MiB = 1 << 20
RENDERED = "overlays"  # OUT/overlays/METHOD/KEY.png: the overlays `salcli render` draws for a packed run
_LOCATION = re.compile(r"([a-z]+)/(part-[0-9a-z-]+\.[a-z]+)#(.+)", re.S)


def stored(saliency, dtype) -> np.ndarray:
    """A map as the packed formats store it: a C-ordered little-endian copy (never a view) in ``dtype``
    (float32 or float16); ``.tobytes()`` is the parquet ``map`` column, ``.dtype.name`` its ``map_dtype``."""
    return np.array(saliency, dtype=np.dtype(dtype).newbyteorder("<"), order="C", copy=True)


@dataclass
class Row:
    record: dict[str, Any]
    map: np.ndarray  # (H, W) in the sink's dtype, little-endian
    png: bytes | None  # the overlay, None with --no-overlays

    @property
    def nbytes(self) -> int:
        return self.map.nbytes + len(self.png or b"")


@dataclass
class Part:
    """The part being filled: its temporary file, its final path, what it holds so far."""

    tmp: Path
    final: Path
    handle: Any = None  # the subclass's writer (a ParquetWriter, a TarFile)
    rows: int = 0
    bytes: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            if self.handle is not None:
                self.handle.close()
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)


class Packed(Sink):
    """A sink that packs rows into part files. Subclasses set ``folder``, ``suffix`` and the limits, and write
    and read their format: ``_start``, ``_append``, ``_finish``, ``_located``, ``_valid``, ``_read_map``,
    ``_read_png``."""

    buffered = True
    folder: ClassVar[str] = ""
    suffix: ClassVar[str] = ""
    flush_rows: ClassVar[int] = 1_000
    flush_bytes: ClassVar[int] = 64 * MiB
    part_rows: ClassVar[int | None] = None
    part_bytes: ClassVar[int] = 256 * MiB

    def __init__(self, out: Path, **options: Any) -> None:
        super().__init__(out, **options)
        self._lock = threading.Lock()  # the buffer, filled by the writer threads
        self._rows: list[Row] = []
        self._bytes = 0
        self._part: Part | None = None
        self._run = f"{time.time_ns():016x}"
        self._parts = 0
        self._seen: set[str] = set()  # parts found on disk (a part, once renamed into place, stays whole)
        self._reading = threading.Lock()
        self._cache: OrderedDict[Any, Any] = OrderedDict()  # what the reader of the format keeps (a few entries)

    # -- writing (the writer threads, then the main thread)
    def fields(self, method: str, key: str) -> dict[str, str | None]:
        return {"npy": None, "overlay": None}  # known when the row is placed in a part (``flush``)

    def write(self, record: dict[str, Any], saliency: np.ndarray, render: Callable[[], np.ndarray]) -> None:
        data = stored(saliency, self.map_dtype)
        row = Row(record, data, png_bytes(render()) if self.overlays else None)
        with self._lock:
            self._rows.append(row)
            self._bytes += row.nbytes

    def discard(self, record: dict[str, Any]) -> None:
        pass  # a failed write buffered nothing; rows in parts are never rewritten (the manifest stops naming them)

    def full(self) -> bool:
        with self._lock:
            return len(self._rows) >= self.flush_rows or self._bytes >= self.flush_bytes

    def flush(self, done: Callable[[list[dict[str, Any]], str | None], None], final: bool = False) -> None:
        """Move the buffered rows into the open part; close the part when it is full or ``final`` (see the
        module's docstring; ``done`` is the writer's: it journals the records it is given)."""
        with self._lock:
            rows, self._rows, self._bytes = self._rows, [], 0
        if rows and not self._fill(rows, done):
            return
        part = self._part
        if part is not None and (final or part.bytes >= self.part_bytes
                                 or (self.part_rows is not None and part.rows >= self.part_rows)):
            self._part = None
            self._close(part, done)

    def _fill(self, rows: list[Row], done) -> bool:
        try:
            part = self._part = self._part or self._open()
        except Exception as exc:  # noqa: BLE001 - OUT/FOLDER cannot be written: these rows fail, not the run
            done([row.record for row in rows], f"{type(exc).__name__}: {exc}")
            return False
        located = [self._located(part, part.rows + i, row) for i, row in enumerate(rows)]
        part.records += located
        part.rows += len(rows)
        part.bytes += sum(row.nbytes for row in rows)
        return self._guard(part, done, lambda: self._append(part, rows, located))

    def _close(self, part: Part, done) -> None:
        def finish() -> None:
            self._finish(part)
            fd = os.open(part.tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        if not self._guard(part, done, finish):
            return
        try:
            done(part.records, None)  # journaled before the rename: see the module's docstring
            os.chmod(part.tmp, _FILE_MODE)
            os.replace(part.tmp, part.final)
        except BaseException:
            part.discard()
            raise
        self._seen.add(part.final.name)

    def _guard(self, part: Part, done, step: Callable[[], None]) -> bool:
        """Run a step of writing ``part``; when it fails, drop the part: its records are failed (an error) or, on
        an interruption, left unjournaled (redone by the next run). False when the part was dropped."""
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - a full disk fails this part's records, not the run
            self._part = None
            part.discard()
            done(part.records, f"{type(exc).__name__}: {exc}")
            return False
        except BaseException:
            self._part = None
            part.discard()
            raise
        return True

    def _open(self) -> Part:
        name = f"part-{journal.tag(self.shard)}-{self._run}-{self._parts:05d}{self.suffix}"
        self._parts += 1
        final = self.out / self.folder / name
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=final.parent)
        os.close(fd)
        part = Part(Path(tmp), final)
        try:
            self._start(part)
        except BaseException:
            part.discard()
            raise
        return part

    def _location(self, part: Part, where: str) -> str:
        return f"{self.folder}/{part.final.name}#{where}"

    # -- reading (records read back from the manifest: a location must name a part of this sink in OUT/FOLDER)
    def _where(self, location: Any) -> tuple[Path, str] | None:
        match = _LOCATION.fullmatch(location) if isinstance(location, str) else None
        if match is None or match[1] != self.folder or not match[2].endswith(self.suffix):
            return None
        return self.out / self.folder / match[2], match[3]

    def _exists(self, path: Path) -> bool:
        if path.name in self._seen:
            return True
        if path.is_file():
            self._seen.add(path.name)
            return True
        return False

    def complete(self, record: dict[str, Any]) -> bool:
        where = self._where(record.get("npy"))
        if where is None or not self._valid(record, where[1], "npy"):
            return False
        if record.get("overlay") is not None:
            overlay = self._where(record["overlay"])
            if overlay is None or overlay[0] != where[0] or not self._valid(record, overlay[1], "overlay"):
                return False
        return self._exists(where[0])

    def read_map(self, record: dict[str, Any]) -> np.ndarray:
        where = self._where(record.get("npy"))
        if where is None:
            raise ValueError(f"{record.get('npy')!r} names no row of a {self.name} part in {self.folder}/")
        return self._read_map(*where).astype(np.float32)  # float32 as stored, or float16 upcast

    def overlay_link(self, record: dict[str, Any]) -> str | None:
        """The overlay ``salcli render`` drew into OUT for this record (its ``rendered``: ``overlays/METHOD/KEY.png``),
        when the file is there; the overlay in the part (if any) cannot be linked."""
        rendered, method, image = record.get("rendered"), record.get("method"), record.get("image")
        if not isinstance(method, str) or not isinstance(image, str) or rendered != f"{RENDERED}/{method}/{image}.png":
            return None
        try:
            return rendered if _safe_join(self.out, rendered).is_file() else None
        except ValueError:
            return None

    def overlay_png(self, record: dict[str, Any]) -> bytes | None:
        where = self._where(record.get("overlay"))
        return None if where is None else self._read_png(*where)

    def _cached(self, key: Any, load: Callable[[], Any], keep: int = 4) -> Any:
        """A reader's cache of the last few parts' indexes or row groups (maps are read in manifest order, so
        the rows of one part come together)."""
        with self._reading:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        value = load()
        with self._reading:
            self._cache[key] = value
            while len(self._cache) > keep:
                self._cache.popitem(last=False)
        return value

    # -- the format
    def _start(self, part: Part) -> None:
        raise NotImplementedError

    def _append(self, part: Part, rows: list[Row], located: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def _finish(self, part: Part) -> None:
        part.handle.close()

    def _located(self, part: Part, index: int, row: Row) -> dict[str, Any]:
        """The row's record with ``npy`` and ``overlay`` saying where it is (``index``: its row in the part)."""
        raise NotImplementedError

    def _valid(self, record: dict[str, Any], where: str, field: str) -> bool:
        """Whether ``where`` (after the ``#``) is a well-formed place for ``record``'s ``field``."""
        raise NotImplementedError

    def _read_map(self, path: Path, where: str) -> np.ndarray:
        raise NotImplementedError

    def _read_png(self, path: Path, where: str) -> bytes | None:
        raise NotImplementedError
