"""``salcli.BatchExplainer``: what Ray Data's ``map_batches`` and Spark's ``predict_batch_udf`` call gives the
command line's maps, records and settings, from pixels, encoded bytes or paths, in a dict, a DataFrame or an
Arrow table, one bad image making error rows only."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES
from PIL import Image

import salcli
from salcli import batch as batch_api
from salcli.errors import UsageError

pa = pytest.importorskip("pyarrow")
pd = pytest.importorskip("pandas")

ROOT = SAMPLES / "fashion-mnist"
METHODS = ["vanilla", "gradcam", "smoothgrad"]  # input gradients, a layer method, a seeded method
SETTINGS = {"methods": METHODS, "params": {"smoothgrad": {"samples": 8}}, "seed": 3, "root": str(ROOT)}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Path:
    """``salcli explain`` on the sample images, maps only (the batch API draws no overlays), the CAM family's at
    their layer's size (the batch API's default, as --format parquet's; the files format stores them so too)."""
    from typer.testing import CliRunner

    from salcli.cli import app

    out = tmp_path_factory.mktemp("cli") / "out"
    args = ["explain", str(ROOT), "-o", str(out), "-q", "--seed", "3", "--no-overlays", "--layer-maps", "native",
            "-p", "smoothgrad.samples=8"]
    for name in METHODS:
        args += ["-m", name]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def records(cli_run) -> dict[tuple[str, str], dict]:
    lines = (cli_run / "manifest.jsonl").read_text().splitlines()
    return {(r["image"], r["method"]): r for r in map(json.loads, lines)}


@pytest.fixture(scope="module")
def engine() -> salcli.BatchExplainer:
    return salcli.BatchExplainer(**SETTINGS)


@pytest.fixture(scope="module")
def paths() -> list[str]:
    return sorted(str(p) for p in ROOT.rglob("*.png"))


def to_map(row) -> np.ndarray:
    """A row's map, as salcli's parquet output is read (README, 'Parquet')."""
    return np.frombuffer(row["map"], dtype=row["map_dtype"]).reshape(row["map_shape"])


def assert_cli_rows(rows: list[dict], records: dict, cli_run: Path, count: int, methods=METHODS) -> None:
    """Every image x method once; each ok row's map bit for bit the CLI's, its facts and settings the manifest's."""
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == count * len(methods) and {r["method"] for r in ok} == set(methods)
    assert len({(r["image"], r["method"]) for r in ok}) == len(ok)
    for row in ok:
        ref = records[(row["image"], row["method"])]
        cli_map = np.load(cli_run / ref["npy"])
        ours = to_map(row)
        native = row["method"] == "gradcam"  # the builtin model's last convolution: 7x7
        assert ours.dtype == np.float32 and ours.shape == cli_map.shape == ((7, 7) if native else (28, 28))
        assert np.array_equal(ours.view(np.uint32), cli_map.view(np.uint32)), (row["image"], row["method"])
        for field in ("pred", "pred_label", "target", "target_label", "settings", "width", "height"):
            assert row[field] == ref[field], field
        upsample = json.loads(row["record"]).get("upsample")
        assert upsample == ref.get("upsample") == ({"mode": "bilinear", "align_corners": False, "size": [28, 28]}
                                                   if native else None)
        assert row["error"] is None and json.loads(row["record"])["settings"] == ref["settings"]


def test_a_dict_of_uint8_pixels_gives_the_cli_maps(engine, paths, records, cli_run):
    """Ray's numpy batches of ``read_images(include_paths=True)``: an (N, H, W) uint8 array and the paths."""
    pixels = np.stack([np.asarray(Image.open(p)) for p in paths])
    before = pixels.copy()
    batch = {"image": pixels, "path": np.array(paths)}
    out = engine(batch)
    assert isinstance(out, pa.Table) and out.schema == batch_api.batch_schema()
    assert_cli_rows(out.to_pylist(), records, cli_run, len(paths))
    assert np.array_equal(pixels, before) and set(batch) == {"image", "path"}  # the batch is only read
    # images of several sizes come as an object array of arrays, RGB ones with 3 channels
    ragged = np.empty(3, dtype=object)
    ragged[:] = [np.asarray(Image.open(p).convert("RGB")) for p in paths[:3]]
    rgb = engine({"image": ragged, "path": paths[:3]}).to_pylist()
    assert [r["status"] for r in rgb] == ["ok"] * 9


