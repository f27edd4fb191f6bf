"""Discovery that never stops on one file, and never opens a file that is not a regular file.

Odd entries (broken, looping and self-referencing symlinks, FIFOs, sockets, devices, folders named like images,
unreadable files and folders, names that are not UTF-8) found in a folder, named on the command line or listed
with --files-from: each becomes one error record or one line of a note, and the run goes on. Every run here is
under a time limit, since the failure this guards against is a hang (a FIFO opened for reading blocks).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_OPTS, manifest
from limits import time_limit
from salcli import images
from salcli.errors import UsageError
from salcli.images import ImageError, Skipped, decode, describe_skipped, discover, printable, read_file_list

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="FIFOs, sockets and symlinks as on POSIX")
ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0
AS_ROOT = "running as root: chmod 000 does not keep root from reading"
BAD_NAME = os.fsdecode(b"bad\xffname.png")  # not UTF-8: Python holds the byte as the surrogate U+DCFF


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 23, 3), dtype=np.uint8)).save(path)
    return path


def _socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    return sock


@pytest.fixture
def odd(tmp_path):
    """A folder with two good images and one of every odd kind of entry, named like images."""
    d = tmp_path / "odd"
    _png(d / "good.png")
    _png(d / "sub" / "nested.png", seed=1)
    os.symlink("self.png", d / "self.png")  # points to itself
    os.symlink("loop_b.png", d / "loop_a.png")  # a loop of two
    os.symlink("loop_a.png", d / "loop_b.png")
    os.symlink("nowhere.png", d / "broken.png")  # points to nothing
    os.symlink("selfdir", d / "selfdir")  # a loop with no image name: not a candidate, not followed
    os.mkfifo(d / "fifo.png")
    os.mkfifo(d / "pipe.txt")  # not named like an image: ignored like any other file
    os.symlink(os.devnull, d / "null.jpg")  # a character device
    _png(d / "folder.png" / "inside.png", seed=2)  # a folder named like an image is a folder
    sock = _socket(d / "sock.webp")
    yield d
    sock.close()


ODD_ERRORS = {"self.png": "symbolic link loop", "loop_a.png": "symbolic link loop",
              "loop_b.png": "symbolic link loop", "broken.png": "broken symbolic link"}
ODD_OK = {"good.png", "sub/nested.png", "folder.png/inside.png"}
ODD_SKIPPED = {"fifo.png": "FIFO", "null.jpg": "character device", "sock.webp": "socket"}


# ---------------------------------------------------------------------------------------------- discovery
def test_walking_a_folder_of_odd_entries_keeps_links_and_skips_non_regular_files(odd):
    skipped: list[Skipped] = []
    with time_limit(10, "discovery"):
        items = discover([odd], skipped=skipped)
    assert {it.key for it in items} == ODD_OK | set(ODD_ERRORS)
    assert {Path(s.path).name: s.why for s in skipped}.keys() == ODD_SKIPPED.keys()
    for s in skipped:
        assert ODD_SKIPPED[Path(s.path).name] in s.why
    note = describe_skipped(skipped)
    assert note.startswith("skipped 3 entries") and all(name in note for name in ODD_SKIPPED)


def test_each_link_that_cannot_be_followed_is_an_error_saying_why(odd):
    items = {it.key: it for it in discover([odd])}
    for key, words in ODD_ERRORS.items():
        with time_limit(10, key), pytest.raises(ImageError, match=words):
            decode(items[key].path)
    with pytest.raises(ImageError, match="nowhere.png does not exist"):
        decode(items["broken.png"].path)


@pytest.mark.parametrize("name,words", [("fifo.png", "FIFO"), ("null.jpg", "character device"),
                                        ("sock.webp", "socket"), ("folder.png", "a folder")])
def test_decode_refuses_a_non_regular_path_without_opening_it(odd, monkeypatch, name, words):
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k))
    with time_limit(10, f"decode({name})"), pytest.raises(ImageError, match=words):
        decode(odd / name)
    assert opened == []


def test_a_fifo_swapped_in_after_the_check_is_opened_non_blocking_and_refused(tmp_path, monkeypatch):
    """The stat says regular file, the open finds a FIFO (the path was replaced in between): O_NONBLOCK returns
    at once instead of waiting for a writer, and the open file's own stat refuses it."""
    fifo = tmp_path / "swapped.png"
    os.mkfifo(fifo)
    regular = os.stat(_png(tmp_path / "real.png"))
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: regular if Path(p) == fifo else real_stat(p, *a, **k))
    with time_limit(10, "decode of a swapped-in FIFO"), pytest.raises(ImageError, match="replaced"):
        decode(fifo)


