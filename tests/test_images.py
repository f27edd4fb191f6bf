"""Image discovery, safe decoding, preprocessing, the never-raising dataset, and a CLI run over bad files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_OPTS, manifest
from salcli.config import Preprocess
from salcli.errors import UsageError
from salcli.images import (ImageDataset, ImageError, ImageItem, collate, decode, discover, normalize, normalize_batch,
                           prepare)


def _png(path: Path, size=(4, 4), color=(10, 20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _keys(items) -> list[str]:
    return [it.key for it in items]


# ---------------------------------------------------------------------------------------------- discovery
def test_discover_recursive_sorted_any_case_extensions(tmp_path):
    names = ["A.JPG", "b.PnG", "c.jpeg", "d.bmp", "e.GIF", "f.tif", "g.TIFF", "h.webp",
             "sub/z.png", "sub/deeper/y.Jpg", "Z.png"]
    for n in names:
        p = tmp_path / n
        p.parent.mkdir(parents=True, exist_ok=True)
        fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".gif": "GIF", ".tif": "TIFF",
               ".tiff": "TIFF", ".webp": "WEBP"}[p.suffix.lower()]
        Image.new("RGB", (4, 4)).save(p, format=fmt)
    for junk in ("notes.txt", "x.png.bak", "README", "sub/data.npy", "sub/model.pt"):
        (tmp_path / junk).write_text("not an image")
    items = discover([tmp_path])
    assert _keys(items) == sorted(names)
    assert all(isinstance(it, ImageItem) for it in items)
    assert all("\\" not in it.key and not it.key.startswith("/") for it in items)
    assert items[_keys(items).index("sub/deeper/y.Jpg")].path.resolve() == (tmp_path / "sub/deeper/y.Jpg").resolve()


def test_discover_symlinked_folder_visited_once(tmp_path):
    _png(tmp_path / "real" / "x.png")
    _png(tmp_path / "real" / "inner" / "y.png")
    os.symlink(tmp_path / "real", tmp_path / "link", target_is_directory=True)
    items = discover([tmp_path])
    assert len(items) == 2, _keys(items)
    assert len({it.path.resolve() for it in items}) == 2
    assert sorted(Path(k).name for k in _keys(items)) == ["x.png", "y.png"]


def test_discover_symlink_cycle_terminates_without_duplicates(tmp_path):
    root = tmp_path / "root"
    _png(root / "top.png")
    _png(root / "sub" / "a.png")
    os.symlink(root, root / "sub" / "loop", target_is_directory=True)  # points at a parent
    os.symlink(root / "sub", root / "sub" / "self", target_is_directory=True)  # points at itself
    items = discover([root])
    assert _keys(items) == ["sub/a.png", "top.png"]


def test_discover_skips_the_excluded_output_folder(tmp_path):
    _png(tmp_path / "cat.png")
    out = tmp_path / "out"
    _png(out / "vanilla" / "cat.png.png")
    _png(out / "nested" / "deep.jpg")
    assert _keys(discover([tmp_path], exclude=out)) == ["cat.png"]
    # without exclude the output folder is an ordinary folder
    assert "out/vanilla/cat.png.png" in _keys(discover([tmp_path]))


def test_discover_several_inputs_keep_distinct_keys(tmp_path):
    _png(tmp_path / "a" / "x.png", color=(1, 1, 1))
    _png(tmp_path / "b" / "x.png", color=(2, 2, 2))
    items = discover([tmp_path / "a", tmp_path / "b"])
    assert _keys(items) == ["a/x.png", "b/x.png"]
    assert items[0].path.resolve() == (tmp_path / "a" / "x.png").resolve()
    assert items[1].path.resolve() == (tmp_path / "b" / "x.png").resolve()


def test_discover_same_named_files_from_two_folders_stay_distinct(tmp_path):
    a = _png(tmp_path / "a" / "x.png")
    b = _png(tmp_path / "b" / "x.png")
    assert _keys(discover([a, b])) == ["a/x.png", "b/x.png"]
    assert _keys(discover([tmp_path / "a", b])) == ["a/x.png", "b/x.png"]


def test_discover_single_file_key_is_its_name(tmp_path):
    f = _png(tmp_path / "deep" / "dir" / "photo.PNG")
    items = discover([f])
    assert _keys(items) == ["photo.PNG"]
    assert items[0].path.resolve() == f.resolve()


def test_discover_missing_input_is_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        discover([tmp_path / "nope"])
    with pytest.raises(UsageError):
        discover([])


# ---------------------------------------------------------------------------------------------- decoding
def test_decode_16bit_gray_is_scaled_not_clipped(tmp_path):
    arr = np.array([[65535, 32768], [1000, 0]], dtype=np.uint16)
    im16 = Image.fromarray(arr)
    assert im16.mode.startswith("I;16")
    p = tmp_path / "g16.png"
    im16.save(p)
    im = decode(p)
    assert im.mode == "L"
    got = np.asarray(im).astype(int)
    assert got[0, 0] == 255
    assert abs(got[0, 1] - 128) <= 1
    assert abs(got[1, 0] - 4) <= 1
    assert got[1, 1] == 0


def test_decode_16bit_gray_low_values_are_not_treated_as_8bit(tmp_path):
    arr = np.full((3, 3), 200, dtype=np.uint16)  # 200/65535 of full scale: nearly black
    p = tmp_path / "dark16.png"
    Image.fromarray(arr).save(p)
    assert np.asarray(decode(p)).max() <= 1


@pytest.mark.parametrize("fmt,ext,tol", [("JPEG", "jpg", 12), ("TIFF", "tif", 0)])
def test_decode_cmyk_to_rgb(tmp_path, fmt, ext, tol):
    im = Image.new("CMYK", (8, 8), (0, 0, 0, 0))  # no ink: white
    im.paste((255, 0, 0, 0), (0, 0, 4, 8))  # left half cyan
    p = tmp_path / f"cmyk.{ext}"
    im.save(p, format=fmt)
    out = decode(p)
    assert out.mode == "RGB"
    a = np.asarray(out).astype(int)
    assert a.shape == (8, 8, 3)
    assert np.abs(a[4, 6] - [255, 255, 255]).max() <= tol
    assert np.abs(a[4, 1] - [0, 255, 255]).max() <= tol


def test_decode_palette_with_transparency_composited_on_black(tmp_path):
    im = Image.new("P", (4, 2), 0)
    im.putpalette([255, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)  # 0 red, 1 green
    im.paste(1, (2, 0, 4, 2))
    p = tmp_path / "pal.png"
    im.save(p, transparency=0)  # red is transparent
    out = decode(p)
    assert out.mode == "RGB"
    a = np.asarray(out)
    assert (a[:, :2] == 0).all()
    assert (a[:, 2:] == [0, 255, 0]).all()


def test_decode_rgba_alpha_composited_on_black(tmp_path):
    arr = np.zeros((2, 2, 4), np.uint8)
    arr[0, 0] = (200, 100, 50, 0)
    arr[0, 1] = (200, 100, 50, 255)
    arr[1, 0] = (200, 100, 50, 128)
    arr[1, 1] = (255, 255, 255, 255)
    p = tmp_path / "rgba.png"
    Image.fromarray(arr, "RGBA").save(p)
    out = decode(p)
    assert out.mode == "RGB"
    a = np.asarray(out).astype(int)
    assert (a[0, 0] == 0).all()
    assert (a[0, 1] == [200, 100, 50]).all()
    assert np.abs(a[1, 0] - [100, 50, 25]).max() <= 1
    assert (a[1, 1] == 255).all()


def test_decode_la(tmp_path):
    arr = np.array([[[200, 0], [200, 255]]], np.uint8)  # (1, 2, 2): L, A
    p = tmp_path / "la.png"
    Image.fromarray(arr, "LA").save(p)
    out = decode(p)
    assert out.mode in ("RGB", "L")
    a = np.asarray(out.convert("RGB")).astype(int)
    assert (a[0, 0] == 0).all()
    assert (a[0, 1] == 200).all()


def test_decode_bilevel_and_gray(tmp_path):
    one = Image.new("1", (4, 4), 0)
    one.paste(1, (0, 0, 2, 4))
    p1 = tmp_path / "bw.png"
    one.save(p1)
    out = decode(p1)
    assert out.mode == "L"
    a = np.asarray(out)
    assert (a[:, :2] == 255).all() and (a[:, 2:] == 0).all()

    g = tmp_path / "gray.png"
    Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4) * 10, "L").save(g)
    out = decode(g)
    assert out.mode == "L"
    np.testing.assert_array_equal(np.asarray(out), np.arange(16, dtype=np.uint8).reshape(4, 4) * 10)


def test_decode_applies_exif_orientation(tmp_path):
    im = Image.new("RGB", (20, 10), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 5, 10))  # left quarter white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif, quality=95)
    out = decode(p)
    assert out.size == (10, 20)
    a = np.asarray(out.convert("L")).astype(int)
    # the stored left edge becomes the displayed top edge after a 90-degree clockwise turn
    assert a[:4].mean() > 200 and a[-4:].mean() < 50


@pytest.fixture(scope="module")
def bomb_png(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (12000, 12000), 0).save(p, optimize=False)
    return p


def test_decode_refuses_decompression_bomb(bomb_png):
    with pytest.raises(ImageError, match="(?i)bomb|pixels"):
        decode(bomb_png)


def _jpeg_bytes(tmp_path: Path) -> bytes:
    p = tmp_path / "full.jpg"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(p, quality=90)
    return p.read_bytes()


def test_decode_truncated_jpeg(tmp_path):
    data = _jpeg_bytes(tmp_path)
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="(?i)truncat|corrupt"):
        decode(p)


def test_decode_empty_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        decode(p)


def test_decode_text_renamed_png(tmp_path):
    p = tmp_path / "text.png"
    p.write_text("hello, I am definitely not a PNG\n" * 4)
    with pytest.raises(ImageError, match="not an image"):
        decode(p)


# ---------------------------------------------------------------------------------------------- prepare
@pytest.mark.parametrize("channels", [1, 3])
def test_prepare_shape_and_dtype(channels):
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 45, 3), dtype=np.uint8))
    pre = Preprocess(resize=16, crop=12, mean=(0.5,), std=(0.25,), channels=channels)
    px = prepare(im, pre)
    assert px.shape == (12, 12, channels)
    assert px.dtype == np.uint8


def test_prepare_center_crop_after_short_side_resize():
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (20, 0, 40, 20))  # right half blue
    pre = Preprocess(resize=10, crop=10, channels=3, interpolation="nearest")
    px = prepare(im, pre)
    assert px.shape == (10, 10, 3)
    assert (px[:, :5] == [255, 0, 0]).all()
    assert (px[:, 5:] == [0, 0, 255]).all()


def test_prepare_gray_source_to_rgb_and_rgb_to_luma():
    gray = Image.new("L", (8, 8), 77)
    px = prepare(gray, Preprocess(resize=8, crop=8, channels=3))
    assert px.shape == (8, 8, 3) and (px == 77).all()
    rgb = Image.new("RGB", (8, 8), (100, 100, 100))
    px = prepare(rgb, Preprocess(resize=8, crop=8, mean=(0.0,), std=(1.0,), channels=1))
    assert px.shape == (8, 8, 1) and (px == 100).all()


def test_normalize_matches_formula():
    rng = np.random.default_rng(3)
    px = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    pre = Preprocess(resize=6, crop=5, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    x = normalize(px, pre)
    assert x.dtype == np.float32 and x.shape == (3, 5, 6)
    mean, std = np.array(pre.mean), np.array(pre.std)
    want = ((px.astype(np.float64) / 255.0 - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-5)

    one = Preprocess(resize=6, crop=5, mean=(0.5,), std=(0.25,), channels=3)
    np.testing.assert_allclose(normalize(px, one), ((px / 255.0 - 0.5) / 0.25).transpose(2, 0, 1),
                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- dataset
def test_dataset_records_errors_instead_of_raising(tmp_path):
    good = _png(tmp_path / "good.png", size=(20, 23))
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    missing = tmp_path / "gone.png"  # deleted between discovery and decoding
    pre = Preprocess(resize=16, crop=16, mean=(0.5,), std=(0.25,))
    ds = ImageDataset([ImageItem(good, "good.png"), ImageItem(bad, "bad.png"), ImageItem(empty, "empty.jpg"),
                       ImageItem(missing, "gone.png")], pre)
    assert len(ds) == 4
    ok = ds[0]
    assert "error" not in ok and ok["key"] == "good.png" and ok["index"] == 0
    assert ok["pixels"].shape == (16, 16, 3) and ok["pixels"].dtype == np.uint8
    for i in (1, 2, 3):
        rec = ds[i]
        assert rec["index"] == i and rec["key"] == ds.items[i].key
        assert isinstance(rec["error"], str) and rec["error"].strip()
        assert "pixels" not in rec
    batch = collate([ds[i] for i in range(4)])
    assert batch["pixels"].shape == (1, 16, 16, 3) and [g["key"] for g in batch["good"]] == ["good.png"]
    assert [e["key"] for e in batch["errors"]] == ["bad.png", "empty.jpg", "gone.png"]
    assert collate([ds[1]])["pixels"] is None


@pytest.mark.parametrize("channels", [1, 3])
def test_normalization_gives_the_float32_values_numpy_gives(channels):
    import torch

    pre = Preprocess(resize=8, crop=8, channels=channels, mean=(0.485, 0.456, 0.406)[:channels],
                     std=(0.229, 0.224, 0.225)[:channels])
    pixels = np.random.default_rng(channels).integers(0, 256, size=(3, 8, 8, channels), dtype=np.uint8)
    batch = normalize_batch(torch.from_numpy(pixels), pre)
    mean, std = (np.asarray(v, np.float32)[None, :, None, None] for v in (pre.mean, pre.std))
    expected = (pixels.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255.0) - mean) / std  # numpy, float32
    assert batch.dtype == torch.float32 and batch.shape == (3, channels, 8, 8)
    assert np.array_equal(batch.numpy(), expected)  # the same float32 operations in the same order
    assert np.array_equal(np.stack([normalize(p, pre) for p in pixels]), expected)


# ---------------------------------------------------------------------------------------------- end to end
def _write_zoo(folder: Path, bomb_png: Path) -> tuple[list[str], list[str]]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    rgb = lambda: rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)  # noqa: E731

    good = []
    Image.fromarray(rgb()).convert("CMYK").save(folder / "cmyk.jpg"); good.append("cmyk.jpg")
    Image.fromarray(rgb()).convert("CMYK").save(folder / "cmyk.tif"); good.append("cmyk.tif")
    Image.fromarray(rng.integers(0, 65536, (20, 20), dtype=np.uint16)).save(folder / "deep16.png")
    good.append("deep16.png")
    pal = Image.fromarray(rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pal.save(folder / "palette.png", transparency=0); good.append("palette.png")
    rgba = np.concatenate([rgb(), rng.integers(0, 256, (20, 24, 1), dtype=np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png"); good.append("rgba.png")
    Image.fromarray(rgb()[:, :, 0], "L").save(folder / "gray.png"); good.append("gray.png")
    Image.fromarray(rgb()).save(folder / "same.png"); good.append("same.png")
    Image.fromarray(rgb()).save(folder / "same.jpg"); good.append("same.jpg")
    (folder / "sub").mkdir()
    Image.fromarray(rgb()).save(folder / "sub" / "nested.webp"); good.append("sub/nested.webp")

    bad = []
    full = folder / "_tmp.jpg"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full, quality=90)
    data = full.read_bytes()
    full.unlink()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2]); bad.append("truncated.jpg")
    (folder / "empty.png").write_bytes(b""); bad.append("empty.png")
    (folder / "text.png").write_text("this is text\n"); bad.append("text.png")
    shutil.copyfile(bomb_png, folder / "bomb.png"); bad.append("bomb.png")
    (folder / "notes.txt").write_text("ignored, not an image extension")
    return good, bad


def test_cli_survives_a_folder_of_broken_and_unusual_images(cli, tmp_path, bomb_png):
    folder, out = tmp_path / "zoo", tmp_path / "out"
    good, bad = _write_zoo(folder, bomb_png)
    cli("explain", folder, "-o", out, *TINY_OPTS, "--device", "cpu", expect=1)

    for name in good:
        npy, png = out / "vanilla" / f"{name}.npy", out / "vanilla" / f"{name}.png"
        assert npy.is_file() and png.is_file(), name
        m = np.load(npy)
        assert m.shape == (16, 16) and m.dtype == np.float32 and np.isfinite(m).all(), name
        with Image.open(png) as im:
            assert im.mode == "RGB" and min(im.size) >= 16
    assert not np.array_equal(np.load(out / "vanilla" / "same.png.npy"), np.load(out / "vanilla" / "same.jpg.npy"))

    records = {(r["image"], r["method"]): r for r in manifest(out)}
    assert set(records) == {(n, "vanilla") for n in good + bad}
    for name in good:
        r = records[(name, "vanilla")]
        assert r["status"] == "ok" and r["error"] is None, r
        assert r["npy"] == f"vanilla/{name}.npy" and r["overlay"] == f"vanilla/{name}.png"
    for name in bad:
        r = records[(name, "vanilla")]
        assert r["status"] == "error", r
        assert isinstance(r["error"], str) and r["error"].strip(), r
        assert not (out / "vanilla" / f"{name}.npy").exists()
        assert not (out / "vanilla" / f"{name}.png").exists()
    assert "bomb" in records[("bomb.png", "vanilla")]["error"].lower()

    leftovers = [p for p in (out / "vanilla").rglob("*") if p.name.endswith(".part") or p.name.startswith(".")]
    assert leftovers == []


# ---------------------------------------------------------------------------------------------- display picture
def test_dataset_gives_the_original_capped_for_display_and_its_size(tmp_path):
    rng = np.random.default_rng(3)
    big = tmp_path / "big.png"
    Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(big)  # 300 wide, 200 high
    gray = tmp_path / "gray.png"
    Image.fromarray(rng.integers(0, 256, (20, 24), dtype=np.uint8), "L").save(gray)
    pre = Preprocess(resize=16, crop=16, mean=(0.5,), std=(0.25,))
    items = [ImageItem(big, "big.png"), ImageItem(gray, "gray.png")]
    plain = ImageDataset(items, pre)
    shown = ImageDataset(items, pre, display=100)
    assert "picture" not in plain[0] and plain[0]["size"] == (300, 200)  # the picture only when asked for
    rec = shown[0]
    assert rec["size"] == (300, 200)
    assert rec["picture"].shape == (67, 100, 3) and rec["picture"].dtype == np.uint8  # long side capped at 100
    assert np.array_equal(rec["pixels"], plain[0]["pixels"])  # the model's input does not change
    small = shown[1]
    assert small["size"] == (24, 20) and small["picture"].shape == (20, 24, 1)  # never scaled up; gray stays gray
    assert np.array_equal(small["picture"][:, :, 0], np.asarray(Image.open(gray)))
    batch = collate([shown[0], shown[1]])
    assert [g["size"] for g in batch["good"]] == [(300, 200), (24, 20)]
    assert batch["good"][0]["picture"].shape == (67, 100, 3) and batch["pixels"].shape == (2, 16, 16, 3)
    assert "picture" not in collate([plain[0]])["good"][0]


def test_picture_of_a_huge_image_is_bounded():
    from salcli.images import picture

    im = Image.new("RGB", (6000, 4000), (10, 20, 30))
    out = picture(im, 512)
    assert out.shape == (341, 512, 3) and (out == (10, 20, 30)).all()


# ---------------------------------------------------------------------------------------------- hostile files
# Each of these failed before the fix it pins (found by tests/test_fuzz_images.py and by hand).
@pytest.mark.parametrize("mode", ["L", "CMYK", "I;16", "RGBA", "P"])
def test_decode_turns_an_uncompressed_tiff_by_its_orientation(tmp_path, mode):
    """Pillow skipped the EXIF orientation of uncompressed TIFFs in these modes when it opened them by name (its
    memory-mapped path); salcli reads through an open file, which takes the ordinary path."""
    im = Image.new("RGB", (7, 5), (200, 100, 50))
    im = im.convert(mode) if mode != "I;16" else Image.fromarray(np.full((5, 7), 4000, np.uint16))
    exif = Image.Exif()
    exif[0x0112] = 6  # a quarter turn clockwise to display
    p = tmp_path / "turned.tif"
    im.save(p, exif=exif, compression="raw")
    assert decode(p).size == (5, 7)


def test_prepare_of_an_extreme_strip_is_fast_and_small(tmp_path):
    """A 1 x 4,000,000 PNG is a 35 kB file; resizing its short side to 16 px made 16 x 64,000,000 pixels (16 s and
    6.7 GB of memory). Only the crop's region is resampled now (0.3 s)."""
    import struct
    import zlib

    from limits import time_limit

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    rows = bytes(np.stack([np.zeros(4_000_000, np.uint8), np.arange(4_000_000) % 251], 1).astype(np.uint8))
    p = tmp_path / "strip.png"  # 1 wide, 4,000,000 high, 8-bit gray: a filter byte and a pixel per row
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 4_000_000, 8, 0, 0, 0, 0))
                  + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    pre = Preprocess(resize=16, crop=16, mean=(0.5,), std=(0.25,))
    with time_limit(8, "prepare of a 1 x 4,000,000 strip"):
        px = prepare(decode(p), pre)
    assert px.shape == (16, 16, 3) and px.dtype == np.uint8