def test_encoded_bytes_give_the_cli_maps_and_a_corrupt_file_gives_error_rows(engine, paths, records, cli_run):
    """``read_binary_files(include_paths=True)``: the files' bytes, decoded as the CLI decodes files."""
    data = [Path(p).read_bytes() for p in paths]
    bad = str(ROOT / "Bag" / "broken.png")
    rows = engine({"bytes": data[:5] + [data[5][:40]] + data[6:], "path": paths[:5] + [bad] + paths[6:]}).to_pylist()
    broken = [r for r in rows if r["image"] == "Bag/broken.png"]
    assert [r["method"] for r in broken] == METHODS
    assert all(r["status"] == "error" and "cannot decode" in r["error"] and r["map"] is None for r in broken)
    assert all(r["settings"] == records[("Bag/t10k-00030.png", r["method"])]["settings"] for r in broken)
    assert_cli_rows(rows, records, cli_run, len(paths) - 1)
    # one row per (image, method), images in the batch's order
    assert [r["image"] for r in rows[::3]] == [batch_api.key_of(p, str(ROOT)) for p in paths[:5] + [bad] + paths[6:]]


def test_a_dataframe_gives_a_dataframe_with_the_cli_maps(engine, paths, records, cli_run):
    """Ray's pandas batches and Spark's pandas UDFs hand over a DataFrame; it comes back as one."""
    frame = pd.DataFrame({"bytes": [Path(p).read_bytes() for p in paths], "path": paths})
    copy = frame.copy()
    out = engine(frame)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == batch_api.batch_schema().names
    pd.testing.assert_frame_equal(frame, copy)
    rows = [{k: (None if v is pd.NA else v) for k, v in row.items()} for row in out.to_dict("records")]
    assert_cli_rows(rows, records, cli_run, len(paths))
    # the frame goes back to Arrow with the parquet types, whatever it holds
    assert pa.Table.from_pandas(out, preserve_index=False).schema == batch_api.batch_schema()


def test_an_arrow_table_gives_a_table_and_numpy_output_gives_arrays(engine, paths, records, cli_run):
    """Ray's ``batch_format="pyarrow"`` batches; ``output="numpy"`` for code of one's own."""
    table = pa.table({"bytes": [Path(p).read_bytes() for p in paths[:4]], "path": paths[:4]})
    out = engine(table)
    assert isinstance(out, pa.Table) and out.num_rows == 12
    assert_cli_rows(out.to_pylist(), records, cli_run, 4)
    arrays = salcli.BatchExplainer(**SETTINGS, output="numpy")({"path": np.array(paths[:2])})
    assert all(isinstance(v, np.ndarray) and len(v) == 6 for v in arrays.values())
    assert arrays["pred"].dtype == np.int64 and arrays["error"].tolist() == [None] * 6
    assert np.array_equal(to_map({k: v[1] for k, v in arrays.items()}),
                          np.load(cli_run / records[(arrays["image"][1], "gradcam")]["npy"]))


