"""The only package that writes files: atomic writes, the manifest, run.json, resume, and the sinks.

Every file appears whole or not at all: it is written under a temporary name in the same folder, then
renamed. The manifest and run.json are merged under a file lock, so shards writing into one OUT agree.
Where a map and its overlay go is the business of a sink (``outputs/sinks/``, one file per format, chosen by
name): ``OutputWriter`` hands each map to its sink, asks the sink whether an earlier map is complete (resume),
and records the sink's name in run.json as ``format``, so ``open_sink`` later finds the maps of a finished run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import tempfile
import zlib
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

import numpy as np

SCHEMA_VERSION = 1
MANIFEST = "manifest.jsonl"
RUN_JSON = "run.json"
PNG_COMPRESS_LEVEL = 1  # zlib level: Pillow's default 6 is several times slower for little gain on overlays


def _safe_join(out: Path, rel: str) -> Path:
    """OUT / rel, refusing anything that would land outside OUT."""
    parts = PurePosixPath(rel).parts
    if PurePosixPath(rel).is_absolute() or ".." in parts:
        raise ValueError(f"refusing to write outside the output folder: {rel}")
    return out.joinpath(*parts)


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _umask_mode()


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; outputs get what open() would give (0644 under umask 022)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(final: Path, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_npy(final: Path, array: np.ndarray, dtype: Any = np.float32) -> None:
    with atomic_path(final) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array, dtype=dtype), allow_pickle=False)


def write_png(final: Path, image: np.ndarray) -> None:
    write_bytes(final, png_bytes(image))


_PNG_COLOR = {1: 0, 3: 2, 4: 6}  # channels -> PNG color type: grayscale, RGB, RGBA


def png_bytes(image: np.ndarray, level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 -> a PNG file's bytes.

    Every row uses PNG's "Up" filter (the difference to the row above), then zlib at ``level``. Pillow's encoder
    tries all five filters on every row of an RGB image, which costs more than the compression itself at a fast
    level: on a 224x242 overlay of a photo this takes about 2.5 ms against Pillow's 8 ms at the same level, for a
    file of about the same size, and zlib releases the GIL while it compresses, so the writer threads run beside
    the model. (zlib's run-length strategy is faster still on photos but 2.5 times larger on the upscaled
    overlays of small images, whose repeated pixels only the default strategy's matches catch.)
    """
    a = np.ascontiguousarray(image, dtype=np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in _PNG_COLOR or 0 in a.shape:
        raise ValueError(f"cannot write an image of shape {image.shape} as PNG")
    h, w, c = a.shape
    rows = a.reshape(h, w * c)
    raw = np.empty((h, w * c + 1), dtype=np.uint8)
    raw[:, 0] = 2  # filter type Up; the row above the first is zeros, so the first row is stored as is
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])  # uint8 arithmetic wraps modulo 256, as PNG wants

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))

    header = struct.pack(">IIBBBBB", w, h, 8, _PNG_COLOR[c], 0, 0, 0)  # 8 bits, deflate, filter set 0, no interlace
    data = zlib.compress(raw.data, level)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """An exclusive lock on OUT/.salcli.lock for read-merge-write of shared files (filelock: flock on POSIX,
    msvcrt on Windows). A file system without locks (Lustre mounted noflock, NFS nolock) gets none: each shard
    writes its own files, so only run.json's shard table could lose an entry, and ``salcli merge`` rebuilds it."""
    from filelock import FileLock, Timeout

    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / ".salcli.lock"), thread_local=False)
    try:
        lock.acquire(timeout=600)
    except (OSError, NotImplementedError, Timeout):
        yield
        return
    try:
        yield
    finally:
        lock.release()


def read_manifest(out: Path) -> list[dict[str, Any]]:
    """The run's records, sorted by (image, method): the last one of each over OUT/manifest.jsonl and every
    journal in OUT/parts/ (so a sharded run reads whole before ``salcli merge``); a line cut short is ignored."""
    from . import journal

    return [json.loads(line) for line in journal.merged_lines(journal.sources(out, out / MANIFEST))]


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, default=str)


class RecordStore(Mapping):
    """The run's manifest records by (image, method), kept as their JSON lines: a few hundred bytes each instead
    of a dict's few kilobytes, so a run's memory hardly grows with the number of images. Reading a record
    parses its line."""

    def __init__(self) -> None:
        self._lines: dict[tuple[str, str], str] = {}

    def __setitem__(self, key: tuple[str, str], record: dict[str, Any]) -> None:
        self._lines[key] = _dumps(record)

    def __getitem__(self, key: tuple[str, str]) -> dict[str, Any]:
        return json.loads(self._lines[key])

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._lines)

    def __len__(self) -> int:
        return len(self._lines)

    def line(self, key: tuple[str, str]) -> str:
        return self._lines[key]


