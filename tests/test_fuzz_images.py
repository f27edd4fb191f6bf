"""Fuzzing image files: whatever a file holds, decoding ends in a picture or in a clean ``ImageError``.

Property-based (hypothesis) over random bytes, valid PNG/JPEG/WebP/TIFF/GIF/BMP files made here with Pillow
(every mode salcli converts: CMYK, 16-bit, float, palette, LA, bilevel; animated; EXIF orientations), the same
files truncated and mutated, headers that declare huge, zero or extreme dimensions in a few bytes, and a few
runs of ``salcli explain`` over folders of such files. Every example runs under a time limit (a hang fails),
and the whole module under a watchdog that ends the process if a decoder never returns to Python.

Deterministic (``derandomize``, no example database), a few hundred examples by default; set
SALCLI_FUZZ_EXAMPLES=N for N examples per test (e.g. 5000 for a long local run).
"""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import TINY_OPTS
from limits import time_limit, watchdog
from salcli import images
from salcli.config import Preprocess
from salcli.images import ImageError, decode, prepare

EXAMPLES = int(os.environ.get("SALCLI_FUZZ_EXAMPLES", "0"))
PER_EXAMPLE_S = 20  # far above any example's time here (the slowest take a few hundred ms)
PRE = Preprocess(resize=16, crop=16, mean=(0.5,), std=(0.25,), channels=3)
GRAY = Preprocess(resize=20, crop=12, mean=(0.5,), std=(0.25,), channels=1, interpolation="bicubic")


def fuzz(default: int, cost: int = 1, **extra):
    """Hypothesis settings for these tests: deterministic, no database, ``default`` examples, or
    SALCLI_FUZZ_EXAMPLES / ``cost`` when that is set (a CLI run costs about 25 decodes). The time limit is ours:
    hypothesis' deadline only reports slowness after the fact."""
    examples = max(1, EXAMPLES // cost) if EXAMPLES else default
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture], **extra)


@pytest.fixture(autouse=True, scope="module")
def _watchdog():
    with watchdog(max(600, 0.5 * EXAMPLES)):
        yield


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def check_file(folder: Path, data: bytes, ext: str) -> Image.Image | None:
    """Write ``data`` as ``case.EXT`` and put it through everything a run does with a file: decode, the model's
    input (RGB and gray), the display picture. Returns the decoded picture, or None after an ImageError; any
    other exception, or a hang, fails the test."""
    path = folder / f"case{ext}"
    path.write_bytes(data)
    # a hang is not shrunk (each try would take the whole time limit): its message holds the input instead
    shown = repr(data) if len(data) <= 512 else f"{data[:512]!r}... ({len(data)} bytes)"
    with time_limit(PER_EXAMPLE_S, f"decoding and preparing the {ext} file {shown}"):
        try:
            im = decode(path)
        except ImageError as exc:
            assert str(exc).strip()
            return None
        assert im.mode in ("RGB", "L") and im.width >= 1 and im.height >= 1
        for pre in (PRE, GRAY):
            px = prepare(im, pre)
            assert px.shape == (pre.crop, pre.crop, pre.channels) and px.dtype == np.uint8
        shown = images.picture(im, 64)
        assert shown.dtype == np.uint8 and max(shown.shape[:2]) <= 64
        return im


# ---------------------------------------------------------------------------------------------- valid files
# (format, extension, modes Pillow writes in that format)
FORMATS = [
    ("PNG", ".png", ["RGB", "L", "LA", "RGBA", "P", "PT", "1", "I;16"]),
    ("JPEG", ".jpg", ["RGB", "L", "CMYK"]),
    ("WEBP", ".webp", ["RGB", "RGBA"]),
    ("TIFF", ".tif", ["RGB", "L", "CMYK", "I;16", "F", "I", "LA", "RGBA", "P", "1", "YCbCr"]),
    ("GIF", ".gif", ["P", "PT", "L"]),
    ("BMP", ".bmp", ["RGB", "L", "P", "1", "RGBA"]),
]
ANIMATED = {"PNG", "GIF", "WEBP", "TIFF"}


