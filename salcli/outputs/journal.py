"""Durable, append-only journals: each run (or shard) appends its manifest records to its own part file,
``OUT/parts/manifest-<I>-of-<N>.jsonl``, flushed and fsync'ed after every batch, and keeps its own run file,
``OUT/parts/run-<I>-of-<N>.json``. No file is shared between processes and no lock is needed: a ``kill -9`` loses
at most the batch in flight, and ``salcli merge`` (or the end of a single-process run) combines the parts.

A line cut short by a kill is ignored when read; a later line for the same (image, method) replaces an earlier one.
"""

from __future__ import annotations

import heapq
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

PARTS = "parts"


def tag(shard: tuple[int, int] | None) -> str:
    """The part files' name of a shard: ``00003-of-00016`` (a run without shards is ``00000-of-00001``)."""
    index, count = shard if shard is not None else (0, 1)
    return f"{index:05d}-of-{count:05d}"


def manifest_part(out: Path, shard: tuple[int, int] | None) -> Path:
    return out / PARTS / f"manifest-{tag(shard)}.jsonl"


def run_part(out: Path, shard: tuple[int, int] | None) -> Path:
    return out / PARTS / f"run-{tag(shard)}.json"


class Journal:
    """One run's part file, opened for appending; ``append`` makes lines durable before it returns."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        if self._fh.tell() and not _ends_with_newline(path):
            self._fh.write("\n")  # a line cut short by a kill stays a line of its own, ignored when read

    def append(self, lines: Iterable[str]) -> None:
        wrote = False
        for line in lines:
            self._fh.write(line + "\n")
            wrote = True
        if wrote:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def part_files(out: Path) -> list[Path]:
    folder = out / PARTS
    return sorted(folder.glob("manifest-*.jsonl")) if folder.is_dir() else []


def read_lines(path: Path) -> Iterator[tuple[tuple[str, str], str]]:
    """((image, method), line) for every whole record of a JSON-lines file, in file order."""
    for key, line, _ in _records(path):
        yield key, line


def _records(path: Path) -> Iterator[tuple[tuple[str, str], str, dict]]:
    """((image, method), line, record) for every whole record; a line cut short by a kill is skipped."""
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115
    except FileNotFoundError:
        return
    with fh:
        for line in fh:
            line = line.rstrip("\n")
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # cut short by a kill
            if isinstance(rec, dict):
                yield (str(rec.get("image")), str(rec.get("method"))), line, rec


def sources(out: Path, manifest: Path) -> list[Path]:
    """Where a run's records are, oldest first: the merged manifest, then every part."""
    return [manifest, *part_files(out)]


PRUNED = "pruned"  # the status of a tombstone: the image's outputs were removed (``explain --prune``)


def is_pruned(line: str) -> bool:
    """Whether a record line is a tombstone (cheap: most lines do not contain the word at all)."""
    return f'"{PRUNED}"' in line and json.loads(line).get("status") == PRUNED


def scan(paths: list[Path], keys: set | None = None) -> tuple[dict[tuple[str, str], dict], set[str]]:
    """One pass over ``paths``: the last record per (image, method) (only images in ``keys`` when given), and
    every image whose last record of some method is not a tombstone (what OUT holds, for ``gone``)."""
    found: dict[tuple[str, str], dict] = {}
    pruned: dict[tuple[str, str], bool] = {}
    for path in paths:
        for key, _, rec in _records(path):
            pruned[key] = rec.get("status") == PRUNED
            if keys is None or key[0] in keys:
                found[key] = rec
    return found, {image for (image, _), gone in pruned.items() if not gone}


def latest(paths: list[Path], keys: set | None = None) -> dict[tuple[str, str], dict]:
    """The last record per (image, method) over ``paths`` (only images in ``keys`` when given)."""
    return scan(paths, keys)[0]


def merged_lines(paths: list[Path], bucket_bytes: int = 64 << 20) -> Iterator[str]:
    """Every (image, method)'s last line over ``paths``, sorted by (image, method), in bounded memory: records
    are spilled to sorted runs of at most ``bucket_bytes`` (each line tagged with its source order), and the runs
    are merged with a heap; of the lines of one key the last one written wins, and a key whose last line is a
    tombstone (``PRUNED``) is left out."""
    with tempfile.TemporaryDirectory(prefix="salcli-merge-") as tmp:
        runs, batch, size, order = [], [], 0, 0
        for path in paths:
            for key, line in read_lines(path):
                batch.append((key, order, line))
                order += 1
                size += len(line) + 64
                if size >= bucket_bytes:
                    runs.append(_spill(Path(tmp), len(runs), batch))
                    batch, size = [], 0
        if batch:
            runs.append(_spill(Path(tmp), len(runs), batch))
        previous, pending = None, None
        for key, _, line in heapq.merge(*(_read_run(r) for r in runs)):
            if key != previous and pending is not None and not is_pruned(pending):
                yield pending
            previous, pending = key, line
        if pending is not None and not is_pruned(pending):
            yield pending


def _spill(folder: Path, n: int, batch: list) -> Path:
    batch.sort()
    path = folder / f"run{n:05d}.jsonl"
    with open(path, "w", encoding="utf-8") as fh:  # NUL separates: no path and no JSON text holds one
        fh.writelines(f"{image}\0{method}\0{order}\0{line}\n" for (image, method), order, line in batch)
    return path


def _read_run(path: Path) -> Iterator[tuple[tuple[str, str], int, str]]:
    with open(path, encoding="utf-8") as fh:
        for row in fh:
            image, method, order, line = row.rstrip("\n").split("\0", 3)
            yield (image, method), int(order), line


def read_run_parts(out: Path) -> list[dict[str, Any]]:
    """Every shard's run file (settings, counts, host, start and end, complete or not)."""
    folder = out / PARTS
    docs = []
    for path in sorted(folder.glob("run-*.json")) if folder.is_dir() else []:
        try:
            docs.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue
    return docs