def test_a_77_byte_png_that_declares_4_by_10_million_pixels(tmp_path):
    """Found by tests/test_fuzz_images.py (SALCLI_FUZZ_EXAMPLES=6000): Pillow decodes this PNG (the missing rows
    black), and preparing it took 6 s and 6 GB, or raised MemoryError, or ran past the time limit."""
    from limits import time_limit

    p = tmp_path / "tall.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x04\x00\xa3\xd7\x11\x08\x02\x00\x00\x00?.G\xa5"
                  b"\x00\x00\x00\x14IDATx\x9cc<\x91b\xc4\x00\x03L\x0cH\x00\x85\x03\x003\xc8\x01d\xba\x97\xef\xd9"
                  b"\x00\x00\x00\x00IEND\xaeB`\x82")
    with time_limit(4, "decode and prepare of a 4 x 10,737,425 PNG"):  # 0.4 s here; 6.4 s before
        im = decode(p)
        assert im.size == (4, 10_737_425)
        assert prepare(im, Preprocess(resize=16, crop=16, mean=(0.5,), std=(0.25,))).shape == (16, 16, 3)


@pytest.mark.parametrize("interpolation,tol", [("bilinear", 1), ("bicubic", 2), ("nearest", 255)])
def test_the_region_resample_agrees_with_the_full_resize(monkeypatch, interpolation, tol):
    """Where both fit in memory, the region path gives the full path's crop within a grey level or two (bilinear,
    bicubic; nearest picks a neighbouring pixel), and the same geometry."""
    from salcli import images

    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (3000, 2, 3), dtype=np.uint8))  # 2 wide, 3000 high
    pre = Preprocess(resize=16, crop=12, mean=(0.5,), std=(0.25,), interpolation=interpolation)
    full = prepare(im, pre)
    monkeypatch.setattr(images, "BOX_RESIZE_PIXELS", 0)  # every resize takes the region path
    region = prepare(im, pre)
    assert region.shape == full.shape
    assert np.abs(region.astype(int) - full.astype(int)).max() <= tol