def _picture(rng: np.random.Generator, mode: str, w: int, h: int, shift: int = 0) -> Image.Image:
    if mode in ("I;16", "I", "F"):
        values = rng.integers(0, 65536, (h, w))
        if mode == "F" and w * h > 1:
            values = values.astype(np.float32) / rng.choice([1.0, 255.0, 65535.0])
            values.flat[0] = np.nan  # a float image may hold NaN
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        return Image.fromarray(np.roll(values.astype(dtype), shift, axis=0))
    rgba = Image.fromarray(np.roll(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), shift, axis=0), "RGBA")
    if mode in ("P", "PT"):
        return rgba.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return rgba.convert(mode)


def make_image(fmt: str, mode: str, w: int, h: int, frames: int, orientation: int | None, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pictures = [_picture(rng, mode, w, h, shift=f) for f in range(frames)]
    options = {}
    if frames > 1 and fmt in ANIMATED:
        options.update(save_all=True, append_images=pictures[1:])
    if mode == "PT" and not (fmt == "PNG" and frames > 1):  # Pillow's APNG writer refuses it
        options["transparency"] = 0
    if orientation is not None and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        exif = Image.Exif()
        exif[0x0112] = orientation  # 1..8 are EXIF's; 0 and 9 are not
        options["exif"] = exif
    buf = io.BytesIO()
    pictures[0].save(buf, format=fmt, **options)
    return buf.getvalue()


@st.composite
def valid_images(draw) -> tuple[bytes, str, str, str]:
    fmt, ext, modes = draw(st.sampled_from(FORMATS))
    mode = draw(st.sampled_from(modes))
    data = make_image(fmt, mode, draw(st.integers(1, 24)), draw(st.integers(1, 24)), draw(st.integers(1, 3)),
                      draw(st.none() | st.integers(0, 9)), draw(st.integers(0, 2**16)))
    return data, ext, fmt, mode


@st.composite
def mutated(draw, base=valid_images()) -> tuple[bytes, str]:
    """A valid file cut short, or with bytes overwritten, deleted or inserted (a few at a time, anywhere; most
    in the first 64 bytes, where the headers are)."""
    data, ext, _, _ = draw(base)
    data = bytearray(data)
    if draw(st.booleans()):
        return bytes(data[:draw(st.integers(0, max(0, len(data) - 1)))]), ext
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, min(len(data), 64) if draw(st.booleans()) else len(data)))
        edit = draw(st.sampled_from(["set", "delete", "insert"]))
        if edit == "set" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif edit == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    # keep a PNG's chunk checksums right now and then, so the damage reaches the decoder past the CRC check
    if ext == ".png" and draw(st.booleans()):
        data = bytearray(_fix_png_crcs(bytes(data)))
    return bytes(data), ext


def test_every_valid_file_made_here_decodes(scratch):
    """Not fuzzing yet: every format and mode the strategies make is one salcli reads (so the mutations below
    start from files that work)."""
    for fmt, ext, modes in FORMATS:
        for mode in modes:
            for frames in (1, 2):
                im = check_file(scratch, make_image(fmt, mode, 7, 5, frames, 6, seed=1), ext)
                turned = fmt in ("JPEG", "PNG", "WEBP", "TIFF")  # EXIF orientation 6: a quarter turn
                assert im is not None and im.size == ((5, 7) if turned else (7, 5)), (fmt, mode, frames, im)


@fuzz(150)
@given(case=valid_images())
def test_valid_files_decode_to_a_picture(scratch, case):
    data, ext, fmt, mode = case
    assert check_file(scratch, data, ext) is not None, (fmt, mode)


@fuzz(400)
@given(case=mutated())
def test_truncated_and_mutated_files_decode_or_fail_cleanly(scratch, case):
    check_file(scratch, *case)


@fuzz(150)
@given(data=st.binary(max_size=2048), ext=st.sampled_from(sorted(images.EXTENSIONS)))
def test_random_bytes_fail_cleanly(scratch, data, ext):
    check_file(scratch, data, ext)


@fuzz(100)
@given(magic=st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM",
                              b"RIFF\x00\x00\x00\x00WEBPVP8 "]),
       rest=st.binary(max_size=512), ext=st.sampled_from([".png", ".jpg", ".gif", ".tif", ".bmp", ".webp"]))