class OutputWriter:
    """Writes maps and overlays through a sink in a thread pool; keeps the run's manifest records.

    ``sink`` names a registered sink (``sinks.REGISTRY``; default ``files``: the .npy + .png pair); ``overlays``
    and ``map_dtype`` are ``--no-overlays`` and ``--map-dtype``, handed to it.
    ``previous`` maps (image, method) to the last manifest record for resume decisions.

    A record is journaled once its outputs are whole: when the sink's ``write`` returns, or for a packed sink
    (``sink.buffered``) when the part file holding its row is written (``sink.flush``, see ``sinks``).
    """

    def __init__(self, out: Path, threads: int = 2, sink: str = "files", shard: tuple[int, int] | None = None,
                 keys: set[str] | None = None, overlays: bool = True, map_dtype: str = "float32") -> None:
        from . import journal

        self.out, self.shard = out, shard
        # an unknown name fails before anything is created
        self.sink = sinks.get(sink)(out, shard=shard, overlays=overlays, map_dtype=map_dtype)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # read-only, /proc, a path under a file, no permission
            from ..errors import UsageError, setting

            raise UsageError(f"{setting('out')} {out}: cannot be created ({exc.strerror or exc})") from None
        # the last record of every (image, method) of this run's images, from the merged manifest and the parts
        # and every image OUT holds, in the same pass (``gone``)
        self.previous, self._present = journal.scan(journal.sources(out, out / MANIFEST), keys)
        self.records = RecordStore()
        self.journal = journal.Journal(journal.manifest_part(out, shard))
        self._fresh: list[tuple[str, str]] = []  # records of this run not yet in the journal
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="salcli-writer")
        self._pending: list[tuple[Future, dict[str, Any]]] = []

    # -- resume
    def done_before(self, key: str, method: str, settings: str,
                    content: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The earlier record if (key, method) was written whole with the same settings from the same image
        content (``content``: the image file's ``size`` and ``mtime_ns`` now), else None.

        Whole means what the sink says (``Sink.complete``): for ``files``, both files still exist."""
        rec = self.previous.get((key, method))
        if not rec or rec.get("status") not in ("ok", "skipped") or rec.get("settings") != settings:
            return None
        if content is not None and any(rec.get(k) != v for k, v in content.items()):
            return None  # the file was replaced under the same name: redo it
        return rec if self.sink.complete(rec) else None

    def gone(self, keys: set[str]) -> list[str]:
        """Images with records in OUT (merged manifest or parts) that are not among ``keys``, this run's images:
        deleted or moved since. A shard counts only the images its slice would hold."""
        from ..images import shard_of

        found = self._present - keys
        if self.shard is not None:
            found = {k for k in found if shard_of(k, self.shard[1]) == self.shard[0]}
        return sorted(found)

    def prune(self, keys: list[str]) -> int:
        """Remove the outputs of ``keys`` and record a tombstone for each of their (image, method) records, so
        that the merged manifest leaves them out. Returns the number of records pruned."""
        from . import journal

        wanted = set(keys)
        pruned = 0
        for (image, method), rec in journal.latest(journal.sources(self.out, self.out / MANIFEST), wanted).items():
            self.sink.discard(rec)
            self.sink.discard_picture(image)  # and the picture of the report's original column
            self.add({"image": image, "method": method, "status": journal.PRUNED, "settings": rec.get("settings")})
            pruned += 1
        self.checkpoint()
        return pruned

    # -- writing
    def submit(self, record: dict[str, Any], saliency: np.ndarray, render: Callable[[], np.ndarray]) -> None:
        """Queue the map (H, W) and the overlay (``render()``, called on a writer thread) of one (image, method)
        for the sink; the record gets the sink's fields and becomes ``ok`` once the sink's write returns (a packed
        sink's: once its part is written)."""
        record = {**record, **self.sink.fields(record["method"], record["image"])}
        future = self._pool.submit(self.sink.write, record, saliency, render)
        self._pending.append((future, record))
        if len(self._pending) > 64:
            self.drain(wait_all=False)

    def submit_picture(self, key: str, picture: np.ndarray) -> None:
        """Queue image ``key``'s picture (the original scaled to fit ``--overlay-size``, uint8 (h, w, 1 or 3)) for
        the sink, once per image: the report's original column. A failed write costs only that column's cell."""
        def write() -> None:
            with contextlib.suppress(Exception):
                self.sink.write_picture(key, picture)

        self._pool.submit(write)

    def drain(self, wait_all: bool = True) -> None:
        """Collect finished writes (all of them if ``wait_all``); a failed write marks its record ``error``."""
        keep = []
        for future, record in self._pending:
            if not wait_all and not future.done():
                keep.append((future, record))
                continue
            try:
                future.result()
                if not self.sink.buffered:  # a packed sink hands the record back from ``flush``
                    self.add(record)
            except Exception as exc:  # noqa: BLE001 - one file's failure is recorded, not fatal
                self.sink.discard(record)
                self._failed(record, f"{type(exc).__name__}: {exc}")
        self._pending = keep

    def _failed(self, record: dict[str, Any], error: str) -> None:
        cleared = dict.fromkeys(self.sink.fields(record["method"], record["image"]))
        self.add({**record, **cleared, "status": "error", "error": f"could not write outputs: {error}"})

    def _flushed(self, records: list[dict[str, Any]], error: str | None) -> None:
        """A packed sink's part is written (``error`` None; the records say where their rows are) or lost:
        journal its records before the sink renames the part into place."""
        for record in records:
            if error is None:
                self.add(record)
            else:
                self._failed(record, error)
        self._journal()

    def add(self, record: dict[str, Any]) -> None:
        key = (record["image"], record["method"])
        self.records[key] = record
        self._fresh.append(key)

    def checkpoint(self) -> None:
        """Append the records finished since the last checkpoint to this run's journal, durably (fsync). A packed
        sink with a part's worth of rows buffered writes them first, once every queued write has returned (so the
        maps of one image, all submitted in one batch, stay together)."""
        if self.sink.buffered and self.sink.full():
            self.drain(wait_all=True)
            self.sink.flush(self._flushed)
        self._journal()

    def _journal(self) -> None:
        fresh, self._fresh = self._fresh, []
        self.journal.append(self.records.line(k) for k in fresh)

    def close(self) -> None:
        """Wait for every write, let a packed sink write its last part, journal the last records, then close the
        sink."""
        self.drain(wait_all=True)
        self._pool.shutdown(wait=True)
        self.sink.flush(self._flushed, final=True)
        self._journal()
        self.journal.close()
        self.sink.close()

    # -- shared files
    def write_manifest(self) -> None:
        """OUT/manifest.jsonl: the last record of every (image, method) over the merged manifest and every
        journal, sorted, streamed in bounded memory (``journal.merged_lines``)."""
        self.checkpoint()
        write_merged_manifest(self.out)

    def drop_journal(self) -> None:
        """Remove this run's journal once the merged manifest holds its records (a single-process run, at its
        end), so that nightly reruns of one folder do not grow it; other shards' journals are never touched."""
        self.journal.path.unlink(missing_ok=True)

    def write_run_part(self, info: dict[str, Any]) -> None:
        """OUT/parts/run-<I>-of-<N>.json: this run's (or shard's) own run file, whole or not at all: settings,
        counts, host, start and end, complete or not (an interrupted run is not)."""
        import socket

        from . import journal

        doc = {"schema_version": SCHEMA_VERSION, **info, "format": self.sink.name, "shard": self.shard,
               "host": socket.gethostname(), "pid": os.getpid(), "complete": not info.get("interrupted")}
        write_json(journal.run_part(self.out, self.shard), doc)

    def write_run_json(self, info: dict[str, Any], shard: tuple[int, int] | None) -> None:
        """OUT/run.json, with the sink's name as ``format``; with shards, each shard's summary is kept under
        ``shards``."""
        with locked(self.out):
            path = self.out / RUN_JSON
            doc = {"schema_version": SCHEMA_VERSION, **info, "format": self.sink.name}
            if shard is not None:
                old: dict[str, Any] = {}
                with contextlib.suppress(OSError, json.JSONDecodeError):
                    old = json.loads(path.read_text(encoding="utf-8"))
                shards = old.get("shards", {}) if isinstance(old.get("shards"), dict) else {}
                shards[f"{shard[0]}/{shard[1]}"] = {k: info[k] for k in ("counts", "timings", "device") if k in info}
                doc["shards"] = shards
            buf = io.StringIO()
            json.dump(doc, buf, indent=2, ensure_ascii=False, default=str)
            write_bytes(path, (buf.getvalue() + "\n").encode("utf-8"))


def write_merged_manifest(out: Path) -> int:
    """Stream the manifest and the parts into OUT/manifest.jsonl; returns the number of records."""
    from . import journal

    n = 0
    with atomic_path(out / MANIFEST) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for line in journal.merged_lines(journal.sources(out, out / MANIFEST)):
            fh.write(line + "\n")
            n += 1
    return n


def read_run_json(out: Path) -> dict[str, Any]:
    """OUT/run.json of a finished run, or before ``salcli merge`` the first shard's run file (the settings are
    the same in every shard); a clear usage error when there is neither."""
    from ..errors import UsageError
    from . import journal

    path = out / RUN_JSON
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        parts = journal.read_run_parts(out)
        if parts:
            return parts[0]
        raise UsageError(f"{out} holds no run.json: give the output folder of a salcli explain run") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON ({exc})") from None


REPORT_FILES = "report_files"  # OUT/report_files/METHOD/KEY.png: overlays copied out of a packed sink's parts


def export_overlay(sink: sinks.Sink, record: dict[str, Any]) -> str | None:
    """The overlay a packed sink holds for ``record`` (``overlay_png``), written to OUT/report_files/METHOD/KEY.png
    for a browser; its path relative to OUT, or None when the sink has none or it cannot be read."""
    try:
        png = sink.overlay_png(record)
        if png is None:
            return None
        rel = f"{REPORT_FILES}/{record['method']}/{record['image']}.png"
        write_bytes(_safe_join(sink.out, rel), png)
    except (OSError, ValueError, KeyError):  # a part cut short, a record that names no row
        return None
    return rel


def open_sink(out: Path, run: dict[str, Any] | None = None) -> sinks.Sink:
    """The sink a finished run in OUT was written with: run.json's ``format`` (``files`` when it has none).
    ``run`` is run.json's content when the caller has read it already."""
    run = read_run_json(out) if run is None else run
    return sinks.get(run.get("format") or "files")(out)


def update_records(out: Path, updates: dict[tuple[str, str], dict[str, Any]]) -> int:
    """Replace the manifest records of ``updates`` ((image, method) -> the new record) where the run keeps them
    (``salcli render`` in place), under OUT's lock. A key's last line over the merged manifest and the journals
    wins (``journal.sources``): a journal that holds a key's last line gets the new line appended (the journals
    stay append-only, and a key stays in the one journal that held it, so ``verify`` sees no duplicate), and the
    merged manifest is rewritten (streamed, whole or not at all) with the new lines of the keys it holds, so that
    it says the same before the next ``merge``. Returns the number of records replaced; a key with no record is
    left out."""
    from . import journal

    if not updates:
        return 0
    manifest = out / MANIFEST
    with locked(out):
        where: dict[tuple[str, str], Path] = {}
        listed: set[tuple[str, str]] = set()  # keys with a line in the merged manifest
        for path in journal.sources(out, manifest):
            for key, _ in journal.read_lines(path):
                if key in updates:
                    where[key] = path
                    if path == manifest:
                        listed.add(key)
        if listed:
            with atomic_path(manifest) as tmp, open(tmp, "w", encoding="utf-8") as dst, \
                    open(manifest, encoding="utf-8") as src:
                for line in src:
                    key = None
                    with contextlib.suppress(ValueError, AttributeError):
                        rec = json.loads(line)
                        key = (str(rec.get("image")), str(rec.get("method")))
                    dst.write(_dumps(updates[key]) + "\n" if key in listed else line)
        for path in sorted({p for p in where.values() if p != manifest}):
            part = journal.Journal(path)
            try:
                part.append(_dumps(updates[key]) for key, p in where.items() if p == path)
            finally:
                part.close()
    return len(where)


def write_overlay(root: Path, rel: str, image: np.ndarray) -> None:
    """An overlay drawn again (``salcli render``): ``root / rel`` (the files layout, METHOD/KEY.png), whole or not
    at all; ``rel`` never leaves ``root``."""
    write_png(_safe_join(root, rel), image)


def write_jsonl(final: Path, rows: list[dict[str, Any]]) -> None:
    write_bytes(final, "".join(_dumps(r) + "\n" for r in rows).encode("utf-8"))


def write_json(final: Path, doc: Any) -> None:
    write_bytes(final, (json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8"))


from . import sinks  # noqa: E402  (last: the sinks write through the helpers above)
