"""Packed outputs (``--format parquet|webdataset``), ``--no-overlays`` and ``--map-dtype``: every format gives the
``files`` format's maps bit for bit and its records, is read without salcli (pyarrow, pandas, tarfile), resumes,
survives kill -9, merges and verifies, and feeds ``evaluate`` and ``report``."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from conftest import FIXTURES, SAMPLES, TINY_OPTS, manifest, write_images
from PIL import Image

from salcli import outputs
from salcli.outputs import journal
from salcli.outputs.sinks.parquet import Parquet
from salcli.outputs.sinks.webdataset import WebDataset, image_of, wds_key

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

PACKED = ["parquet", "webdataset"]
FORMATS = ["files", *PACKED]
METHODS = "vanilla,gradcam"
LOCATIONS = ("npy", "overlay")
# the builtin model's own images: folder names with spaces, file names with dots
PICKED = ["Ankle boot/t10k-00000.png", "Ankle boot/t10k-00023.png", "Bag/t10k-00018.png", "T-shirt-top/t10k-00019.png"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("formats") / "imgs"
    for key in PICKED:
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLES / "fashion-mnist" / key, folder / key)
    return folder


def explain(cli, images: Path, out: Path, *args, expect: int = 0) -> dict:
    """``salcli explain`` in-process with the builtin model; its --json summary. Layer maps at the input's size
    in every format, to compare them bit for bit (``--layer-maps native`` is tested on its own below)."""
    if "--layer-maps" not in args:
        args = ("--layer-maps", "input", *args)
    done = cli("explain", images, "-o", out, "-m", METHODS, "--device", "cpu", "--json", "-q", *args, expect=expect)
    return json.loads(done.stdout) if expect in (0, 1) else {}


@pytest.fixture(scope="module")
def runs(images, tmp_path_factory) -> dict[str, Path]:
    """The same images and methods written in every format."""
    from conftest import Cli

    cli, found = Cli(), {}
    for fmt in FORMATS:
        found[fmt] = tmp_path_factory.mktemp(fmt) / "out"
        explain(cli, images, found[fmt], "--format", fmt)
    return found


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def files_map(out: Path, rec: dict) -> np.ndarray:
    return np.load(out / rec["method"] / f"{rec['image']}.npy")


def without_locations(records: list[dict]) -> set[str]:
    return {json.dumps({k: v for k, v in r.items() if k not in LOCATIONS}, sort_keys=True) for r in records}


def parquet_files(out: Path) -> list[Path]:
    return sorted((out / "data").glob("*.parquet"))


def tar_files(out: Path) -> list[Path]:
    return sorted((out / "wds").glob("*.tar"))


# ---------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("fmt", PACKED)
def test_packed_maps_are_the_files_maps_bit_for_bit_and_records_the_same(runs, fmt):
    out, reference = runs[fmt], runs["files"]
    records = manifest(out)
    assert len(records) == len(PICKED) * 2 and {r["status"] for r in records} == {"ok"}
    assert without_locations(records) == without_locations(manifest(reference))
    assert json.loads((out / "run.json").read_text())["format"] == fmt
    sink = outputs.open_sink(out)
    for rec in records:
        assert sink.complete(rec)
        got = sink.load_map(rec)
        assert got.dtype == np.float32 and np.array_equal(bits(got), bits(files_map(reference, rec)))
        assert sink.overlay_png(rec) == (reference / rec["method"] / f"{rec['image']}.png").read_bytes()
    folder = {"parquet": "data", "webdataset": "wds"}[fmt]
    assert sorted(p.name for p in out.iterdir()) == sorted([".salcli.lock", "manifest.jsonl", "parts", "run.json",
                                                             folder])  # no .npy, no .png, no original/
    assert [p.name for p in (out / folder).iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_parquet_reads_without_salcli_in_pyarrow_and_pandas(runs):
    pd = pytest.importorskip("pandas")
    out, reference = runs["parquet"], runs["files"]
    [part] = parquet_files(out)
    assert part.name.startswith("part-00000-of-00001-")
    table = pq.read_table(out / "data")
    assert table.num_rows == len(PICKED) * 2
    frame = pd.read_parquet(out / "data")
    by_location = {r["npy"]: r for r in manifest(out)}
    for _, row in frame.iterrows():
        saliency = np.frombuffer(row["map"], dtype=row["map_dtype"]).reshape(row["map_shape"])  # the README's line
        rec = by_location[row["location"]]
        assert (row["image"], row["method"], row["pred"], row["target"]) == (rec["image"], rec["method"],
                                                                               rec["pred"], rec["target"])
        assert json.loads(row["record"]) == rec  # the manifest line itself
        assert np.array_equal(bits(saliency), bits(files_map(reference, rec)))
        png = reference / rec["method"] / f"{rec['image']}.png"
        assert row["overlay_png"] == png.read_bytes()
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(row["overlay_png"]))), np.asarray(Image.open(png)))
    column = table.column("map").to_pylist()  # and straight from pyarrow
    assert all(isinstance(b, bytes) and len(b) == 28 * 28 * 4 for b in column)


def test_webdataset_reads_without_salcli_in_tarfile(runs):
    out, reference = runs["webdataset"], runs["files"]
    [part] = tar_files(out)
    with tarfile.open(part) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    samples: list[tuple[str, dict[str, bytes]]] = []  # WebDataset's grouping: the key up to the basename's first dot
    for name, data in members:
        folder, _, base = name.rpartition("/")
        key = (folder + "/" if folder else "") + base.split(".", 1)[0]
        ext = base.split(".", 1)[1]
        if not samples or samples[-1][0] != key:
            samples.append((key, {}))
        samples[-1][1][ext] = data
    assert len(samples) == len({k for k, _ in samples}) == len(PICKED)  # one sample per image, members together
    records = {(r["image"], r["method"]): r for r in manifest(out)}
    for key, sample in samples:
        image = unquote(key)
        assert image in PICKED and "." not in key.rpartition("/")[2]
        assert sorted(sample) == ["gradcam.npy", "gradcam.png", "json", "vanilla.npy", "vanilla.png"]
        doc = json.loads(sample["json"])
        assert doc["image"] == image and set(doc["records"]) == {"vanilla", "gradcam"}
        for method in ("vanilla", "gradcam"):
            rec = records[(image, method)]
            assert doc["records"][method] == rec
            assert rec["npy"] == f"wds/{part.name}#{key}.{method}.npy"
            saliency = np.load(io.BytesIO(sample[f"{method}.npy"]))
            assert np.array_equal(bits(saliency), bits(files_map(reference, rec)))
            assert sample[f"{method}.png"] == (reference / method / f"{image}.png").read_bytes()


@pytest.mark.parametrize("key", ["a.b/c d.png", "x%2E.png", "ünï/ç.jpeg", "bad\udcff.png", ".hidden/..png",
                                 "~a-b_c"])
def test_webdataset_keys_hold_no_dot_and_give_the_path_back(key):
    encoded = wds_key(key)
    assert "." not in encoded and image_of(encoded) == key and encoded.count("/") == key.count("/")


# ---------------------------------------------------------------------------------------------- resume and kills
@pytest.mark.parametrize("fmt", PACKED)
def test_a_second_run_skips_everything_and_writes_no_part(cli, runs, images, fmt, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(runs[fmt], out)
    before = sorted(p.name for p in (out / ("data" if fmt == "parquet" else "wds")).iterdir())
    again = explain(cli, images, out, "--format", fmt)
    assert again["counts"] == {"ok": 0, "error": 0, "skipped": len(PICKED) * 2}
    assert sorted(p.name for p in (out / ("data" if fmt == "parquet" else "wds")).iterdir()) == before
    assert {r["npy"] for r in manifest(out)} == {r["npy"] for r in manifest(runs[fmt])}


SLOW = ["--model", f"{FIXTURES / 'tiny.py'}:build_slow", *TINY_OPTS[2:], "--batch-size", "4", "--device", "cpu"]
SMALL_PARTS = {"parquet": "from salcli.outputs.sinks.parquet import Parquet as S\n",
               "webdataset": "from salcli.outputs.sinks.webdataset import WebDataset as S\n"}


def durable(out: Path) -> int:
    """Journaled records whose part is in place (a journal line can be read before its part is renamed)."""
    lines = [json.loads(line) for p in journal.part_files(out) for _, line in journal.read_lines(p)]
    return sum(1 for r in lines if r.get("npy") and (out / r["npy"].split("#")[0]).is_file())


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("many") / "imgs"
    write_images(folder, n=40, size=16)
    return folder


@pytest.mark.parametrize("fmt", PACKED)
def test_kill_9_then_rerun_gives_every_map_once(cli, many, fmt, tmp_path):
    """Parts of about 4 rows, so that records are journaled while the run goes on; kill -9 once 8 are in place;
    the rerun (default part sizes) completes with the maps of an uninterrupted run, and the parts hold
    each (image, method) once: rows of the killed run that were never journaled were never in a finished part."""
    reference = tmp_path / "files"
    cli("explain", many, "-o", reference, *SLOW, "-q")
    out = tmp_path / "out"
    code = SMALL_PARTS[fmt] + "S.flush_rows = S.part_rows = 4\nfrom salcli.cli import run\nrun()\n"
    proc = subprocess.Popen([sys.executable, "-c", code, "explain", many, "-o", out, *SLOW, "-q", "--format", fmt])
    deadline = time.time() + 60
    while durable(out) < 8 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    done = len(outputs.read_manifest(out))
    assert 8 <= done < 40
    summary = json.loads(cli("explain", many, "-o", out, *SLOW, "-q", "--format", fmt, "--json").stdout)
    assert summary["counts"]["ok"] + summary["counts"]["skipped"] == 40 and summary["counts"]["skipped"] >= 8
    records = manifest(out)
    assert len(records) == 40 and len({r["npy"] for r in records}) == 40
    sink = outputs.open_sink(out)
    for rec in records:
        assert np.array_equal(bits(sink.load_map(rec)), bits(files_map(reference, rec)))
    if fmt == "parquet":
        rows = pq.read_table(out / "data", columns=["image", "method"]).to_pylist()
    else:
        rows = []
        for part in tar_files(out):
            with tarfile.open(part) as tar:
                rows += [m.name for m in tar.getmembers() if m.name.endswith(".npy")]
    assert len(rows) == 40  # no row twice
    assert cli("verify", out).exit_code == 0


@pytest.mark.parametrize("fmt", PACKED)
def test_journal_is_written_before_the_part_is_renamed_into_place(fmt, tmp_path):
    """The records of a part are journaled while the part exists only under its temporary name: a kill between
    the two leaves records whose part is missing, which resume redoes."""
    writer = outputs.OutputWriter(tmp_path, sink=fmt)
    for key in ("a.png", "b.png"):
        writer.submit({"image": key, "method": "vanilla", "status": "ok", "settings": "s"},
                      np.eye(3, dtype=np.float32), lambda: np.zeros((4, 4, 3), np.uint8))
    writer.drain()
    seen = []
    journal_append = writer.journal.append

    def append(lines):
        lines = list(lines)
        if lines:
            seen.append(sorted(p.name for p in (tmp_path / writer.sink.folder).iterdir()))
        journal_append(lines)

    writer.journal.append = append
    writer.close()
    [names] = seen
    assert len(names) == 1 and names[0].startswith(".part-") and names[0].endswith(".part")
    [part] = (tmp_path / writer.sink.folder).iterdir()
    recs = [writer.records[(k, "vanilla")] for k in ("a.png", "b.png")]
    assert all(writer.sink.complete(r) for r in recs)
    part.unlink()  # as if killed before the rename
    sink = type(writer.sink)(tmp_path)
    assert not any(sink.complete(r) for r in recs)


@pytest.mark.parametrize("fmt", PACKED)
def test_a_part_that_cannot_be_written_fails_its_records_only(fmt, tmp_path, monkeypatch):
    def full(self, part, rows, located):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr({"parquet": Parquet, "webdataset": WebDataset}[fmt], "_append", full)
    writer = outputs.OutputWriter(tmp_path, sink=fmt)
    writer.submit({"image": "a.png", "method": "vanilla", "status": "ok", "settings": "s"},
                  np.eye(3, dtype=np.float32), lambda: np.zeros((4, 4, 3), np.uint8))
    writer.close()
    rec = writer.records[("a.png", "vanilla")]
    assert rec["status"] == "error" and "No space left on device" in rec["error"] and rec["npy"] is None
    assert list((tmp_path / writer.sink.folder).iterdir()) == []


@pytest.mark.parametrize("fmt", PACKED)
def test_parts_roll_over_and_an_image_stays_in_one_sample(cli, images, fmt, tmp_path, monkeypatch):
    """Tiny parts: several of them, numbered in order, each readable, and a WebDataset sample (an image's maps)
    never split (flushes wait for every queued write, and a batch submits every method of its images)."""
    cls = {"parquet": Parquet, "webdataset": WebDataset}[fmt]
    monkeypatch.setattr(cls, "flush_rows", 2)
    monkeypatch.setattr(cls, "part_rows", 2)
    out = tmp_path / "out"
    explain(cli, images, out, "--format", fmt, "--batch-size", "1")
    parts = parquet_files(out) if fmt == "parquet" else tar_files(out)
    assert len(parts) >= 2
    assert [p.name.rsplit("-", 1)[1] for p in parts] == [f"{i:05d}{cls.suffix}" for i in range(len(parts))]
    sink = outputs.open_sink(out)
    records = manifest(out)
    assert {r["npy"].split("#")[0] for r in records} == {f"{cls.folder}/{p.name}" for p in parts}
    for rec in records:
        assert sink.complete(rec) and sink.load_map(rec).shape == (28, 28)
    if fmt == "webdataset":
        keys = []
        for part in parts:
            with tarfile.open(part) as tar:
                names = [m.name.rpartition("/")[2].split(".")[0] for m in tar.getmembers()]
            keys += [k for i, k in enumerate(names) if i == 0 or names[i - 1] != k]
        assert sorted(keys) == sorted(wds_key(k).rpartition("/")[2] for k in PICKED)  # each sample once, whole


# -------------------------------------------------------------------------------------------- shards, evaluate, report
@pytest.mark.parametrize("fmt", PACKED)
def test_two_shards_merge_and_verify(cli, images, fmt, tmp_path):
    out, reference = tmp_path / "out", tmp_path / "files"  # the same shards (the same batches) in files
    for shard in ("0/2", "1/2"):
        explain(cli, images, out, "--format", fmt, "--shard", shard)
        explain(cli, images, reference, "--shard", shard)
    assert not (out / "manifest.jsonl").exists()
    cli("merge", out, "-q")
    cli("verify", out, "-q")
    cli("merge", reference, "-q")
    records = manifest(out)
    assert without_locations(records) == without_locations(manifest(reference))
    tags = {"-".join(r["npy"].split("/", 1)[1].split("-")[1:4]) for r in records}
    assert tags == {"00000-of-00002", "00001-of-00002"}  # each shard writes its own parts
    sink = outputs.open_sink(out)
    for rec in records:
        assert np.array_equal(bits(sink.load_map(rec)), bits(files_map(reference, rec)))
    lost = records[0]["npy"].split("#")[0]
    (out / lost).unlink()  # a part lost after the run: verify says which maps went with it
    err = cli("verify", out, expect=1).stderr
    assert "outputs missing: " in err and records[0]["image"] in err


def test_evaluate_reads_the_maps_of_a_parquet_run(runs):
    from salcli.evaluation import EvalOptions, evaluate

    opts = EvalOptions(methods=("vanilla",), skip=frozenset({"stability", "deletion_road", "insertion"}), steps=4)
    packed, files = evaluate(runs["parquet"], opts), evaluate(runs["files"], opts)
    assert packed.rows == files.rows and packed.per_image == files.per_image
    assert packed.rows[0]["deletion_auc"] is not None


@pytest.mark.parametrize("fmt", PACKED)
def test_report_copies_packed_overlays_out_for_the_browser(cli, runs, fmt, tmp_path):
    import re

    out = tmp_path / "out"
    shutil.copytree(runs[fmt], out)
    cli("report", out, "-q")
    html = (out / "report.html").read_text()
    links = re.findall(r'<img class="ov" [^>]*src="([^"]*)"', html)
    assert len(links) == len(PICKED) * 2 and all(s.startswith("report_files/") for s in links)
    assert "overlay missing" not in html
    for rec in manifest(out):
        copied = out / "report_files" / rec["method"] / f"{rec['image']}.png"
        assert copied.read_bytes() == (runs["files"] / rec["method"] / f"{rec['image']}.png").read_bytes()


# ------------------------------------------------------------------------------------------- --no-overlays, --map-dtype
@pytest.mark.parametrize("fmt", FORMATS)
def test_no_overlays_stores_maps_only_and_resumes(cli, images, runs, fmt, tmp_path):
    out = tmp_path / "out"
    explain(cli, images, out, "--format", fmt, "--no-overlays")
    records = manifest(out)
    assert {r["overlay"] for r in records} == {None} and all(r["npy"] for r in records)
    assert not list(out.rglob("*.png")) and not (out / "original").exists()
    if fmt == "parquet":
        assert pq.read_table(out / "data", columns=["overlay_png"]).column(0).null_count == len(records)
    if fmt == "webdataset":
        with tarfile.open(tar_files(out)[0]) as tar:
            assert not [m for m in tar.getnames() if m.endswith(".png")]
    sink = outputs.open_sink(out)
    for rec in records:
        assert np.array_equal(bits(sink.load_map(rec)), bits(files_map(runs["files"], rec)))
    assert explain(cli, images, out, "--format", fmt, "--no-overlays")["counts"]["skipped"] == len(records)
    cli("report", out, "-q")
    html = (out / "report.html").read_text()
    assert "no overlay" in html and "overlay missing" not in html
    # the overlays option is part of the settings: a run that draws them redoes every map
    assert explain(cli, images, out, "--format", fmt)["counts"]["ok"] == len(records)


def test_no_overlays_over_a_files_run_removes_its_overlays(cli, images, runs, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(runs["files"], out)
    explain(cli, images, out, "--no-overlays")
    assert not list(out.glob("*/*/*.png"))  # no overlay stays beside a map it was not drawn from


@pytest.mark.parametrize("fmt", FORMATS)
def test_float16_maps_are_stored_as_float16_and_read_back_as_float32(cli, images, runs, fmt, tmp_path):
    out = tmp_path / "out"
    explain(cli, images, out, "--format", fmt, "--map-dtype", "float16")
    records = manifest(out)
    assert {r["settings"] for r in records}.isdisjoint({r["settings"] for r in manifest(runs["files"])})
    if fmt == "files":
        assert {np.load(out / r["npy"]).dtype for r in records} == {np.dtype(np.float16)}
    if fmt == "parquet":
        assert set(pq.read_table(out / "data", columns=["map_dtype"]).column(0).to_pylist()) == {"float16"}
    if fmt == "webdataset":
        with tarfile.open(tar_files(out)[0]) as tar:
            dtypes = {np.load(io.BytesIO(tar.extractfile(m).read())).dtype for m in tar if m.name.endswith(".npy")}
        assert dtypes == {np.dtype(np.float16)}
    sink = outputs.open_sink(out)
    for rec in records:
        got, full = sink.load_map(rec), files_map(runs["files"], rec)
        assert got.dtype == np.float32
        assert np.array_equal(bits(got), bits(full.astype(np.float16).astype(np.float32)))  # float16 rounding only
        np.testing.assert_allclose(got, full, rtol=2 ** -10, atol=6e-8)


# ---------------------------------------------------------------------------------------------- options
def test_format_options_are_checked_before_any_work(cli, images, tmp_path, monkeypatch):
    err = cli("explain", images, "-o", tmp_path / "a", "--format", "parket", expect=2).stderr
    assert "unknown output format 'parket'" in err and "Did you mean 'parquet'?" in err
    assert "Output formats: files, parquet, webdataset" in " ".join(err.split())
    err = cli("explain", images, "-o", tmp_path / "b", "--map-dtype", "float64", expect=2).stderr
    assert "--map-dtype takes float32 or float16" in err
    err = cli("explain", images, "-o", tmp_path / "c", "--format", "parquet", "--scale", "run", expect=2).stderr
    assert "--scale run" in err and "--format" in err
    preset = tmp_path / "p.toml"
    preset.write_text('format = "webdataset"\noverlays = false\nmap_dtype = "float16"\n')
    from salcli.config import build_config

    config = build_config({"config_file": preset})
    assert (config.format, config.overlays, config.map_dtype) == ("webdataset", False, "float16")
    preset.write_text('format = "tar"\n')
    assert "unknown output format 'tar'" in cli("explain", images, "-o", tmp_path / "d", "--config", preset,
                                                expect=2).stderr
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))
    err = cli("explain", images, "-o", tmp_path / "e", "--format", "parquet", expect=2).stderr
    assert "pip install 'salcli[parquet]'" in err
    assert not any((tmp_path / n).exists() for n in "abcde")


@pytest.mark.parametrize("fmt", PACKED)
def test_a_location_read_back_never_leaves_the_parts_folder(fmt, tmp_path):
    sink = outputs.sinks.get(fmt)(tmp_path / "out")
    folder = sink.folder
    (tmp_path / "x.parquet").write_bytes(b"")
    for bad in [f"{folder}/../../x.parquet#row=0", f"/{folder}/part-0.parquet#row=0", "../x.tar#a.vanilla.npy",
                f"{folder}/sub/part-0{sink.suffix}#row=0", f"{folder}/part-0{sink.suffix}", None, 3]:
        rec = {"image": "a", "method": "vanilla", "npy": bad, "overlay": None}
        assert not sink.complete(rec)
        with pytest.raises((ValueError, OSError)):
            sink.load_map(rec)
    assert os.listdir(tmp_path) == ["x.parquet"]


def test_no_overlays_builds_no_picture_but_keeps_the_size(tmp_path):
    """Without overlays the workers do not scale a display copy of each picture (70% of the decoding of a
    3000x2000 JPEG), and the records still hold the original's width and height."""
    from PIL import Image

    from salcli import images
    from salcli.config import Preprocess

    Image.new("RGB", (300, 200), (10, 20, 30)).save(tmp_path / "a.png")
    item = images.discover([tmp_path])[0]
    pre = Preprocess(resize=32, crop=28)
    bare = images.ImageDataset([item], pre, display=None)[0]
    assert "picture" not in bare and bare["size"] == (300, 200)
    shown = images.ImageDataset([item], pre, display=64)[0]
    assert shown["picture"].shape[:2] == (43, 64) and shown["size"] == (300, 200)