def test_paths_alone_are_read_and_a_key_column_is_used_as_it_is(engine, paths, records, cli_run):
    keys = [batch_api.key_of(p, str(ROOT)) for p in paths[:4]]
    rows = engine({"path": paths[:4]}).to_pylist()
    assert_cli_rows(rows, records, cli_run, 4)
    pixels = np.stack([np.asarray(Image.open(p)) for p in paths[:4]])
    rows = engine({"image": pixels, "key": keys}).to_pylist()
    assert_cli_rows(rows, records, cli_run, 4)
    assert [r["source"] for r in rows] == [None] * 12  # no path given


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16", "1"])
def test_pixels_give_the_picture_the_files_bytes_give(mode):
    """An array is taken as the decoded picture: the same picture as the PNG of those pixels, decoded."""
    rng = np.random.default_rng(0)
    shape = {"L": (9, 7), "RGB": (9, 7, 3), "RGBA": (9, 7, 4), "I;16": (9, 7), "1": (9, 7)}[mode]
    dtype = {"I;16": np.uint16, "1": bool}.get(mode, np.uint8)
    pixels = rng.integers(0, 2 if mode == "1" else 60000 if mode == "I;16" else 256, shape).astype(dtype)
    im = Image.fromarray(pixels) if mode != "1" else Image.fromarray(pixels.astype(np.uint8) * 255).convert("1")
    png = io.BytesIO()
    im.save(png, format="PNG")
    decoded = salcli.images.decode_bytes(png.getvalue())
    ours = salcli.images.from_array(pixels)
    assert ours.mode == decoded.mode and np.array_equal(np.asarray(ours), np.asarray(decoded))
    if pixels.ndim == 2:  # (H, W, 1) is (H, W)
        assert np.array_equal(np.asarray(salcli.images.from_array(pixels[..., None])), np.asarray(ours))


def test_keys_are_paths_relative_to_root_as_the_cli_keys_them(tmp_path):
    root = str(ROOT)
    assert batch_api.key_of(f"{root}/Ankle boot/a.png", root) == "Ankle boot/a.png"
    assert batch_api.key_of(f"{root}/Ankle boot/a.png", root + "/") == "Ankle boot/a.png"
    assert batch_api.key_of(f"file:{root}/Ankle%20boot/a.png", root) == "Ankle boot/a.png"  # Spark's binaryFile
    assert batch_api.key_of(f"file://{root}/Ankle%20boot/a.png", f"file://{root}") == "Ankle boot/a.png"
    assert batch_api.key_of("bucket/set/x/a.jpg", "s3://bucket/set") == "x/a.jpg"  # Ray drops the scheme
    assert batch_api.key_of("s3://bucket/set/x/a.jpg", "s3://bucket/set") == "x/a.jpg"
    assert batch_api.key_of("/any/where/a.png", None) == "/any/where/a.png"
    link = tmp_path / "link"
    link.symlink_to(ROOT)
    assert batch_api.key_of(f"{ROOT}/Bag/a.png", str(link)) == "Bag/a.png"  # the CLI keys real paths
    with pytest.raises(salcli.images.ImageError, match="not inside root="):
        batch_api.key_of(f"{root}-other/a.png", root)


def test_rows_outside_root_or_without_a_picture_are_error_rows(engine, paths):
    rows = engine({"bytes": [Path(paths[0]).read_bytes(), None, b""],
                   "path": ["/elsewhere/a.png", paths[1], paths[2]]}).to_pylist()
    assert [r["status"] for r in rows] == ["error"] * 9
    assert "not inside root=" in rows[0]["error"] and rows[0]["image"] == "/elsewhere/a.png"
    assert rows[3]["error"] == "the row has no image" and rows[3]["image"] == batch_api.key_of(paths[1], str(ROOT))
    assert "empty file" in rows[6]["error"]
    floats = engine({"image": [np.zeros((28, 28), np.float32)], "key": ["f"]}).to_pylist()
    assert "give uint8 pixels" in floats[0]["error"]