def test_odd_inputs_named_on_the_command_line_are_kept_for_their_error_records(odd):
    named = [odd / n for n in ("good.png", "fifo.png", "null.jpg", "sock.webp", "self.png", "broken.png")]
    with time_limit(10, "discovery"):
        items = discover(named)
    assert [it.key for it in items] == sorted(p.name for p in named)


def test_command_line_inputs_that_are_not_there_or_not_images_are_usage_errors(odd, tmp_path):
    with pytest.raises(UsageError, match="input not found"):
        discover([tmp_path / "missing.png"])
    with pytest.raises(UsageError, match="symbolic link loop"):  # no image name: it could have been a folder
        discover([odd / "selfdir"])
    with pytest.raises(UsageError, match="not an image file"):
        discover([odd / "pipe.txt"])


def test_listed_odd_paths_are_kept_for_their_error_records(odd, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(odd / n) for n in ("good.png", "fifo.png", "self.png", "gone.png", "pipe.txt",
                                                         "folder.png")) + "\n")
    with time_limit(10, "discovery"):
        items = discover(read_file_list(listing), listed=True)
    assert [it.key for it in items] == ["fifo.png", "folder.png/inside.png", "gone.png", "good.png", "pipe.txt",
                                        "self.png"]


def test_a_folder_that_cannot_be_listed_is_noted_and_the_walk_goes_on(tmp_path, monkeypatch):
    _png(tmp_path / "a" / "x.png")
    _png(tmp_path / "b" / "y.png")
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "a":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # what chmod 000 does, also when the tests run as root
    skipped: list[Skipped] = []
    assert [it.key for it in discover([tmp_path], skipped=skipped)] == ["b/y.png"]
    assert [(Path(s.path).name, s.why) for s in skipped] == [("a", "a folder that cannot be read: Permission denied")]


@pytest.mark.skipif(ROOT_USER, reason=AS_ROOT)
def test_unreadable_file_and_folder_for_real(tmp_path):
    locked = _png(tmp_path / "locked.png")
    _png(tmp_path / "closed" / "z.png")
    locked.chmod(0)
    (tmp_path / "closed").chmod(0)
    try:
        skipped: list[Skipped] = []
        items = discover([tmp_path], skipped=skipped)
        assert [it.key for it in items] == ["locked.png"]
        assert [Path(s.path).name for s in skipped] == ["closed"]
        with pytest.raises(ImageError, match="permission denied"):
            decode(locked)
    finally:
        (tmp_path / "closed").chmod(stat.S_IRWXU)
        locked.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_unreadable_file_is_an_error_record(tmp_path, monkeypatch):
    locked = _png(tmp_path / "locked.png")
    real_open = os.open

    def refuse(path, *a, **k):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "open", refuse)  # what chmod 000 does, also as root
    with pytest.raises(ImageError, match="cannot read: permission denied"):
        decode(locked)


# ---------------------------------------------------------------------------------------------- names
def test_a_name_that_is_not_utf8_gets_an_escaped_key_and_still_opens(tmp_path):
    _png(tmp_path / BAD_NAME)
    _png(tmp_path / "plain.png")
    items = discover([tmp_path])
    assert [it.key for it in items] == ["bad\\xffname.png", "plain.png"]
    assert all(it.key.encode("utf-8") for it in items)
    assert decode(items[0].path).size == (23, 20)
    assert images.shard_of(items[0].key, 3) in range(3)
    assert printable(str(items[0].path)).endswith("bad\\xffname.png")
    assert printable("caf\u00e9.png") == "caf\u00e9.png"  # valid text is left alone


def test_a_list_with_a_name_that_is_not_utf8_names_that_file(tmp_path):
    _png(tmp_path / BAD_NAME)
    listing = tmp_path / "list.txt"
    listing.write_bytes(os.fsencode(tmp_path / BAD_NAME) + b"\n")
    items = discover(read_file_list(listing), listed=True)
    assert [it.key for it in items] == ["bad\\xffname.png"]
    assert decode(items[0].path).mode == "RGB"


def test_a_list_from_find_print0_is_read_by_nul(tmp_path):
    """A NUL is in no file name: a list that holds one is NUL-separated (``find -print0``), and its names are
    taken exactly, spaces and newlines included."""
    names = [" spaced .png", "new\nline.png", "#not a comment.png"]
    for n in names:
        _png(tmp_path / n)
    listing = tmp_path / "list0"
    listing.write_bytes(b"".join(os.fsencode(tmp_path / n) + b"\0" for n in names))
    items = discover(read_file_list(listing), listed=True)
    assert [it.key for it in items] == sorted([" spaced .png", r"new\x0aline.png", "#not a comment.png"])
    assert all(decode(it.path).size == (23, 20) for it in items)


