"""Streamed inputs: fsspec URLs (``memory://``, ``file://``) in a --files-from list and WebDataset tar shards (local
or a URL) give the same maps as the same images in a folder, bit for bit, under unique keys; a bad member is one
error record; resume compares each input's identity; without fsspec, a URL is a usage error naming the extra."""

from __future__ import annotations

import io
import json
import shutil
import sys
import tarfile
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_OPTS, manifest, write_images

from salcli import images, outputs, streams

fsspec = pytest.importorskip("fsspec")

METHODS = "vanilla,input-x-gradient"


def explain(cli, *args, expect: int = 0) -> dict:
    done = cli("explain", *TINY_OPTS, "-m", METHODS, "--device", "cpu", "--json", "-q", *args, expect=expect)
    return json.loads(done.stdout) if expect in (0, 1) else {}


def make_tar(path: Path, members: dict[str, bytes], mtime: int = 1_700_000_000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), mtime
            tar.addfile(info, io.BytesIO(data))
    return path


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def put(url: str, data: bytes) -> str:
    with fsspec.open(url, "wb") as fh:
        fh.write(data)
    return url


@pytest.fixture
def memory():
    """A fresh folder of fsspec's in-memory file system, removed afterwards."""
    root = f"memory://salcli-{uuid.uuid4().hex[:8]}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


@pytest.fixture
def folder(tmp_path) -> Path:
    return write_images(tmp_path / "imgs", n=6, size=20)[0].parent