def test_a_failing_method_or_model_gives_error_rows_not_an_exception(engine, paths, records, cli_run,
                                                                     monkeypatch):
    from salcli.engine import Explainer, ModelFailure

    gradcam = next(m for m in engine.resolved.methods if m.name == "gradcam")

    def boom(*args, **kwargs):
        raise RuntimeError("no layer today")

    monkeypatch.setattr(gradcam, "attribute_with_extras", boom)
    rows = engine({"path": paths[:2]}).to_pylist()
    failed = [r for r in rows if r["method"] == "gradcam"]
    assert [r["error"] for r in failed] == ["gradcam failed: RuntimeError: no layer today"] * 2
    assert all(r["pred"] == records[(r["image"], "gradcam")]["pred"] for r in failed)  # the forward pass worked
    assert_cli_rows(rows, records, cli_run, 2, methods=["vanilla", "smoothgrad"])
    monkeypatch.undo()

    def down(self, *args, **kwargs):
        raise ModelFailure("the model failed on this batch (RuntimeError: CUDA error)")

    monkeypatch.setattr(Explainer, "__call__", down)
    rows = engine({"path": paths[:2]}).to_pylist()
    assert len(rows) == 6 and {r["status"] for r in rows} == {"error"}
    assert all("CUDA error" in r["error"] and r["width"] == 28 for r in rows)


def test_map_dtype_float16_stores_the_cli_maps_rounded(paths, records, cli_run):
    half = salcli.BatchExplainer(**{**SETTINGS, "methods": ["vanilla"], "params": None, "map_dtype": "float16"})
    for row in half({"path": paths[:3]}).to_pylist():
        assert row["map_dtype"] == "float16"
        cli_map = np.load(cli_run / records[(row["image"], "vanilla")]["npy"])
        assert np.array_equal(to_map(row), cli_map.astype(np.float16))


def test_settings_are_checked_before_any_batch(engine):
    with pytest.raises(UsageError, match="output="):
        salcli.BatchExplainer(output="polars")
    with pytest.raises(UsageError, match="unknown"):
        salcli.BatchExplainer(methods="vanilla", params={"vanilla": {"steps": 3}})
    with pytest.raises(UsageError, match="'path' or 'key'"):
        engine({"image": np.zeros((1, 28, 28), np.uint8)})
    with pytest.raises(UsageError, match="dict of columns"):
        engine([b"not a batch"])


# ---------------------------------------------------------------------------------------------- Ray, as a loop
def map_batches(dataset: list[dict], fn, *, fn_constructor_kwargs: dict, batch_size: int) -> list:
    """What ``ray.data.Dataset.map_batches`` does with a callable class on one actor: construct it once, then
    call the instance on each batch of columns (NumPy arrays)."""
    instance = fn(**fn_constructor_kwargs)
    results = []
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start:start + batch_size]
        results.append(instance({name: np.array([r[name] for r in rows]) for name in rows[0]}))
    return results