def test_a_real_signature_followed_by_noise_fails_cleanly(scratch, magic, rest, ext):
    check_file(scratch, magic + rest, ext)


# ---------------------------------------------------------------------------------------------- headers
def _fix_png_crcs(data: bytes) -> bytes:
    out, at = bytearray(data[:8]), 8
    while at + 8 <= len(data):
        length = struct.unpack(">I", data[at:at + 4])[0]
        end = at + 8 + length
        if end + 4 > len(data):
            break
        body = data[at + 4:end]
        out += data[at:end] + struct.pack(">I", zlib.crc32(body))
        at = end + 4
    return bytes(out + data[at:])


def png_header(w: int, h: int, color: int = 2, depth: int = 8, body: bytes = b"") -> bytes:
    """A PNG that declares ``w`` x ``h`` and holds ``body`` (zlib-compressed) as its only pixel data."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b""))


def with_size(fmt: str, w: int, h: int) -> bytes:
    """A small valid file of ``fmt`` whose header is rewritten to declare ``w`` x ``h`` (the pixel data stays
    that of a 4 x 3 picture)."""
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), (200, 100, 50)).save(buf, format=fmt, **({"compression": "raw"} if fmt == "TIFF"
                                                                           else {}))
    data = bytearray(buf.getvalue())
    if fmt == "PNG":
        data[16:24] = struct.pack(">II", w, h)
        return _fix_png_crcs(bytes(data))
    if fmt == "GIF":  # the logical screen and the first image descriptor
        data[6:10] = struct.pack("<HH", w & 0xFFFF, h & 0xFFFF)
        at = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)  # past the global colour table
        while data[at] == 0x21:  # extensions: label, then sub-blocks up to an empty one
            at += 2
            while data[at]:
                at += data[at] + 1
            at += 1
        assert data[at] == 0x2C  # the image descriptor: left, top, width, height
        data[at + 5:at + 9] = struct.pack("<HH", w & 0xFFFF, h & 0xFFFF)
    elif fmt == "BMP":  # signed: a negative height is a top-down picture
        data[18:26] = struct.pack("<ii", _i32(w), _i32(h))
    elif fmt == "JPEG":  # the start-of-frame segment
        at = data.index(b"\xff\xc0")
        data[at + 5:at + 9] = struct.pack(">HH", h & 0xFFFF, w & 0xFFFF)
    elif fmt == "WEBP":  # a lossy VP8 frame header: 14 bits each
        at = data.index(b"\x9d\x01\x2a") + 3
        data[at:at + 4] = struct.pack("<HH", w & 0x3FFF, h & 0x3FFF)
    elif fmt == "TIFF":  # little-endian: ImageWidth (256) and ImageLength (257) in the first IFD, as LONGs
        ifd = struct.unpack("<I", data[4:8])[0]
        for i in range(struct.unpack("<H", data[ifd:ifd + 2])[0]):
            at = ifd + 2 + 12 * i
            tag = struct.unpack("<H", data[at:at + 2])[0]
            if tag in (256, 257):
                data[at + 2:at + 12] = struct.pack("<HII", 4, 1, (w if tag == 256 else h) & 0xFFFFFFFF)
    return bytes(data)


def _i32(v: int) -> int:
    return (v + 2**31) % 2**32 - 2**31


SIZES = st.one_of(st.integers(0, 8), st.integers(0, 70_000), st.integers(0, 2**32 - 1),
                  st.sampled_from([1, 9_459, 9_460, 2**14 - 1, 2**15, 2**16 - 1, 2**31 - 1, 2**31]))


@fuzz(200)
@given(fmt=st.sampled_from(["PNG", "GIF", "BMP", "JPEG", "WEBP", "TIFF"]), w=SIZES, h=SIZES)
def test_declared_dimensions_from_none_to_huge_in_a_tiny_file(scratch, fmt, w, h):
    """A header may declare 0 or 4 billion pixels a side in a file of a hundred bytes: refused (over the
    decompression-bomb limit), reported as truncated or corrupt, or decoded; never a hang or a crash."""
    im = check_file(scratch, with_size(fmt, w, h), "." + fmt.lower().replace("jpeg", "jpg").replace("tiff", "tif"))
    if im is not None:
        assert im.width * im.height <= images.MAX_PIXELS


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "TIFF"])
def test_declared_size_over_the_bomb_limit_is_refused_before_decoding(scratch, fmt):
    side = 20_000 if fmt != "GIF" else 65_000  # 400 (4225) million pixels; the limit is about 89 million
    path = scratch / f"bomb.{fmt.lower()}"
    path.write_bytes(with_size(fmt, side, side))
    with time_limit(10, "a bomb"), pytest.raises(ImageError, match="(?i)bomb"):
        decode(path)


def test_bombs_are_refused_even_when_pillows_own_check_is_off(scratch, monkeypatch):
    """A model factory may set ``Image.MAX_IMAGE_PIXELS = None`` (some code bases do, to read scans): Pillow then
    checks nothing, but salcli's limit (taken at import) still holds."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    path = scratch / "bomb_unchecked.png"
    path.write_bytes(with_size("PNG", 10_000, 10_000))  # 100 million pixels: between 1 and 2 times the limit
    with time_limit(10, "a bomb"), pytest.raises(ImageError, match="decompression-bomb limit"):
        decode(path)


