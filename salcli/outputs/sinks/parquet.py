"""The ``parquet`` sink: one row per (image, method) in ``OUT/data/part-<I>-of-<N>-<RUN>-<NNNNN>.parquet``.

Columns: the manifest's fields (``image``, ``method``, ``status``, ``pred``, ``pred_label``, ``prob``, ``target``,
``target_label``, ``score``, ``settings``, ``source``, ``size``, ``mtime_ns``, ``width``, ``height``), ``location``
(the row's own place, as the manifest's ``npy`` says it: ``data/PART#row=N``), ``record`` (the whole manifest
record as JSON, with what a method adds), ``map`` (the map's bytes, little-endian), ``map_shape`` ([H, W], or a
layer map's [h, w] when the record says ``upsample``),
``map_dtype`` (``float32`` or ``float16``) and ``overlay_png`` (the overlay's PNG file, null with
``--no-overlays``). Back to an array in one line::

    np.frombuffer(row["map"], dtype=row["map_dtype"]).reshape(row["map_shape"])

Bytes rather than nested lists: every reader (pyarrow, pandas, DuckDB, Hugging Face datasets, Ray) reads a
binary column as it is, float16 included, bit for bit and without a copy per element. A row group is one flush
(about 1,000 rows); a part is closed at the first flush past 10,000 rows or 256 MiB of maps and overlays. The
map and overlay columns are stored uncompressed (floats and PNGs hardly compress), without statistics.
"""

from __future__ import annotations

import bisect
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import UsageError, setting
from ..packed import MiB, Packed, Part, Row
from . import register

# (column, arrow type name, manifest field) for the fields every row carries as typed columns
FIELDS = (("image", "string"), ("method", "string"), ("status", "string"), ("pred", "int64"),
          ("pred_label", "string"), ("prob", "float64"), ("target", "int64"), ("target_label", "string"),
          ("score", "float64"), ("settings", "string"), ("source", "string"), ("size", "int64"),
          ("mtime_ns", "int64"), ("width", "int64"), ("height", "int64"))
BLOBS = ("map", "overlay_png")


def schema():
    import pyarrow as pa

    return pa.schema([*((name, getattr(pa, kind)()) for name, kind in FIELDS),
                      ("location", pa.string()), ("record", pa.string()), ("map", pa.binary()),
                      ("map_shape", pa.list_(pa.int32())), ("map_dtype", pa.string()), ("overlay_png", pa.binary())])


@register("parquet")
class Parquet(Packed):
    help = ("rows in OUT/data/part-*.parquet: the manifest's fields, the map's bytes (map_shape, map_dtype) and the "
            "overlay's PNG; needs pyarrow (pip install 'salcli[parquet]')")
    folder, suffix = "data", ".parquet"
    part_rows = 10_000
    part_bytes = 256 * MiB

    @classmethod
    def require(cls) -> None:
        if importlib.util.find_spec("pyarrow") is None:
            raise UsageError(f"{setting('format')} parquet needs pyarrow, which is not installed: "
                             "pip install 'salcli[parquet]'")

    def __init__(self, out: Path, **options: Any) -> None:
        self.require()
        super().__init__(out, **options)

    # -- writing
    def _start(self, part: Part) -> None:
        import pyarrow.parquet as pq

        names = [f.name for f in schema()]
        small = [n for n in names if n not in BLOBS]
        part.handle = pq.ParquetWriter(str(part.tmp), schema(), compression={n: ("none" if n in BLOBS else "snappy")
                                                                          for n in names},
                                       use_dictionary=small, write_statistics=small)

    def _append(self, part: Part, rows: list[Row], located: list[dict[str, Any]]) -> None:
        import pyarrow as pa

        columns = {name: [rec.get(name) for rec in located] for name, _ in FIELDS}
        columns["location"] = [rec["npy"] for rec in located]
        columns["record"] = [json.dumps(rec, ensure_ascii=False, allow_nan=False, default=str) for rec in located]
        columns["map"] = [row.map.tobytes() for row in rows]
        columns["map_shape"] = [list(row.map.shape) for row in rows]
        columns["map_dtype"] = [row.map.dtype.name for row in rows]
        columns["overlay_png"] = [row.png for row in rows]
        part.handle.write_table(pa.table(columns, schema=schema()), row_group_size=len(rows))

    def _located(self, part: Part, index: int, row: Row) -> dict[str, Any]:
        where = self._location(part, f"row={index}")
        return {**row.record, "npy": where, "overlay": where if row.png is not None else None}

    # -- reading
    def _valid(self, record: dict[str, Any], where: str, field: str) -> bool:
        return where.startswith("row=") and where[4:].isascii() and where[4:].isdigit()

    def _row_group(self, path: Path, where: str, columns: tuple[str, ...]):
        """(the row group holding row ``where`` with ``columns``, the row's index in it)."""
        import pyarrow.parquet as pq

        if not self._valid({}, where, "npy"):
            raise ValueError(f"#{where} is not a row of {path.name}")
        row = int(where[4:])

        def starts() -> list[int]:
            meta = pq.ParquetFile(path).metadata
            firsts = [0]
            for i in range(meta.num_row_groups):
                firsts.append(firsts[-1] + meta.row_group(i).num_rows)
            return firsts

        firsts = self._cached((path, "starts"), starts, keep=8)
        if row >= firsts[-1]:
            raise ValueError(f"{path.name} has {firsts[-1]} rows, not row {row}")
        group = bisect.bisect_right(firsts, row) - 1
        table = self._cached((path, group, columns),
                             lambda: pq.ParquetFile(path).read_row_group(group, columns=list(columns)))
        return table, row - firsts[group]

    def _read_map(self, path: Path, where: str) -> np.ndarray:
        table, i = self._row_group(path, where, ("map", "map_shape", "map_dtype"))
        dtype = np.dtype(table.column("map_dtype")[i].as_py()).newbyteorder("<")
        return np.frombuffer(table.column("map")[i].as_py(), dtype).reshape(table.column("map_shape")[i].as_py())

    def _read_png(self, path: Path, where: str) -> bytes | None:
        table, i = self._row_group(path, where, ("overlay_png",))
        return table.column("overlay_png")[i].as_py()