def test_a_ray_like_loop_builds_once_and_writes_parquet_read_like_salclis(paths, records, cli_run, tmp_path,
                                                                        monkeypatch):
    import pyarrow.parquet as pq

    from salcli import models

    loads = []
    real = models.load_model
    monkeypatch.setattr(models, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    dataset = [{"image": np.asarray(Image.open(p)), "path": p} for p in paths]
    parts = map_batches(dataset, salcli.BatchExplainer, fn_constructor_kwargs=SETTINGS, batch_size=8)
    assert len(loads) == 1 and len(parts) == 4
    for n, part in enumerate(parts):  # ds.write_parquet: one file per block
        pq.write_table(part, tmp_path / f"{n}.parquet")
    frame = pd.read_parquet(tmp_path)
    rows = frame.to_dict("records")
    assert_cli_rows([{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()} for r in rows],
                    records, cli_run, len(paths))


# ---------------------------------------------------------------------------------------------- Spark
def test_the_spark_predict_fn_gives_one_row_per_image_as_predict_batch_udf_wants(paths, records, cli_run):
    """``predict_batch_udf(partial(spark_predict_fn, ...), return_type=spark_schema(), batch_size=...)`` on
    ``spark.read.format("binaryFile")``: columns ``content`` (bytes) and ``path`` (``file:`` URIs)."""
    from functools import partial

    make_predict_fn = partial(batch_api.spark_predict_fn, **{**SETTINGS, "methods": "smoothgrad"})
    predict = make_predict_fn()
    content = np.empty(len(paths) + 1, dtype=object)
    content[:] = [Path(p).read_bytes() for p in paths] + [b"GIF89a broken"]
    uris = np.array([f"file:{p}".replace(" ", "%20") for p in paths] + [f"file:{ROOT}/Bag/x.gif"], dtype=object)
    preds = predict(content, uris)
    # predict_batch_udf's checks: the struct's fields, 1-D scalars, 2-D arrays, one row per input row
    assert list(preds) == [name for name, _ in batch_api.SPARK_FIELDS]
    assert all(len(v) == len(content) for v in preds.values())
    assert all(v.ndim == (2 if kind.startswith("array") else 1) for (name, kind), v in
               zip(batch_api.SPARK_FIELDS, preds.values()))
    assert preds["map"].dtype == np.float32 and preds["map"].shape == (len(content), 28 * 28)
    for i, p in enumerate(paths):
        key = batch_api.key_of(p, str(ROOT))
        ref = records[(key, "smoothgrad")]
        assert preds["image"][i] == key and preds["status"][i] == "ok" and preds["settings"][i] == ref["settings"]
        assert np.array_equal(preds["map"][i].reshape(preds["map_shape"][i]), np.load(cli_run / ref["npy"]))
    assert preds["status"][-1] == "error" and preds["pred"][-1] is None and np.isnan(preds["map"][-1]).all()
    # what the pandas UDF hands to Arrow: every column converts to its Spark type, nulls included
    frame = pd.DataFrame({k: (list(v) if v.ndim == 2 else v) for k, v in preds.items()})
    arrow = {"string": pa.string(), "bigint": pa.int64(), "double": pa.float64(),
             "array<float>": pa.list_(pa.float32()), "array<int>": pa.list_(pa.int32())}
    nulls = {**dict.fromkeys(["pred", "pred_label", "prob", "target", "target_label", "score", "width", "height"],
                             1), "map_dtype": 1, "error": len(paths)}  # the broken file's; the good images' error
    for name, kind in batch_api.SPARK_FIELDS:
        column = pa.Array.from_pandas(frame[name], type=arrow[kind])
        assert column.null_count == nulls.get(name, 0), name
    # paths alone are read; a UDF per method
    alone = predict(np.array(paths[:2], dtype=object))
    assert list(alone["status"]) == ["ok", "ok"]
    with pytest.raises(UsageError, match="one UDF per method"):
        batch_api.spark_predict_fn(**SETTINGS)


def test_the_spark_ddl_names_the_fields():
    assert batch_api.SPARK_DDL.startswith("image string, method string, status string, error string, pred bigint")
    assert "map array<float>, map_shape array<int>, map_dtype string" in batch_api.SPARK_DDL


# ---------------------------------------------------------------------------------------------- Ray, for real
@pytest.mark.slow
def test_ray_data_map_batches_gives_the_cli_maps(paths, records, cli_run, tmp_path):
    """The README's recipe: ``read_images``/``read_binary_files``, ``map_batches(salcli.BatchExplainer, ...)`` on
    one actor, ``write_parquet``, read back with pandas."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        for reader in (ray.data.read_images, ray.data.read_binary_files):
            out = tmp_path / reader.__name__
            ds = reader(str(ROOT), include_paths=True)
            ds.map_batches(salcli.BatchExplainer, fn_constructor_kwargs=SETTINGS,
                           compute=ray.data.ActorPoolStrategy(size=1), batch_size=16).write_parquet(str(out))
            rows = pd.read_parquet(out).to_dict("records")
            assert_cli_rows([{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
                             for r in rows], records, cli_run, len(paths))
    finally:
        ray.shutdown()