@fuzz(40, cost=10)
@given(long=st.integers(1, 600_000), short=st.integers(1, 3), tall=st.booleans(), gray=st.booleans())
def test_strips_of_extreme_aspect_ratio_decode_fast_and_small(scratch, long, short, tall, gray):
    """A strip of 1 x 600,000 pixels is a few kB of PNG; resized to a 16 px short side it would be 9.6 million
    pixels (a 1 x 80 million one, over a billion): ``prepare`` resamples only the crop's region."""
    w, h = (short, long) if tall else (long, short)
    color, channels = (0, 1) if gray else (2, 3)
    body = b"".join(b"\x00" + bytes([(37 * y) % 256]) * (w * channels) for y in range(h))
    assert check_file(scratch, png_header(w, h, color=color, body=body), ".png") is not None


# ---------------------------------------------------------------------------------------------- end to end
@st.composite
def folders(draw) -> list[tuple[str, bytes]]:
    """A few files for one folder: valid, mutated, random, or headers declaring odd sizes; unique names."""
    files = []
    for i in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["valid", "mutated", "random", "header"]))
        if kind == "valid":
            data, ext, _, _ = draw(valid_images())
        elif kind == "mutated":
            data, ext = draw(mutated())
        elif kind == "random":
            data, ext = draw(st.binary(max_size=512)), draw(st.sampled_from(sorted(images.EXTENSIONS)))
        else:
            fmt = draw(st.sampled_from(["PNG", "GIF", "BMP", "JPEG", "WEBP", "TIFF"]))
            data = with_size(fmt, draw(SIZES), draw(SIZES))
            ext = "." + fmt.lower()
        files.append((f"f{i}_{kind}{ext}", data))
    return files


@fuzz(12, cost=25)
@given(files=folders(), fifo=st.booleans(), loop=st.booleans())
def test_cli_over_a_folder_of_fuzzed_files(cli, files, fifo, loop):
    """``salcli explain DIR -o OUT``: exit 0 or 1, one manifest line per image file, no traceback, no hang."""
    with tempfile.TemporaryDirectory() as tmp:
        folder, out = Path(tmp) / "in", Path(tmp) / "out"
        folder.mkdir()
        for name, data in files:
            (folder / name).write_bytes(data)
        expected = {name for name, _ in files}
        if fifo:
            os.mkfifo(folder / "fifo.png")  # skipped with a note
        if loop:
            os.symlink("loop.jpg", folder / "loop.jpg")  # an error record
            expected.add("loop.jpg")
        with time_limit(60, "salcli explain"):
            result = cli("explain", folder, "-o", out, *TINY_OPTS, "--device", "cpu", expect=None)
        assert result.exit_code in (0, 1), result.output
        assert "Traceback" not in result.output
        lines = (out / "manifest.jsonl").read_bytes().decode("utf-8").splitlines()
        records = [json.loads(line) for line in lines]
        assert sorted(r["image"] for r in records) == sorted(expected)
        assert all(r["status"] in ("ok", "error") for r in records)
        assert result.exit_code == (1 if any(r["status"] == "error" for r in records) else 0)
