"""Layer maps at their own resolution (``--layer-maps native``, the default of the packed formats): Grad-CAM's 7x7
is stored as it is, its record says how to bring it to the input's size, and every reader (``load_map``,
evaluate, render, the batch API) does so with ``maps.upsample``, which is PyTorch's bilinear resize."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SAMPLES, manifest
from hypothesis import given, settings
from hypothesis import strategies as st

from salcli import maps, outputs

pq = pytest.importorskip("pyarrow.parquet")

PICKED = ["Ankle boot/t10k-00000.png", "Bag/t10k-00018.png", "Sneaker/t10k-00012.png", "Trouser/t10k-00002.png"]
UPSAMPLE = {"mode": "bilinear", "align_corners": False, "size": [28, 28]}


# ---------------------------------------------------------------------------------------------- the resize
@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), big_h=st.integers(1, 48), big_w=st.integers(1, 48),
       seed=st.integers(0, 2 ** 32 - 1), scale=st.floats(1e-6, 1e6))
def test_upsample_is_torch_bilinear_without_corners(h, w, big_h, big_w, seed, scale):
    m = (np.random.default_rng(seed).standard_normal((h, w)) * scale).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(m)[None, None], size=(big_h, big_w), mode="bilinear",
                             align_corners=False)[0, 0].numpy()
    got = maps.upsample(m, (big_h, big_w))
    assert got.dtype == np.float32 and got.shape == (big_h, big_w)
    assert np.abs(got - expected).max() <= 1e-6 * np.abs(m).max()  # float32 rounding: a few ulp of the values


def test_upsample_by_hand_and_what_a_record_asks():
    m = np.array([[0.0, 4.0]], dtype=np.float32)
    # out = 4 columns from 2: sources (j + 0.5) / 2 - 0.5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped)
    assert maps.upsample(m, (1, 4)).tolist() == [[0.0, 1.0, 3.0, 4.0]]
    same = np.ones((3, 3), np.float32)
    assert maps.upsample(same, (3, 3)) is same
    assert maps.at_input(same, {"image": "a"}) is same  # no upsample in the record: the map as stored
    assert maps.at_input(m, {"upsample": UPSAMPLE}).shape == (28, 28)
    with pytest.raises(ValueError, match="unknown upsampling"):
        maps.at_input(m, {"image": "a", "upsample": {**UPSAMPLE, "mode": "bicubic"}})
    with pytest.raises(ValueError, match="2-D"):
        maps.upsample(np.zeros((2, 2, 2)), (4, 4))


# ---------------------------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("layer") / "imgs"
    for key in PICKED:
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLES / "fashion-mnist" / key, folder / key)
    return folder


def explain(cli, images: Path, out: Path, *args, expect: int = 0):
    return cli("explain", images, "-o", out, "-m", "vanilla,gradcam", "--device", "cpu", "-q", *args, expect=expect)


@pytest.fixture(scope="module")
def runs(images, tmp_path_factory) -> dict[str, Path]:
    from conftest import Cli

    cli = Cli()
    found = {name: tmp_path_factory.mktemp(name) / "out" for name in ("files", "parquet", "files_native")}
    explain(cli, images, found["files"])  # the files format: every map at the input's size
    explain(cli, images, found["parquet"], "--format", "parquet")  # packed: layer maps native by default
    explain(cli, images, found["files_native"], "--layer-maps", "native", "--no-overlays")
    return found


def by_key(out: Path) -> dict[tuple[str, str], dict]:
    return {(r["image"], r["method"]): r for r in manifest(out)}


def test_parquet_keeps_gradcam_at_the_layers_size_and_says_how_to_resize_it(runs):
    table = pq.read_table(runs["parquet"] / "data").to_pylist()
    assert len(table) == 2 * len(PICKED)
    reference = by_key(runs["files"])
    sink = outputs.open_sink(runs["parquet"])
    for row in table:
        record = json.loads(row["record"])
        stored = np.frombuffer(row["map"], dtype=row["map_dtype"]).reshape(row["map_shape"])
        full = np.load(runs["files"] / reference[(row["image"], row["method"])]["npy"])
        if row["method"] == "gradcam":  # the builtin model's last convolution is 7x7: 196 bytes, not 3136
            assert row["map_shape"] == [7, 7] and len(row["map"]) == 7 * 7 * 4 and record["upsample"] == UPSAMPLE
            # the stored map resized as the record says is the files format's map, up to float32 rounding
            assert np.abs(maps.upsample(stored, (28, 28)) - full).max() <= 1e-6 * np.abs(full).max()
            assert np.array_equal(sink.load_map(record), maps.upsample(stored, (28, 28)))
        else:  # an input-gradient map is the input's size already: stored as the files format stores it
            assert row["map_shape"] == [28, 28] and "upsample" not in record
            assert np.array_equal(stored.view(np.uint32), full.view(np.uint32))


def test_files_format_stores_native_maps_when_asked(runs):
    recs = by_key(runs["files_native"])
    parquet = outputs.open_sink(runs["parquet"])
    for (image, method), rec in recs.items():
        saved = np.load(runs["files_native"] / rec["npy"])
        assert saved.shape == ((7, 7) if method == "gradcam" else (28, 28))
        assert rec.get("upsample") == (UPSAMPLE if method == "gradcam" else None)
        # the same map as the parquet run's, bit for bit (one engine, one array)
        assert np.array_equal(saved, parquet.read_map(by_key(runs["parquet"])[(image, method)]))
    assert outputs.open_sink(runs["files_native"]).load_map(recs[(PICKED[0], "gradcam")]).shape == (28, 28)


def test_the_setting_is_in_the_layer_methods_fingerprint_only(runs, cli, images, tmp_path):
    native, full = by_key(runs["parquet"]), by_key(runs["files"])
    for key in native:
        same = native[key]["settings"] == full[key]["settings"]
        assert same == (key[1] == "vanilla"), key
    # a rerun with the other setting redoes the layer maps only, and stores them at the input's size
    out = tmp_path / "out"
    shutil.copytree(runs["parquet"], out)
    summary = json.loads(explain(cli, images, out, "--format", "parquet", "--layer-maps", "input",
                                 "--json").stdout)
    assert summary["counts"] == {"ok": len(PICKED), "skipped": len(PICKED), "error": 0}
    sink = outputs.open_sink(out)
    assert {sink.read_map(r).shape for r in manifest(out)} == {(28, 28)}
    assert cli("verify", out).exit_code == 0


def test_render_draws_from_the_native_map_what_explain_drew(runs, cli):
    """The overlay explain packed (drawn from the 7x7 map resized) is the one render draws from a files run that
    stored the same 7x7 map without overlays."""
    out = runs["files_native"]
    cli("render", out, "-q")
    packed = outputs.open_sink(runs["parquet"])
    for (image, method), rec in by_key(runs["parquet"]).items():
        assert (out / method / f"{image}.png").read_bytes() == packed.overlay_png(rec), (image, method)


def test_evaluate_reads_native_maps_at_the_inputs_size(runs, cli):
    def scores(out: Path) -> dict:
        doc = json.loads(cli("evaluate", out, "--json", "-q", "--device", "cpu").stdout)
        return {row["method"]: row for row in doc["methods"] if row["method"] == "gradcam"}["gradcam"]

    native, full = scores(runs["parquet"]), scores(runs["files"])
    for name in ("deletion_auc", "insertion_auc", "deletion_road_auc", "stability", "max_sensitivity"):
        assert native[name] == pytest.approx(full[name], abs=1e-3), name


def test_a_bad_value_is_a_usage_error(cli, images, tmp_path):
    err = explain(cli, images, tmp_path / "o", "--layer-maps", "half", expect=2).stderr
    assert "--layer-maps takes input or native; got 'half'" in err