def test_a_list_of_garbage_with_a_nul_is_one_error_record_each(tmp_path):
    """Found by tests/test_fuzz_cli.py: a line holding a NUL byte raised ValueError out of discovery."""
    listing = tmp_path / "list"
    listing.write_bytes(b"\x00\x01\x02\n")
    items = discover(read_file_list(listing), listed=True)
    assert [it.key for it in items] == [r"\x01\x02\x0a"]
    with pytest.raises(ImageError, match="file not found"):
        decode(items[0].path)
    with pytest.raises(ImageError, match="NUL byte"):  # through the Python API a NUL can still arrive
        decode(Path("a\0b.png"))
    assert [it.key for it in discover([Path("a\0b.png")], listed=True)] == [r"a\x00b.png"]


def test_names_with_control_characters_get_escaped_keys(cli, tmp_path):
    """A newline in a file name broke the journal's merge at the end of the run (a traceback, no manifest), and
    an escape sequence in one reached the terminal in the failure lines: keys write them as \\xNN."""
    folder, out = tmp_path / "in", tmp_path / "out"
    _png(folder / "new\nline.png")
    (folder / "\x1b[31mred.png").write_bytes(b"not a png")
    with time_limit(60, "salcli explain"):
        result = cli("explain", folder, "-o", out, *TINY_OPTS, "--device", "cpu", expect=1)
    records = _records(out)
    assert records[r"new\x0aline.png"]["status"] == "ok"
    assert records[r"\x1b[31mred.png"]["status"] == "error"
    assert (out / "vanilla" / r"new\x0aline.png.npy").is_file()
    assert "\x1b" not in result.stderr and r"\x1b[31mred.png" in result.stderr


# ---------------------------------------------------------------------------------------------- end to end
def _records(out: Path) -> dict[str, dict]:
    raw = (out / "manifest.jsonl").read_bytes()
    raw.decode("utf-8")  # strict: the manifest is valid UTF-8
    return {r["image"]: r for r in (json.loads(line) for line in raw.splitlines())}


def test_cli_runs_through_a_folder_of_odd_entries(cli, odd, tmp_path):
    _png(odd / BAD_NAME, seed=3)
    out = tmp_path / "out"
    with time_limit(60, "salcli explain"):
        result = cli("explain", odd, "-o", out, *TINY_OPTS, "--device", "cpu", expect=1)
    records = _records(out)
    assert set(records) == ODD_OK | set(ODD_ERRORS) | {"bad\\xffname.png"}
    for key in ODD_OK | {"bad\\xffname.png"}:
        assert records[key]["status"] == "ok", records[key]
    assert records["bad\\xffname.png"]["source"].endswith("bad\\xffname.png")
    assert (out / "vanilla" / "bad\\xffname.png.npy").is_file()
    for key, words in ODD_ERRORS.items():
        assert records[key]["status"] == "error" and words in records[key]["error"], records[key]
    note = [line for line in result.stderr.splitlines() if "skipped 3 entries" in line]
    assert len(note) == 1 and all(name in note[0] for name in ODD_SKIPPED), result.stderr
    assert "Traceback" not in result.stderr
    # the same command again: the good images are done, the odd ones fail the same way, nothing hangs
    with time_limit(60, "salcli explain, resumed"):
        cli("explain", odd, "-o", out, *TINY_OPTS, "--device", "cpu", expect=1)
    again = {k: r["status"] for k, r in _records(out).items()}
    assert again == {k: "skipped" if r["status"] == "ok" else "error" for k, r in records.items()}


def test_cli_explicit_fifo_socket_and_device_are_error_records_not_a_hang(cli, odd, tmp_path):
    out = tmp_path / "out"
    named = [odd / n for n in ("good.png", "fifo.png", "null.jpg", "sock.webp", "self.png")]
    with time_limit(60, "salcli explain"):
        cli("explain", *named, "-o", out, *TINY_OPTS, "--device", "cpu", expect=1)
    records = {r["image"]: r for r in manifest(out)}
    assert records["good.png"]["status"] == "ok"
    for name, words in (("fifo.png", "FIFO"), ("null.jpg", "character device"), ("sock.webp", "socket"),
                        ("self.png", "symbolic link loop")):
        assert records[name]["status"] == "error" and words in records[name]["error"], records[name]


def test_cli_listed_fifo_is_an_error_record_not_a_hang(cli, odd, tmp_path):
    out, listing = tmp_path / "out", tmp_path / "list.txt"
    listing.write_text(f"{odd / 'fifo.png'}\n{odd / 'good.png'}\n{odd / 'broken.png'}\n")
    with time_limit(60, "salcli explain --files-from"):
        cli("explain", "--files-from", listing, "-o", out, *TINY_OPTS, "--device", "cpu", expect=1)
    assert {r["image"]: r["status"] for r in manifest(out)} == {"fifo.png": "error", "good.png": "ok",
                                                               "broken.png": "error"}
    with time_limit(60, "salcli verify"):
        result = cli("verify", out, expect=1)
    assert "fifo.png" in result.stdout + result.stderr
