"""The engine for engines: ``salcli.BatchExplainer``, what Ray Data's ``map_batches`` and Spark's
``predict_batch_udf`` call.

``BatchExplainer(**settings)`` takes ``salcli explain``'s settings as keywords (``model``, ``methods``,
``params``, ``config``, ``weights``, ``seed``, ``target``, ``device``, ``map_dtype``, ...), resolves them through
``resolve.resolve`` as the command line does (the same presets, checks, model loading and ``salcli.Explainer``),
and loads the model once: once per Ray actor, once per Spark Python worker. Called on a batch, it decodes and
preprocesses each image as the command line does and returns one row per (image, method) with the columns of
``--format parquet`` (``outputs/sinks/parquet.py``), plus ``error``:

``image`` (the key), ``method``, ``status`` (ok / error), ``error``, ``pred``, ``pred_label``, ``prob``,
``target``, ``target_label``, ``score``, ``settings`` (the manifest's fingerprint: that of ``salcli explain
--no-overlays`` with the same settings), ``source`` (the row's path as given), ``size``, ``mtime_ns``
(null: a batch carries no file metadata), ``width``, ``height`` (the decoded picture's), ``location`` (null),
``record`` (the manifest record as JSON, with what a method adds), ``map`` (the map's bytes, little-endian),
``map_shape`` ([H, W], or a layer's [h, w]: see below), ``map_dtype`` (float32 or float16), ``overlay_png`` (null:
render overlays later with ``salcli render``). ``np.frombuffer(row["map"], dtype=row["map_dtype"]).reshape(
row["map_shape"])`` is the map. As with ``--format parquet``, the CAM family's maps are kept at their layer's
resolution (``layer_maps="native"``; ``"input"`` resizes them first): such a row's ``record`` says ``upsample``,
and ``salcli.maps.at_input(map, json.loads(row["record"]))`` is the map at the input's size.

A batch is a dict of columns (Ray's ``numpy`` batches), a pandas DataFrame or a pyarrow Table, with:
- the image, from the first of these columns it has: ``image`` (decoded pixels: uint8 (N, H, W[, C]) or one
  array per row, as ``ray.data.read_images`` gives them), ``bytes`` (a file's encoded bytes, as
  ``ray.data.read_binary_files`` gives them) or ``content`` (Spark's ``binaryFile``); or, with none of them,
  ``path`` alone: the file is read there (a local path or an fsspec URL), exactly as the command line reads it;
- the key, which names the row and seeds the random methods: a ``key`` column (used as it is), else ``path``,
  made relative to ``root`` when it is given. Give ``root`` the folder ``salcli explain`` was run on and the
  keys, and so the maps of seeded methods, equal the command line's.

A picture that cannot be decoded, a path outside ``root``, a model or method failure: error rows for that image,
never an exception that stops the batch. Settings that are wrong raise ``UsageError`` / ``ModelLoadError`` in
the constructor, before any batch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from collections.abc import Mapping
from typing import Any, Sequence
from urllib.parse import unquote, urlsplit

import numpy as np

from . import images, provenance, streams
from .maps import UPSAMPLE
from .errors import UsageError, setting

PICTURE_COLUMNS = ("image", "bytes", "content")  # where a row's picture is looked for, in this order
OUTPUTS = ("arrow", "pandas", "numpy")


def batch_schema():
    """The pyarrow schema of a batch's result: the parquet sink's (``outputs/sinks/parquet.schema``) with
    ``error`` after ``status``."""
    import pyarrow as pa

    from .outputs.sinks.parquet import schema

    fields = list(schema())
    at = next(i for i, f in enumerate(fields) if f.name == "status") + 1
    return pa.schema([*fields[:at], pa.field("error", pa.string()), *fields[at:]])


class _Notes:
    """The reporter ``resolve`` gets: notes kept in ``BatchExplainer.notes``, warnings also raised as Python
    warnings (random weights, guessed preprocessing), since a Ray actor or Spark worker has no terminal."""

    def __init__(self, notes: list[str]) -> None:
        self.notes = notes

    def note(self, message: str) -> None:
        from .errors import word

        self.notes.append(word(str(message)))

    def warn(self, message: str) -> None:
        from .errors import word

        self.notes.append(word(str(message)))
        warnings.warn(word(str(message)), stacklevel=4)  # at the caller of BatchExplainer(...)


class BatchExplainer:
    """Saliency maps for the batches Ray Data and Spark hand over, with ``salcli explain``'s settings.

    Every setting is a keyword with the command line's meaning; ``None`` (the default) leaves it to the preset
    (``config``: a TOML file or a shipped preset's name, as ``--config``) or to the command line's default.
    ``model``: a model spec (``builtin:fashion-mnist``, ``torchvision:resnet18``, ``net.py:build``, a file);
    ``methods``: a name, a comma-separated list or a list; ``params``: ``{method: {key: value}}`` or
    ``["smoothgrad.samples=25", ...]`` as ``-p`` takes them; ``mean``/``std``: numbers or "0.5,0.5,0.5" strings.
    ``root``: keys from a ``path`` column are made relative to this folder (see the module's docstring).
    ``column``: the column the pictures are in (default: the first of ``image``, ``bytes``, ``content``).
    ``output``: what a call returns: ``arrow`` (a pyarrow Table with the parquet sink's column types; the default
    for a dict or a Table), ``pandas`` (a DataFrame of pyarrow-backed columns; the default for a DataFrame) or
    ``numpy`` (a dict of arrays as pyarrow's ``to_numpy`` gives them: an integer column holding a null is
    float64 with NaN). Arrow types survive Ray's ``write_parquet`` whatever a batch holds; NumPy object arrays
    do not (a column of nulls only, such as ``error`` in a batch without failures, becomes Arrow's null type,
    and parts with different types cannot be read together): keep ``numpy`` for your own code.

    ``engine`` is the ``salcli.Explainer`` underneath, ``resolved`` what ``resolve`` made of the settings,
    ``settings`` each method's fingerprint, ``notes`` what the command line would have printed.
    """

    def __init__(self, model: str | None = None, methods: str | Sequence[str] | None = None, *,
                 config: str | None = None, weights: str | None = None, weights_key: str | None = None,
                 trust_checkpoint: bool | None = None,
                 params: Mapping[str, Mapping[str, Any]] | Sequence[str] | None = None,
                 labels: str | Sequence[str] | None = None, resize: int | None = None, crop: int | None = None,
                 mean: str | float | Sequence[float] | None = None, std: str | float | Sequence[float] | None = None,
                 channels: int | None = None, target: str | int | None = None, layer: str | None = None,
                 device: str | None = None, batch_size: int | str | None = None, chunk: int | str | None = None,
                 precision: str | None = None, optimize: bool | None = None, seed: int | None = None,
                 map_dtype: str | None = None, layer_maps: str = "native", root: str | os.PathLike | None = None,
                 column: str | None = None, output: str | None = None) -> None:
        from .config import build_config
        from .resolve import resolve

        if importlib.util.find_spec("pyarrow") is None:
            raise UsageError("BatchExplainer needs pyarrow, which is not installed: pip install 'salcli[parquet]' "
                             "(Ray Data and Spark install it too)")
        if output is not None and output not in OUTPUTS:
            raise UsageError(f"{setting('output')} takes {', '.join(OUTPUTS)} (or None: the kind of the batch); "
                             f"got {output!r}")
        if column is not None and not isinstance(column, str):
            raise UsageError(f"{setting('column')} takes a column's name; got {column!r}")
        cli: dict[str, Any] = {
            "model": model, "methods": [methods] if isinstance(methods, str) else methods, "config_file": config,
            "weights": weights, "weights_key": weights_key, "trust_checkpoint": trust_checkpoint,
            "params": _param_texts(params), "labels": _labels(labels), "resize": resize, "crop": crop,
            "mean": mean, "std": std, "channels": channels, "target": None if target is None else str(target),
            "layer": layer, "device": device, "batch_size": batch_size, "chunk": chunk, "precision": precision,
            "optimize": optimize, "seed": seed, "map_dtype": map_dtype,
            "layer_maps": layer_maps,  # as --format parquet: the CAM family's maps at their layer's size
            "overlays": False,  # no overlays are drawn here: the settings are those of --no-overlays
        }
        self.config = build_config(cli)
        self.notes: list[str] = []
        self.resolved = resolve(self.config, _Notes(self.notes))
        self.settings: dict[str, str] = provenance.method_settings(self.resolved)
        self.root = None if root is None else os.fspath(root)
        self._roots = _roots(self.root)
        self.column, self.output = column, output

    # ------------------------------------------------------------------------------------------ properties
    @property
    def engine(self):
        """The ``salcli.Explainer`` the maps come from."""
        return self.resolved.explainer

    @property
    def methods(self) -> list[str]:
        return [m.name for m in self.resolved.methods]

    # ------------------------------------------------------------------------------------------ calls
    def __call__(self, batch):
        """One row per (image, method) for ``batch`` (see the class): a pyarrow Table, a DataFrame or a dict of
        arrays, as ``output`` says. The batch is read, never changed."""
        kind, columns, count = _columns(batch)
        table = self.table(columns, count)
        output = self.output or ("pandas" if kind == "pandas" else "arrow")
        if output == "arrow":
            return table
        if output == "pandas":
            import pandas as pd

            return table.to_pandas(types_mapper=pd.ArrowDtype)
        return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}

    def table(self, columns: Mapping[str, Sequence[Any]], count: int):
        """The result for ``columns`` (name -> one value per row, ``count`` rows) as a pyarrow Table."""
        import pyarrow as pa

        rows = self.rows(columns, count)
        schema = batch_schema()
        return pa.table({f.name: [row.get(f.name) for row in rows] for f in schema}, schema=schema)

    def rows(self, columns: Mapping[str, Sequence[Any]], count: int) -> list[dict[str, Any]]:
        """The result as dicts, one per (image, method), images in the batch's order, methods in the settings'."""
        pictures, keys, paths, reading = self._sources(columns)
        pre = self.resolved.preprocess
        out: list[list[dict[str, Any]]] = [[] for _ in range(count)]
        good: list[tuple[int, str, np.ndarray, dict[str, Any]]] = []  # (row, key, pixels, record fields)
        for i in range(count):
            path = None if paths is None else paths[i]
            source = None if _missing(path) else images.printable(streams.redact(str(path)) if streams.is_url(
                str(path)) else str(path))
            key = source
            try:
                key = self._key(None if keys is None else keys[i], path)
                value = path if reading else pictures[i]
                im = self._picture(value, key)
                pixels = images.prepare(im, pre)
            except images.ImageError as exc:
                out[i] = self._failed(key, str(exc), source=source)
                continue
            except Exception as exc:  # noqa: BLE001 - any other failure is still this one image's failure
                out[i] = self._failed(key, images.printable(f"{type(exc).__name__}: {exc}"), source=source)
                continue
            good.append((i, key, pixels, {"source": source, "width": im.width, "height": im.height}))
        size = self.resolved.batch_size
        for start in range(0, len(good), size):
            for i, rows in self._explain(good[start:start + size]):
                out[i] = rows
        return [row for rows in out for row in rows]

    # ------------------------------------------------------------------------------------------ internals
    def _sources(self, columns: Mapping[str, Sequence[Any]]):
        """(pictures, keys, paths, reading): the batch's picture column, key column and path column (None where
        it has none), and whether pictures are read from the paths."""
        names = list(columns)
        if self.column is not None:
            if self.column not in columns:
                raise UsageError(f"the batch has no column {self.column!r} ({setting('column')}); its columns: "
                                 f"{', '.join(map(str, names)) or 'none'}")
            picture = self.column
        else:
            picture = next((c for c in PICTURE_COLUMNS if c in columns), None)
        keys = columns.get("key")
        paths = columns.get("path")
        if keys is None and paths is None:
            raise UsageError(f"the batch has no 'path' or 'key' column (its columns: {', '.join(map(str, names))}); "
                             "keys name the rows and seed the random methods: read with include_paths=True "
                             "(Ray), pass the path column (Spark), or add a 'key' column")
        if picture is None and paths is None:
            raise UsageError(f"the batch has no picture column ({', '.join(PICTURE_COLUMNS)}) and no 'path' to read "
                             f"the files from; its columns: {', '.join(map(str, names))}")
        return (None if picture is None else columns[picture]), keys, paths, picture is None

    def _key(self, key, path) -> str:
        if not _missing(key):
            return images.printable(str(key))
        if _missing(path):
            raise images.ImageError("the row has no key and no path")
        return key_of(path, self.root, self._roots)

    def _picture(self, value, key: str):
        """The decoded picture of one row's value: encoded bytes, pixels, or a path to read."""
        if isinstance(value, (bytes, bytearray, memoryview)):
            return images.decode_bytes(value)
        if isinstance(value, (str, os.PathLike)):
            location = os.fspath(value)
            if location.startswith("file:"):
                location = _file_path(location)
            return images.load(images.ImageItem(location, key))
        if _missing(value):
            raise images.ImageError("the row has no image")
        if isinstance(value, (np.ndarray, list, tuple)) or hasattr(value, "__array__"):
            return images.from_array(value)
        raise images.ImageError(f"a {type(value).__name__} is not an image: give encoded bytes or uint8 pixels")

    def _explain(self, good):
        """(row, its rows) for each image of one engine batch."""
        import torch

        from .engine import ModelFailure

        if not good:
            return []
        engine, resolved = self.engine, self.resolved
        keys = [g[1] for g in good]
        pixels = torch.from_numpy(np.stack([g[2] for g in good]))
        try:
            result = engine(engine.from_pixels(pixels), keys, resolved.target)
        except ModelFailure as exc:
            return [(i, self._failed(key, str(exc), **fields)) for i, key, _, fields in good]
        facts = result.facts(resolved.labels)
        done: list[list[dict[str, Any]]] = [[] for _ in good]
        for m in resolved.methods:
            rows = result.rows.get(m.name, [])
            failure = result.failures.get(m.name)
            where = {row: n for n, row in enumerate(rows)}
            extras = result.extras.get(m.name, {})
            maps = result.maps[m.name].numpy() if rows else None
            size = (self.resolved.preprocess.crop,) * 2
            if maps is not None and tuple(maps.shape[1:]) != size:  # a layer's map, stored at its size
                extras = {**extras, "upsample": [{**UPSAMPLE, "size": list(size)}] * len(rows)}
            for j, (_, key, _, fields) in enumerate(good):
                if j not in where:
                    done[j].append(self._row(key, m.name, "error", f"{m.name} failed: {type(failure).__name__}: "
                                             f"{failure}", None, {**facts[j], **fields}))
                    continue
                n = where[j]
                done[j].append(self._row(key, m.name, "ok", None, maps[n],
                                         {**facts[j], **fields, **{k: v[n] for k, v in extras.items()}}))
        return [(g[0], rows) for g, rows in zip(good, done)]

    def _failed(self, key: str | None, error: str, **fields: Any) -> list[dict[str, Any]]:
        return [self._row(key, m.name, "error", error, None, fields) for m in self.resolved.methods]

    def _row(self, key, method: str, status: str, error: str | None, saliency, fields: dict[str, Any]):
        from .outputs.packed import stored

        record = provenance.record(key, method, self.settings[method], status=status, error=error, **fields)
        row = {**record, "record": json.dumps(record, ensure_ascii=False, allow_nan=False, default=str)}
        if saliency is not None:
            data = stored(saliency, self.config.map_dtype)
            row.update(map=data.tobytes(), map_shape=list(data.shape), map_dtype=data.dtype.name)
        return row


# ---------------------------------------------------------------------------------------------- Spark
SPARK_FIELDS = (("image", "string"), ("method", "string"), ("status", "string"), ("error", "string"),
                ("pred", "bigint"), ("pred_label", "string"), ("prob", "double"), ("target", "bigint"),
                ("target_label", "string"), ("score", "double"), ("settings", "string"), ("source", "string"),
                ("width", "bigint"), ("height", "bigint"), ("record", "string"), ("map", "array<float>"),
                ("map_shape", "array<int>"), ("map_dtype", "string"))
SPARK_DDL = ", ".join(f"{name} {kind}" for name, kind in SPARK_FIELDS)


def spark_schema():
    """The ``return_type`` of ``spark_predict_fn``'s UDF: a StructType of ``SPARK_FIELDS`` (needs pyspark)."""
    from pyspark.sql import types as T

    kinds = {"string": T.StringType(), "bigint": T.LongType(), "double": T.DoubleType(),
             "array<float>": T.ArrayType(T.FloatType()), "array<int>": T.ArrayType(T.IntegerType())}
    return T.StructType([T.StructField(name, kinds[kind], True) for name, kind in SPARK_FIELDS])


def spark_predict_fn(**settings: Any):
    """The ``predict`` function of a Spark ``predict_batch_udf``: load the model (``BatchExplainer(**settings)``)
    and return ``predict(images, paths=None)`` over NumPy arrays, one output row per input row, as
    ``predict_batch_udf`` requires. Pass it as ``make_predict_fn=functools.partial(spark_predict_fn, ...)``:
    Spark calls it once per Python worker.

    ``images``: a 1-D array of encoded bytes (a ``binaryFile`` DataFrame's ``content``), of per-row pixel arrays,
    or uint8 pixels (N, H, W[, C]) (a tensor column with ``input_tensor_shapes``); or, called with one array of
    strings, the paths to read. ``paths``: the rows' paths (``path``), which give the keys (relative to ``root``;
    ``file:`` URIs are read as local paths). One method per UDF (a row per image): make one UDF per method.
    Returns a dict of ``SPARK_FIELDS`` columns: ``map`` is (N, H*W) float32 (NaN on error rows; as stored with
    ``map_dtype`` float16, then widened), ``map_shape`` (N, 2)."""
    engine = BatchExplainer(**settings)
    if len(engine.methods) != 1:
        raise UsageError(f"a Spark UDF returns one row per image, so it takes one method, not "
                         f"{len(engine.methods)} ({', '.join(engine.methods)}); make one UDF per method")
    crop = engine.resolved.preprocess.crop

    def predict(pictures: np.ndarray, paths: np.ndarray | None = None) -> dict[str, np.ndarray]:
        values = list(pictures)  # per row: bytes, a path, or pixels (the rows of an (N, H, W[, C]) array)
        if paths is None:
            if not all(isinstance(v, (str, os.PathLike)) or _missing(v) for v in values):
                raise UsageError("predict(images, paths): give the paths too (they give the keys), or call it with "
                                 "the paths alone")
            columns = {"path": values}
        else:
            columns = {"image": values, "path": list(paths)}
        rows = engine.rows(columns, len(values))
        return spark_columns(rows, crop)

    return predict


def spark_columns(rows: list[dict[str, Any]], crop: int) -> dict[str, np.ndarray]:
    """Rows (one method) -> ``SPARK_FIELDS`` columns as ``predict_batch_udf`` takes them: 1-D arrays (objects,
    None for null) for scalars, 2-D arrays for ``map`` and ``map_shape``."""
    count = len(rows)
    maps = np.full((count, crop * crop), np.nan, dtype=np.float32)
    shapes = np.full((count, 2), crop, dtype=np.int32)
    for n, row in enumerate(rows):
        if row.get("map") is not None:
            maps[n] = np.frombuffer(row["map"], dtype=np.dtype(row["map_dtype"]).newbyteorder("<"))
            shapes[n] = row["map_shape"]
    columns: dict[str, np.ndarray] = {}
    for name, _ in SPARK_FIELDS:  # in the struct's order
        if name in ("map", "map_shape"):
            columns[name] = maps if name == "map" else shapes
            continue
        column = np.empty(count, dtype=object)
        column[:] = [row.get(name) for row in rows]
        columns[name] = column
    return columns


# ---------------------------------------------------------------------------------------------- helpers
def key_of(path, root: str | None, roots: Sequence[str] = ()) -> str:
    """The key of a row's ``path``: the path itself, or with ``root`` its part below ``root`` (``/``-separated),
    as ``salcli explain ROOT`` keys the same file. A Spark ``file:`` URI is read as the local path it names.
    A path outside ``root`` raises ``ImageError`` (that row's error)."""
    text = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
    if text.startswith("file:"):
        text = _file_path(text)
    if root is None:
        return images.printable(text)
    candidates = [text]
    if not streams.is_url(text) and not os.path.isabs(text):
        candidates.append(os.path.abspath(text))
    for candidate in candidates:
        for base in roots or _roots(root):
            if candidate.startswith(base + "/") and len(candidate) > len(base) + 1:
                return images.printable(candidate[len(base) + 1:])
    raise images.ImageError(f"{images.printable(text)} is not inside root={images.printable(str(root))}; keys are "
                            "paths relative to it")


def _roots(root: str | None) -> list[str]:
    """The prefixes a path below ``root`` may start with: its absolute and real forms for a folder; a URL as
    written and without its scheme (Ray gives ``bucket/key`` for ``s3://bucket/key``)."""
    if root is None:
        return []
    text = root[:-1] if root.endswith("/") and len(root) > 1 else root
    if text.startswith("file:"):
        text = _file_path(text)
    if streams.is_url(text):
        return list(dict.fromkeys([text, text.split("://", 1)[1]]))
    local = os.path.expanduser(text)
    return list(dict.fromkeys([os.path.abspath(local), os.path.realpath(local)]))


def _file_path(uri: str) -> str:
    """``file:/a%20b/x.png`` or ``file:///a%20b/x.png`` (Spark's paths) -> ``/a b/x.png``."""
    return unquote(urlsplit(uri).path)


def _missing(value) -> bool:
    """None, NaN, or pandas' NA / NaT: a row without this value."""
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return True
    return isinstance(value, float) and value != value


def _param_texts(params) -> list[str] | None:
    """``params`` as ``-p`` texts: ``{method: {key: value}}`` or texts already."""
    if params is None:
        return None
    if isinstance(params, str):
        return [params]
    if isinstance(params, Mapping):
        texts = []
        for method, table in params.items():
            if not isinstance(table, Mapping):
                raise UsageError(f"{setting('params')} takes {{method: {{key: value}}}}; {method!r} maps to "
                                 f"{table!r}, not a table")
            texts += [f"{method}.{key}={'' if value is None else value}" for key, value in table.items()]
        return texts
    return [str(p) for p in params]


def _labels(labels):
    if labels is None or isinstance(labels, (str, os.PathLike)):
        return None if labels is None else os.fspath(labels)
    return tuple(str(v) for v in labels)


def _columns(batch) -> tuple[str, dict[str, list[Any]], int]:
    """(kind, name -> one value per row, rows) of a batch: a dict of columns, a pandas DataFrame or a pyarrow
    Table. Values are read as they are; nothing is written into the batch."""
    kind = type(batch).__module__.split(".")[0]
    if kind == "pandas" and hasattr(batch, "columns"):
        columns = {str(name): list(batch[name].to_numpy()) for name in batch.columns}
        return "pandas", columns, len(batch)
    if kind == "pyarrow" and hasattr(batch, "column_names"):
        columns = {name: _arrow_values(batch.column(name)) for name in batch.column_names}
        return "arrow", columns, batch.num_rows
    if isinstance(batch, Mapping):
        columns = {}
        for name, value in batch.items():
            if isinstance(value, np.ndarray) and value.ndim == 0:
                raise UsageError(f"column {name!r} is a single value, not one per row")
            columns[str(name)] = [v.item() if isinstance(v, np.str_) else v for v in value]
        lengths = {name: len(v) for name, v in columns.items()}
        if len(set(lengths.values())) > 1:
            raise UsageError(f"the batch's columns differ in length: {lengths}")
        return "dict", columns, next(iter(lengths.values()), 0)
    raise UsageError(f"a batch is a dict of columns, a pandas DataFrame or a pyarrow Table; got a "
                     f"{type(batch).__name__}")


def _arrow_values(column) -> list[Any]:
    """One value per row of a pyarrow (chunked) column: Python values for plain types, arrays for tensor
    extension types (Ray's image columns)."""
    import pyarrow as pa

    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    values: list[Any] = []
    for chunk in chunks:
        if isinstance(chunk.type, pa.ExtensionType):
            values += list(chunk.to_numpy(zero_copy_only=False))
        else:
            values += chunk.to_pylist()
    return values