@pytest.fixture
def reference(cli, folder, tmp_path) -> Path:
    out = tmp_path / "ref"
    explain(cli, folder, "-o", out)
    return out


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def streamed_list(folder: Path, memory: str, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A list mixing every kind of input, and the key each image should get -> its name in ``folder``."""
    data = {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}
    copies = tmp_path / "copies"
    copies.mkdir()
    shutil.copy(folder / "img02.png", copies / "img02.png")
    local = tmp_path / "inputs"
    make_tar(local / "shards" / "s1.tar", {"./a/img03.png": data["img03.png"], "b/img04.png": data["img04.png"],
                                           "b/img04.cls": b"3", "notes/readme.txt": b"not an image"})
    (local / "plain").mkdir()
    shutil.copy(folder / "img00.png", local / "plain" / "img00.png")
    put(f"{memory}/shards/s2.tar", tar_bytes({"img05.png": data["img05.png"]}))
    lines = [put(f"{memory}/imgs/img00.png", data["img00.png"]), put(f"{memory}/imgs/img01.png", data["img01.png"]),
             (copies / "img02.png").resolve().as_uri(), str(local / "shards" / "s1.tar"), f"{memory}/shards/s2.tar",
             str(local / "plain" / "img00.png")]
    listing = tmp_path / "list.txt"
    listing.write_text("# every kind of input\n" + "\n".join(lines) + "\n")
    mem = memory.split("://", 1)[1]
    expected = {f"memory/{mem}/imgs/img00.png": "img00.png", f"memory/{mem}/imgs/img01.png": "img01.png",
                "file" + (copies / "img02.png").resolve().as_posix(): "img02.png",
                "shards/s1.tar/a/img03.png": "img03.png", "shards/s1.tar/b/img04.png": "img04.png",
                f"memory/{mem}/shards/s2.tar/img05.png": "img05.png", "plain/img00.png": "img00.png"}
    return listing, expected


# ---------------------------------------------------------------------------------------------- same maps
@pytest.mark.parametrize("workers", [0, 1])
def test_urls_and_tars_give_the_folders_maps_bit_for_bit(cli, folder, reference, memory, tmp_path, workers):
    listing, expected = streamed_list(folder, memory, tmp_path)
    out = tmp_path / "out"
    summary = explain(cli, "--files-from", listing, "-o", out, "--workers", workers)
    assert summary["counts"] == {"ok": 14, "skipped": 0, "error": 0}
    records = manifest(out)
    assert sorted({r["image"] for r in records}) == sorted(expected)  # unique keys, one per listed image
    ref = {(r["image"], r["method"]): r for r in manifest(reference)}
    for rec in records:
        same = ref[(expected[rec["image"]], rec["method"])]  # the same picture, from the folder
        assert np.array_equal(bits(np.load(out / rec["npy"])), bits(np.load(reference / same["npy"])))
        assert (rec["pred"], rec["prob"], rec["width"]) == (same["pred"], same["prob"], same["width"])
        assert (out / rec["overlay"]).read_bytes() == (reference / same["overlay"]).read_bytes()
    by_key = {r["image"]: r for r in records}
    tar = by_key["shards/s1.tar/a/img03.png"]
    assert tar["source"] == str((tmp_path / "inputs" / "shards" / "s1.tar").resolve())
    assert tar["member"] == "./a/img03.png"
    assert tar["size"] == (folder / "img03.png").stat().st_size and tar["mtime_ns"] == 1_700_000_000 * 10**9
    assert tar["container"].startswith(f"{(tmp_path / 'inputs' / 'shards' / 's1.tar').stat().st_size}:")
    remote = by_key[f"memory/{memory.split('://')[1]}/imgs/img00.png"]
    assert remote["source"] == f"{memory}/imgs/img00.png" and "member" not in remote
    assert remote["size"] == (folder / "img00.png").stat().st_size and isinstance(remote["mtime_ns"], int)
    assert cli("verify", out).exit_code == 0  # the list is read again: the same keys


def test_render_reads_urls_and_tar_members_again(cli, folder, reference, memory, tmp_path):
    listing, expected = streamed_list(folder, memory, tmp_path)
    out = tmp_path / "out"
    explain(cli, "--files-from", listing, "-o", out, "--no-overlays")
    assert json.loads(cli("render", out, "--json", "-q").stdout)["counts"] == {"ok": 14, "error": 0}
    ref = {(r["image"], r["method"]): r for r in manifest(reference)}
    for rec in manifest(out):
        assert (out / rec["overlay"]).read_bytes() == \
            (reference / ref[(expected[rec["image"]], rec["method"])]["overlay"]).read_bytes()


def test_a_tar_given_on_the_command_line_keys_its_members_under_its_name(cli, folder, reference, tmp_path):
    data = {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}
    shard = make_tar(tmp_path / "in" / "train-0001.tar", {name: data[name] for name in ("img00.png", "img01.png")})
    out = tmp_path / "out"
    explain(cli, shard, "-o", out)
    assert sorted({r["image"] for r in manifest(out)}) == ["train-0001.tar/img00.png", "train-0001.tar/img01.png"]
    for rec in manifest(out):
        want = reference / rec["method"] / f"{rec['image'].split('/')[-1]}.npy"
        assert np.array_equal(bits(np.load(out / rec["npy"])), bits(np.load(want)))


# ---------------------------------------------------------------------------------------------- bad inputs
def test_a_corrupt_tar_member_is_an_error_record_and_the_others_are_written(cli, folder, memory, tmp_path):
    data = {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}
    shard = make_tar(tmp_path / "in" / "s.tar", {"good0.png": data["img00.png"], "noise.png": b"\x89PNG not at all",
                                                 "cut.png": data["img01.png"][:60], "good1.png": data["img02.png"],
                                                 "../escape.png": data["img03.png"]})
    (tmp_path / "in" / "garbage.tar").write_bytes(b"this is not a tar file" * 40)
    (tmp_path / "in" / "zipped.tar").write_bytes(b"\x1f\x8b" + b"\0" * 600)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join([str(shard), str(tmp_path / "in" / "garbage.tar"), str(tmp_path / "in" / "zipped.tar"),
                                  str(tmp_path / "in" / "missing.tar"), f"{memory}/nowhere.png"]))
    out = tmp_path / "out"
    summary = explain(cli, "--files-from", listing, "-o", out, expect=1)
    records = {r["image"]: r for r in manifest(out) if r["method"] == "vanilla"}
    assert {k for k, r in records.items() if r["status"] == "ok"} == {"s.tar/good0.png", "s.tar/good1.png"}
    errors = {k: r["error"] for k, r in records.items() if r["status"] == "error"}
    assert "cannot decode" in errors["s.tar/noise.png"] and "cannot decode" in errors["s.tar/cut.png"]
    assert "climbs out of the tar" in errors["s.tar/%2E%2E/escape.png"]
    assert "not a tar file salcli reads" in errors["garbage.tar"]
    assert "gzip-compressed tar" in errors["zipped.tar"] and "gunzip" in errors["zipped.tar"]
    assert "file not found" in errors["missing.tar"]
    assert "file not found" in errors[f"memory/{memory.split('://')[1]}/nowhere.png"]
    assert summary["counts"]["error"] == 2 * len(errors)
    assert not (out / "vanilla" / "escape.png.npy").exists() and not list(out.rglob("*.part"))


def test_a_tar_damaged_in_the_middle_keeps_the_members_before_and_says_so(cli, folder, tmp_path):
    data = [p.read_bytes() for p in sorted(folder.glob("*.png"))[:3]]
    shard = make_tar(tmp_path / "in" / "s.tar", {f"m{i}.png": d for i, d in enumerate(data)})
    raw = bytearray(shard.read_bytes())
    with tarfile.open(shard) as tar:
        third = tar.getmember("m2.png").offset
    raw[third:third + 100] = b"x" * 100  # the third member's header no longer parses
    shard.write_bytes(bytes(raw))
    out = tmp_path / "out"
    explain(cli, shard, "-o", out, expect=1)
    records = {r["image"]: r for r in manifest(out) if r["method"] == "vanilla"}
    assert {k for k, r in records.items() if r["status"] == "ok"} == {"s.tar/m0.png", "s.tar/m1.png"}
    assert "damaged after 2 image member(s)" in records["s.tar"]["error"]
    cut = tmp_path / "in" / "cut.tar"
    make_tar(cut, {f"m{i}.png": d for i, d in enumerate(data)})
    cut.write_bytes(cut.read_bytes()[:third + 512 + 100])  # inside the third member's data
    explain(cli, cut, "-o", tmp_path / "cut", expect=1)
    records = {r["image"]: r for r in manifest(tmp_path / "cut") if r["method"] == "vanilla"}
    assert records["cut.tar/m2.png"]["status"] == "error" and "cut short" in records["cut.tar/m2.png"]["error"]
    assert records["cut.tar/m0.png"]["status"] == "ok" and records["cut.tar/m1.png"]["status"] == "ok"


def test_decoding_limits_hold_for_remote_bytes(cli, folder, memory, tmp_path, monkeypatch):
    data = (folder / "img00.png").read_bytes()
    listing = tmp_path / "list.txt"
    eps = put(f"{memory}/eps.png", b"%!PS-Adobe-3.0 EPSF-3.0\n")  # Ghostscript's format: never parsed
    listing.write_text("\n".join([put(f"{memory}/big.png", data), eps, f"{memory}/t.tar"]))
    put(f"{memory}/t.tar", tar_bytes({"huge.png": data}))
    monkeypatch.setattr(images, "MAX_PIXELS", 100)  # 20 x 23 pixels is over it
    monkeypatch.setattr(streams, "MAX_BYTES", len(data) + 10)
    out = tmp_path / "out"
    explain(cli, "--files-from", listing, "-o", out, expect=1)
    errors = {r["image"].rsplit("/", 1)[-1]: r["error"] for r in manifest(out) if r["method"] == "vanilla"}
    assert "over the decompression-bomb limit" in errors["big.png"]
    assert "over the decompression-bomb limit" in errors["huge.png"]
    assert "not an image salcli reads" in errors["eps.png"]
    monkeypatch.setattr(streams, "MAX_BYTES", 100)  # now the bytes themselves are refused, before decoding
    explain(cli, "--files-from", listing, "-o", tmp_path / "small", expect=1)
    errors = {r["image"].rsplit("/", 1)[-1]: r["error"]
              for r in manifest(tmp_path / "small") if r["method"] == "vanilla"}
    assert "over the limit" in errors["big.png"] and "over the limit" in errors["huge.png"]


# ---------------------------------------------------------------------------------------------- resume
def test_resume_skips_on_a_second_run_and_redoes_what_changed(cli, folder, memory, tmp_path):
    listing, expected = streamed_list(folder, memory, tmp_path)
    out = tmp_path / "out"
    explain(cli, "--files-from", listing, "-o", out)
    again = explain(cli, "--files-from", listing, "-o", out)
    assert again["counts"] == {"ok": 0, "skipped": 14, "error": 0}
    assert again["changes"]["unchanged"] == 7
    put(f"{memory}/imgs/img01.png", (folder / "img03.png").read_bytes())  # replaced under the same URL
    shard = tmp_path / "inputs" / "shards" / "s1.tar"
    make_tar(shard, {"./a/img03.png": (folder / "img03.png").read_bytes(),
                     "b/img04.png": (folder / "img04.png").read_bytes()}, mtime=1_800_000_000)  # the tar rewritten
    third = explain(cli, "--files-from", listing, "-o", out)
    assert third["changes"] == {**third["changes"], "redone": 3, "unchanged": 4}
    mem = memory.split("://", 1)[1]
    redone = {r["image"] for r in manifest(out) if r["status"] == "ok"}
    assert redone == {f"memory/{mem}/imgs/img01.png", "shards/s1.tar/a/img03.png", "shards/s1.tar/b/img04.png"}


def test_identity_of_what_file_systems_report():
    import datetime as dt

    when = dt.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=dt.timezone.utc)
    ns = int(when.timestamp()) * 10**9 + 678901000
    assert streams.identity_of({"size": 5, "ETag": '"abc"', "LastModified": when}) == {"size": 5, "mtime_ns": ns,
                                                                                       "etag": "abc"}
    assert streams.identity_of({"size": 5, "updated": "2024-01-02T03:04:05.678901Z"})["mtime_ns"] == ns
    http = streams.identity_of({"size": 5, "Last-Modified": "Tue, 02 Jan 2024 03:04:05 GMT"})
    assert http["mtime_ns"] == ns - 678901000  # HTTP dates have whole seconds
    assert streams.identity_of({"size": None}) == {"size": None, "mtime_ns": None}


# ---------------------------------------------------------------------------------------------- keys
@pytest.mark.parametrize("url, key", [
    ("s3://bucket/a/x.jpg", "s3/bucket/a/x.jpg"),
    ("gs://b/a//./c/../x.png", "gs/b/a/x.png"),
    ("https://user:secret@host:8080/img/x.png?sig=1#frag", "https/host:8080/img/x.png"),
    ("file:///data/imgs/x.png", "file/data/imgs/x.png"),
    ("memory://root/x.png", "memory/root/x.png"),
])
def test_url_keys(url, key):
    assert streams.url_key(url) == key


def test_a_password_in_a_url_is_not_written():
    assert streams.redact("https://user:secret@host/x.png") == "https://user:***@host/x.png"
    assert images.source(images.ImageItem("https://user:secret@host/x.png", "k")) == "https://user:***@host/x.png"


# ---------------------------------------------------------------------------------------------- usage errors
def test_missing_fsspec_is_a_usage_error_naming_the_extra(cli, folder, memory, tmp_path, monkeypatch):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{put(f'{memory}/a.png', (folder / 'img00.png').read_bytes())}\n{folder / 'img01.png'}\n")
    monkeypatch.setitem(sys.modules, "fsspec", None)  # import fsspec raises ImportError
    err = cli("explain", *TINY_OPTS, "--files-from", listing, "-o", tmp_path / "out", expect=2).stderr
    assert "pip install 'salcli[remote]'" in err and "--files-from" in err
    assert not (tmp_path / "out").exists()
    shard = make_tar(tmp_path / "s.tar", {"a.png": (folder / "img00.png").read_bytes()})  # tars need no fsspec
    explain(cli, shard, folder / "img01.png", "-o", tmp_path / "local")


def test_unknown_protocols_and_urls_typed_as_inputs_are_usage_errors(cli, folder, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("nosuchfs://x/a.png\n")
    err = cli("explain", *TINY_OPTS, "--files-from", listing, "-o", tmp_path / "out", expect=2).stderr
    assert "nosuchfs://" in err and "protocol fsspec does not know" in err
    err = cli("explain", *TINY_OPTS, "s3://bucket/a.png", "-o", tmp_path / "out", expect=2).stderr
    assert "URLs are read from a list" in err and "--files-from" in err
    assert not (tmp_path / "out").exists()


def test_listing_keeps_urls_as_strings(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("s3://bucket/a.png\nlocal/b.png\nhttps://h/x.tar?sig=1\n")
    assert images.read_file_list(listing) == ["s3://bucket/a.png", Path("local/b.png"), "https://h/x.tar?sig=1"]
    assert streams.is_tar("https://h/x.tar?sig=1") and not streams.is_tar("s3://b/x.png")


def test_a_sink_reads_maps_of_streamed_keys(cli, folder, memory, tmp_path):
    """Keys with a protocol and a tar's name in them go through every format (here webdataset's %-escapes)."""
    listing, expected = streamed_list(folder, memory, tmp_path)
    out = tmp_path / "out"
    explain(cli, "--files-from", listing, "-o", out, "--format", "webdataset")
    sink = outputs.open_sink(out)
    assert sorted({r["image"] for r in manifest(out)}) == sorted(expected)
    assert all(sink.load_map(r).shape == (16, 16) for r in manifest(out))


# ---------------------------------------------------------------------------------------------- S3, for real
@pytest.fixture
def s3(monkeypatch):
    """A local S3 server (moto's server mode on 127.0.0.1, a free port) and fsspec's S3 settings pointing at it,
    as a user sets them (``FSSPEC_S3_ENDPOINT_URL`` and friends end up in ``fsspec.config.conf``)."""
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    boto3 = pytest.importorskip("boto3")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{server._server.server_port}"
        creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **creds)
        client.create_bucket(Bucket="pictures")
        monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint, "key": "testing",
                                                       "secret": "testing", "skip_instance_cache": True})
        yield client
    finally:
        server.stop()


@pytest.mark.parametrize("workers", [0, 1])
def test_s3_urls_through_a_local_s3_server(cli, folder, reference, s3, tmp_path, workers):
    """s3:// URLs and an s3:// tar shard, read over HTTP from a real S3 API: the folder's maps bit for bit, a
    missing object is one error record, resume goes by the ETag, and an object replaced under its key is redone."""
    data = {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}
    for name in ("img00.png", "img01.png", "img02.png"):
        s3.put_object(Bucket="pictures", Key=f"night/{name}", Body=data[name])
    s3.put_object(Bucket="pictures", Key="shards/s.tar", Body=tar_bytes({"img03.png": data["img03.png"],
                                                                         "img04.png": data["img04.png"]}))
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join([*(f"s3://pictures/night/{n}" for n in ("img00.png", "img01.png", "img02.png")),
                                  "s3://pictures/shards/s.tar", "s3://pictures/night/gone.png"]) + "\n")
    out = tmp_path / "out"
    summary = explain(cli, "--files-from", listing, "-o", out, "--workers", workers, expect=1)
    assert summary["counts"] == {"ok": 10, "skipped": 0, "error": 2}
    records = manifest(out)
    errors = {r["image"] for r in records if r["status"] == "error"}
    assert errors == {"s3/pictures/night/gone.png"}
    ref = {(r["image"], r["method"]): r for r in manifest(reference)}
    for rec in (r for r in records if r["status"] == "ok"):
        same = ref[(rec["image"].rsplit("/", 1)[1], rec["method"])]
        assert np.array_equal(bits(np.load(out / rec["npy"])), bits(np.load(reference / same["npy"])))
    remote = {r["image"]: r for r in records}["s3/pictures/night/img00.png"]
    assert remote["source"] == "s3://pictures/night/img00.png" and remote["size"] == len(data["img00.png"])
    assert {r["image"] for r in records} >= {"s3/pictures/shards/s.tar/img03.png", "s3/pictures/shards/s.tar/img04.png"}
    again = explain(cli, "--files-from", listing, "-o", out, "--workers", workers, expect=1)
    assert again["counts"] == {"ok": 0, "skipped": 10, "error": 2}
    s3.put_object(Bucket="pictures", Key="night/img01.png", Body=data["img05.png"])  # another picture, same key
    third = explain(cli, "--files-from", listing, "-o", out, "--workers", workers, expect=1)
    assert third["counts"] == {"ok": 2, "skipped": 8, "error": 2}
    changed = {(r["image"], r["method"]): r for r in manifest(out)}[("s3/pictures/night/img01.png", "vanilla")]
    # the new picture's map (computed alone in its batch: equal up to the CPU kernels' last bits, see the README)
    np.testing.assert_allclose(np.load(out / changed["npy"]), np.load(reference / ref[("img05.png", "vanilla")]["npy"]),
                               rtol=1e-5, atol=1e-9)
