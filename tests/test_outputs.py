"""The writer: whole files or none, failures isolated per file, interruption leaves a resumable OUT."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY_OPTS, manifest

from salcli import outputs
from salcli.methods.gradient import Vanilla


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "sub" / "a.npy"
    with pytest.raises(RuntimeError):
        with outputs.atomic_path(final) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert not final.exists() and list((tmp_path / "sub").iterdir()) == []
    outputs.write_npy(final, np.ones((2, 3)))
    assert np.load(final).dtype == np.float32 and list((tmp_path / "sub").iterdir()) == [final]


def test_outputs_get_the_permissions_open_would_give(tmp_path):
    import os

    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    outputs.write_bytes(tmp_path / "atomic", b"x")  # not mkstemp's private 0600
    assert os.stat(tmp_path / "atomic").st_mode & 0o777 == os.stat(plain).st_mode & 0o777


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1), (3, 4, 3), (2, 2, 4), (1, 1, 3), (9, 1, 3)])
def test_png_bytes_decode_to_the_same_pixels_in_pillow(shape):
    import io

    from PIL import Image

    pixels = np.random.default_rng(sum(shape)).integers(0, 256, size=shape, dtype=np.uint8)
    back = np.asarray(Image.open(io.BytesIO(outputs.png_bytes(pixels))))
    assert back.size == pixels.size and np.array_equal(back.reshape(pixels.shape), pixels)


def test_png_bytes_compress_an_overlay_about_as_well_as_pillow():
    import io

    from PIL import Image

    from salcli import render

    yy, xx = np.mgrid[:64, :64]
    photo = np.stack([(xx * 4) % 256, (yy * 4) % 256, (xx + yy) % 256], axis=2).astype(np.uint8)
    overlay = render.overlay(photo, np.exp(-((yy - 30) ** 2 + (xx - 20) ** 2) / 200.0), caption="pred cat 90%")
    ours = outputs.png_bytes(overlay)
    buf = io.BytesIO()
    Image.fromarray(overlay).save(buf, format="PNG", compress_level=outputs.PNG_COMPRESS_LEVEL)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(ours))), overlay)
    assert len(ours) < 1.25 * len(buf.getvalue())


def test_png_bytes_refuse_what_png_cannot_hold():
    for bad in (np.zeros((0, 4, 3), np.uint8), np.zeros((4, 4, 2), np.uint8), np.zeros(4, np.uint8)):
        with pytest.raises(ValueError, match="cannot write an image of shape"):
            outputs.png_bytes(bad)


def test_paths_cannot_escape_out(tmp_path):
    with pytest.raises(ValueError):
        outputs._safe_join(tmp_path, "vanilla/../../x.npy")


def test_a_failed_write_is_an_error_record_and_leaves_no_partial_file(cli, images_dir, tmp_path, monkeypatch):
    real = outputs.write_png

    def flaky(final, image):
        if final.name == "img02.png.png":
            raise OSError("no space left on device")
        real(final, image)

    monkeypatch.setattr(outputs, "write_png", flaky)
    out = tmp_path / "o"
    cli("explain", images_dir, "-o", out, *TINY_OPTS, expect=1)
    records = {r["image"]: r for r in manifest(out)}
    assert records["img02.png"]["status"] == "error" and "no space" in records["img02.png"]["error"]
    assert not (out / "vanilla" / "img02.png.npy").exists()  # never half a pair that looks complete
    assert sum(r["status"] == "ok" for r in records.values()) == 5
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]
    monkeypatch.setattr(outputs, "write_png", real)
    summary = json.loads(cli("explain", images_dir, "-o", out, *TINY_OPTS, "--json").stdout)
    assert summary["counts"] == {"ok": 1, "error": 0, "skipped": 5}


def test_a_model_failure_fails_its_batch_only(cli, images_dir, tmp_path, monkeypatch):
    real = Vanilla.attribute
    calls = []

    def failing_once(self, model, x, target, ctx):
        calls.append(len(ctx.keys))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real(self, model, x, target, ctx)

    monkeypatch.setattr(Vanilla, "attribute", failing_once)
    out = tmp_path / "o"
    cli("explain", images_dir, "-o", out, *TINY_OPTS, "--batch-size", "2", expect=1)
    status = [r["status"] for r in manifest(out)]
    assert status == ["error", "error", "ok", "ok", "ok", "ok"]
    assert "boom" in manifest(out)[0]["error"] and manifest(out)[0]["pred"] is not None


def test_interrupted_run_keeps_whole_files_and_resumes(cli, images_dir, tmp_path, monkeypatch):
    real = Vanilla.attribute
    calls = []

    def interrupt_on_third_batch(self, model, x, target, ctx):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, model, x, target, ctx)

    monkeypatch.setattr(Vanilla, "attribute", interrupt_on_third_batch)
    out = tmp_path / "o"
    result = cli("explain", images_dir, "-o", out, *TINY_OPTS, "--batch-size", "2", expect=130)
    assert "resume" in result.stderr
    assert [r["image"] for r in manifest(out)] == [f"img{i:02d}.png" for i in range(4)]
    assert json.loads((out / "run.json").read_text())["interrupted"] is True
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]
    monkeypatch.setattr(Vanilla, "attribute", real)
    summary = json.loads(cli("explain", images_dir, "-o", out, *TINY_OPTS, "--batch-size", "2", "--json").stdout)
    assert summary["counts"] == {"ok": 2, "error": 0, "skipped": 4}


def test_manifest_merges_other_images(tmp_path):
    w = outputs.OutputWriter(tmp_path)
    w.add({"image": "a.png", "method": "vanilla", "status": "ok"})
    w.write_manifest()
    w2 = outputs.OutputWriter(tmp_path)
    w2.add({"image": "b.png", "method": "vanilla", "status": "error"})
    w2.write_manifest()
    assert [r["image"] for r in manifest(tmp_path)] == ["a.png", "b.png"]