def test_decode_float_image_nan_is_black_without_a_warning(tmp_path):
    import warnings

    arr = np.array([[np.nan, 0.5], [1.0, 0.0]], np.float32)
    p = tmp_path / "nan.tif"
    Image.fromarray(arr, "F").save(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "invalid value encountered in cast" was the symptom
        got = np.asarray(decode(p))
    assert got.tolist() == [[0, 128], [255, 0]]


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA", "PCX"])
def test_decode_reads_only_the_formats_of_the_image_extensions(tmp_path, fmt):
    """A file named .png is parsed as BMP, GIF, JPEG, PNG, TIFF or WebP, never by another of Pillow's parsers
    (EPS would run Ghostscript where it is installed)."""
    p = tmp_path / "other.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(p, format=fmt)
    with pytest.raises(ImageError, match="not an image salcli reads"):
        decode(p)


def test_decode_reads_a_camera_mpo_as_jpeg(tmp_path):
    p = tmp_path / "camera.jpg"
    Image.new("RGB", (8, 6), (10, 20, 30)).save(p, format="MPO", save_all=True,
                                                append_images=[Image.new("RGB", (8, 6))])
    assert decode(p).size == (8, 6)


def test_decode_of_a_file_with_damaged_exif_decodes_and_warns_nothing(tmp_path):
    """Pillow warns on every damaged file ("Corrupt EXIF data"): a folder of them flooded the terminal. The record
    says whether the file decoded; the warnings are not shown."""
    import warnings

    p = tmp_path / "bad_exif.jpg"
    exif = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00"  # an IFD of 5 tags, none of them there
    Image.new("RGB", (16, 12), (1, 2, 3)).save(p, exif=exif)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert decode(p).size == (16, 12)
