"""Image discovery, safe decoding and preprocessing, and a Dataset that records bad files instead of raising.

Decoding follows Pillow's traps: ``exif_transpose``; palette and alpha images composited onto black; CMYK
and other modes converted to RGB; 16-bit images scaled (not clipped) to 8 bits; decompression bombs refused.
Nothing here opens a file that is not a regular file, and no single file stops discovery or a run. URLs and the
members of tar shards (``streams``) are listed, identified and decoded the same way: their bytes go through the
same decoder, with the same limits.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from . import geometry, streams
from .config import Preprocess
from .errors import UsageError, setting

EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}
FORMATS = ("BMP", "GIF", "JPEG", "PNG", "TIFF", "WEBP")  # the only parsers a file reaches, whatever its name
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # Pillow's own warning threshold, as it was at import
BOX_RESIZE_PIXELS = 1 << 24  # above this resized size, ``prepare`` resamples only the crop's region
# open for reading only; never block (a FIFO swapped in after the check), never become a controlling terminal
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
               | getattr(os, "O_BINARY", 0))


@dataclass(frozen=True)
class ImageItem:
    path: Path | str  # where to read it: a local path, or a URL read through fsspec (``streams.is_url``)
    key: str  # relative path with '/' separators: output names and random seeds derive from it
    member: streams.Member | None = None  # a member of the tar at ``path``: its bytes are read at its offset


class ImageError(Exception):
    """A file that cannot be used as an image; the message says why."""


# ---------------------------------------------------------------------------------------------- discovery
@dataclass(frozen=True)
class Skipped:
    """Something discovery passed over while walking a folder, and why (``describe_skipped`` words a note)."""

    path: str  # as found, printable (``printable``)
    why: str


def discover(inputs: list[Path | str] | tuple[Path | str, ...], exclude: Path | None = None, *,
             listed: bool = False, root: Path | None = None, skipped: list[Skipped] | None = None
             ) -> list[ImageItem]:
    """Image files under ``inputs`` (files and folders, recursive), sorted by relative path.

    Keys are relative to the deepest folder holding every input (a folder input counts as itself; a file
    input counts as the folder it is named in, a symlinked file included), so one folder gives paths inside
    it and several inputs keep their distinguishing folder names. A symlinked folder is visited once; a
    symlink cycle is not followed. The folder ``exclude`` (the output folder) is never searched, so a run's
    own overlays are not taken as inputs by the next run.

    No odd file stops discovery, and discovery opens no file (it only lists folders and stats entries):
    - found in a folder, a name with an image extension is kept when it is a regular file, or when it cannot
      be followed (a broken or looping symlink) or stat'ed: ``decode`` then says why, in that image's error
      record. A FIFO, socket or device so named is passed over and appended to ``skipped``, as is a folder
      that cannot be listed;
    - named on the command line (or listed), an image-named path that is not a regular file is kept the
      same way: its record says what it is. ``decode`` never opens one.
    Keys are valid Unicode without control characters: a byte of a file name that is not UTF-8, or a newline,
    is written ``\\xNN`` (``printable``).

    ``listed``: the inputs come from a file list (``read_file_list``): a listed file that is missing, or whose
    extension is not an image's, is kept (its decoding fails and becomes that image's error record) instead
    of stopping the run; its key is computed as for a file given on the command line.

    ``root``: the folder keys are relative to, instead of the deepest common one, so that the same file gets
    the same key whatever else is on the command line (``find | xargs salcli explain --root DIR`` on two
    nights); every input must be inside it.

    Streamed inputs (``streams``): a URL (a string ``PROTOCOL://...``, from a list) is one item keyed by its
    protocol, host and path (``streams.url_key``), read later through fsspec; a tar shard (``.tar``, named, listed
    or a URL) gives one item per image member, keyed ``TAR'S KEY/MEMBER``, whose bytes are read at their offset.
    """
    if not inputs:
        raise UsageError("give at least one image file or folder")
    skipped = [] if skipped is None else skipped
    urls = [p for p in inputs if streams.is_url(p)]
    local = [Path(p) for p in inputs if not streams.is_url(p)]
    if urls:
        streams.require(urls)  # fsspec and each protocol's package, or a usage error naming what to install
    found: dict[str, ImageItem] = {}  # the file's identity -> its item, first seen wins
    if local:
        _discover_local(local, exclude, listed, root, skipped, found)
    for url in urls:
        key = streams.url_key(url)
        if streams.is_tar(url):
            for identity, item in streams.tar_items(url, key, url):
                found.setdefault(identity, item)
        else:
            found.setdefault(url, ImageItem(url, printable(key)))
    items: dict[str, ImageItem] = {}
    for item in found.values():
        items.setdefault(item.key, item)
    return [items[k] for k in sorted(items)]


def _discover_local(inputs: list[Path], exclude: Path | None, listed: bool, root: Path | None,
                    skipped: list[Skipped], found: dict[str, ImageItem]) -> None:
    """``discover`` for local paths: adds each image's item to ``found`` under the file's identity."""
    kinds = [_stat(p) for p in inputs]
    if not listed:
        _check_named(inputs, kinds)
    # the folder each input's keys start from: itself for a folder, the folder it is named in for a file
    starts = [p if _is_dir(st) else p.parent for p, st in zip(inputs, kinds)]
    prefixes = _prefixes(inputs, starts, root)
    seen_dirs: set[str] = {os.path.realpath(exclude)} if exclude is not None else set()
    for p, st, start, prefix in zip(inputs, kinds, starts, prefixes):
        if _is_dir(st):
            for path in _walk(p, seen_dirs, skipped):
                key = (prefix / path.relative_to(start)).as_posix()
                found.setdefault(_identity(path), ImageItem(path, printable(key)))
            continue
        # a file named on the command line or listed; decode says what is wrong with it, if anything
        identity = _identity(p) if not listed else os.path.abspath(p)
        key = (prefix / p.name).as_posix()
        if streams.is_tar(p):  # a tar shard: its image members
            for member_identity, item in streams.tar_items(p, key, identity):
                found.setdefault(member_identity, item)
        else:
            found.setdefault(identity, ImageItem(p, printable(key)))


def _check_named(inputs, kinds) -> None:
    """Inputs named on the command line: a folder, or a path with an image extension (which may be anything:
    its record says what); a missing path, or another name, is a usage error."""
    for p, st in zip(inputs, kinds):
        if _is_dir(st):
            continue
        if isinstance(st, OSError) and not os.path.lexists(p):
            if streams.LOOKS_LIKE_URL.match(str(p)):
                raise UsageError(f"input not found: {p}; URLs are read from a list: give them with "
                                 f"{setting('files_from')} LIST (one per line; - reads standard input)")
            raise UsageError(f"input not found: {p}")
        if p.suffix.lower() not in EXTENSIONS and not streams.is_tar(p):
            why = f"{_unreachable(p, st)}; " if isinstance(st, OSError) else ""
            raise UsageError(f"{p} is not an image file ({why}extensions: {', '.join(sorted(EXTENSIONS))}; "
                             "or a .tar of images)")


def _prefixes(inputs, starts: list[Path], root: Path | None) -> list[Path]:
    """Each input's start folder relative to the folder keys are relative to (``root``, or the deepest one
    that holds every start)."""
    reals = [Path(os.path.realpath(s)) for s in starts]
    base = Path(os.path.commonpath([str(r) for r in reals]))
    if root is not None:
        base = Path(os.path.realpath(root))
        outside = [str(p) for p, r in zip(inputs, reals) if not r.is_relative_to(base)]
        if outside:
            raise UsageError(f"{outside[0]} is not inside {setting('root')} {root}; keys are paths relative to it")
    return [r.relative_to(base) for r in reals]


def describe_skipped(skipped: list[Skipped], shown: int = 5) -> str:
    """One note for everything discovery passed over: how many, the first ``shown`` with what each is."""
    listed = "; ".join(f"{s.path}: {s.why}" for s in skipped[:shown])
    more = f"; and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return (f"skipped {len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} that salcli does not open "
            f"(FIFOs, sockets and devices named like images, folders that cannot be listed): {listed}{more}")


def read_file_list(source: Path | str) -> list[Path | str]:
    """The paths listed in ``source`` (``-``: standard input), one per line; blank lines and lines starting
    with ``#`` are ignored, surrounding spaces removed. Relative paths are relative to the current folder, as
    on the command line. A line that is a URL (``s3://...``, ``https://...``: ``streams.is_url``) is kept as a
    string, read later through fsspec. Bytes that are not UTF-8 are kept as in a file name (``os.fsdecode``), so
    a list written by ``find`` names such files too. A list that holds a NUL byte is one of ``find -print0``: its
    names are separated by NUL and taken exactly as written (no stripping, no comments; a name may hold a
    newline). Pass the result to ``discover(paths, exclude, listed=True)``.

    The list itself may be a pipe (``--files-from <(find ...)``): it is read to its end, as ``-`` is."""
    import sys

    if str(source) == "-":
        stream = getattr(sys.stdin, "buffer", None)
        text = _as_names(stream.read()) if stream is not None else sys.stdin.read()
    else:
        try:
            text = _as_names(Path(source).read_bytes())
        except FileNotFoundError:
            raise UsageError(f"the list {setting('files_from')} {source} was not found") from None
        except OSError as exc:
            raise UsageError(f"cannot read the list {setting('files_from')} {source}: {exc.strerror or exc}") from None
    if "\0" in text:  # no file name holds a NUL: the separator of find -print0
        names = [name for name in text.split("\0") if name]
    else:
        names = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    paths: list[Path | str] = [name if streams.is_url(name) else Path(name) for name in names]
    if not paths:
        raise UsageError(f"the list {setting('files_from')} {source} names no files")
    return paths


def _as_names(data: bytes) -> str:
    """A list's bytes as file names: decoded as the file system decodes names (UTF-8, undecodable bytes kept
    as surrogates, PEP 383), so each line names the file whose name has those bytes."""
    try:
        return os.fsdecode(data)
    except UnicodeDecodeError:  # a file system encoding that keeps no bytes (Windows)
        return data.decode("utf-8", "surrogateescape")


def _walk(folder: Path, seen_dirs: set[str], skipped: list[Skipped]):
    """The image candidates under ``folder`` (see ``discover``), in name order; no entry stops the walk."""
    real = os.path.realpath(folder)
    if real in seen_dirs:
        return
    seen_dirs.add(real)
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError as exc:
        skipped.append(Skipped(printable(str(folder)), f"a folder that cannot be read: {exc.strerror or exc}"))
        return
    for entry in entries:
        path = Path(entry.path)
        named = path.suffix.lower() in EXTENSIONS
        try:  # DirEntry answers from the folder listing where it can: no stat call for plain files and folders
            if entry.is_dir():
                yield from _walk(path, seen_dirs, skipped)
            elif not named:
                continue
            elif entry.is_file():
                yield path
            else:  # neither: a FIFO, socket or device, or a symlink to nothing
                skipped.append(Skipped(printable(str(path)), _kind(os.stat(entry.path).st_mode)))
        except OSError:  # a symlink loop, a broken symlink, no permission to look
            if named:
                yield path  # an error record says which


def _stat(path: Path) -> os.stat_result | OSError:
    try:
        return os.stat(path)
    except OSError as exc:
        return exc
    except ValueError:  # a NUL byte in the name (only the Python API can pass one)
        return OSError(errno.EINVAL, "the name holds a NUL byte")


def _is_dir(st: os.stat_result | OSError) -> bool:
    return isinstance(st, os.stat_result) and stat.S_ISDIR(st.st_mode)


def _identity(path: Path) -> str:
    """The same file reached by two names (a symlinked folder) is one image; a path that does not resolve is
    its own."""
    return os.path.realpath(path) if os.path.exists(path) else os.path.abspath(path)


def printable(text: str) -> str:
    """``text`` as valid Unicode free of control characters, for keys, records and messages: the bytes of a
    file name that are not UTF-8 (which Python holds as lone surrogates, PEP 383) and the control characters
    (a newline, ESC, ...; C1 ones as ``\\u0080``-``\\u009f``) become ``\\xNN``. A key then never breaks a
    line-based file and a name never sends escape sequences to a terminal. Other text is returned as it is."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate that no byte gave
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(_escape_control, text)


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _escape_control(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}"


def source(item: ImageItem) -> str:
    """The absolute path of the image's file (of its tar, for a member), or its URL without a password, printable
    (the manifest's ``source``)."""
    if streams.is_url(item.path):
        return printable(streams.redact(item.path))
    return printable(os.path.realpath(item.path))


def origin(item: ImageItem) -> dict[str, str]:
    """Where a record's image was read: ``source`` (``source()``), and for a tar member its name (``member``)."""
    found = {"source": source(item)}
    if item.member is not None and item.member.name:
        found["member"] = printable(item.member.name)
    return found


def from_record(record: dict) -> ImageItem:
    """The item a manifest record's image was read from (``source``, and ``member`` for a tar member), to read it
    again (``salcli render``, ``evaluate``). Raises ImageError when the record names no source."""
    where = record.get("source")
    if not isinstance(where, str) or not where:
        raise ImageError("the record names no source image")
    location: Path | str = where if streams.is_url(where) else Path(where)
    if isinstance(record.get("member"), str):
        return streams.find_member(location, record["member"], str(record.get("image")))
    return ImageItem(location, str(record.get("image")))


def content(item: ImageItem) -> dict:
    """What resume compares besides the settings: a local file's size and modification time (a file replaced
    under the same name is redone); a URL's size and ETag or modification time; a tar member's size and header
    time and its tar's identity (``streams``). A file that cannot be read gets nothing to compare
    (``size`` -1), so it is never skipped."""
    if item.member is not None:
        return item.member.identity()
    if streams.is_url(item.path):
        return streams.url_identity(item.path)
    try:
        st = Path(item.path).stat()
    except (OSError, ValueError):
        return dict(streams.UNKNOWN)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def contents(items: list[ImageItem]) -> dict[str, dict]:
    """``content`` of every item by key; the URLs' metadata requests are made concurrently."""
    urls = [item.path for item in items if item.member is None and streams.is_url(item.path)]
    remote = streams.url_identities(urls) if urls else {}
    return {item.key: remote[item.path] if item.member is None and item.path in remote else content(item)
            for item in items}


def _kind(mode: int) -> str:
    """What a path that is not a regular file or a folder is, in words."""
    for test, what in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return what
    return "not a regular file"


def _unreachable(path: Path, exc: OSError) -> str:
    """Why ``path`` cannot be stat'ed, in words."""
    if exc.errno == errno.ELOOP:
        return "a symbolic link loop: it cannot be followed"
    if exc.errno == errno.EINVAL and not exc.filename:
        return f"not a file name: {exc.strerror}"
    if exc.errno == errno.ENOENT and os.path.islink(path):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"a broken symbolic link: its target {printable(target)} does not exist"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return "file not found"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return f"cannot be read: {exc.strerror or exc}"


def shard(items: list[ImageItem], index: int, count: int) -> list[ImageItem]:
    """The ``index``-th of ``count`` disjoint slices, in the items' order. An image's slice depends only on its
    key (``shard_of``), so adding or removing a file while shards run moves that file alone."""
    return [item for item in items if shard_of(item.key, count) == index]


def shard_of(key: str, count: int) -> int:
    """The slice of ``count`` that the image ``key`` belongs to: the first 8 bytes of sha256(key), big-endian,
    modulo ``count`` (stable across runs, machines and Python versions, unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % count


# ---------------------------------------------------------------------------------------------- decoding
def decode(path: Path) -> Image.Image:
    """Open, fully decode and normalize an image to mode ``RGB`` or ``L``; raises ``ImageError`` (and nothing
    else: whatever Pillow raises on a corrupt file is that file's error).

    Only a regular file is opened, never a FIFO, socket or device (a FIFO would block forever): the path is
    stat'ed first, opened non-blocking, and the open file checked again. Only the formats of ``EXTENSIONS`` are
    read, whatever the name (Pillow's other parsers are never reached). Pictures over ``MAX_PIXELS`` are refused
    before their pixels are decoded."""
    try:
        return _decode(Path(path))
    except ImageError as exc:
        raise ImageError(printable(str(exc))) from None


def load(item: ImageItem) -> Image.Image:
    """``decode`` for any item: a local file, or the bytes of a URL or tar member (``streams.read``, capped at
    ``streams.MAX_BYTES``) decoded with the same limits and checks; raises ``ImageError`` only."""
    if item.member is None and not streams.is_url(item.path):
        return decode(Path(item.path))
    try:
        data = streams.read(item)
        return _decode_stream(io.BytesIO(data), len(data))
    except ImageError as exc:
        raise ImageError(printable(str(exc))) from None


def decode_bytes(data: bytes | bytearray | memoryview) -> Image.Image:
    """``decode`` for a file's bytes held in memory (a Ray Data ``bytes`` or Spark ``content`` column): the same
    formats, limits and checks; raises ``ImageError`` only."""
    data = bytes(data)  # a bytearray or memoryview may change under us; bytes do not
    if len(data) > streams.MAX_BYTES:
        raise ImageError(f"refused: {len(data):,} bytes is over the limit of {streams.MAX_BYTES:,}")
    try:
        return _decode_stream(io.BytesIO(data), len(data))
    except ImageError as exc:
        raise ImageError(printable(str(exc))) from None


def from_array(pixels) -> Image.Image:
    """A picture given as decoded pixels (what Ray Data's ``read_images`` hands over): uint8 (H, W), (H, W, 1),
    (H, W, 3) or (H, W, 4), bool (H, W), or uint16 (H, W), normalized as ``decode`` normalizes a file's picture
    (alpha composited onto black, 16 bits scaled to 8), with the same pixel limit; raises ``ImageError`` only.
    The array is read, never written."""
    arr = np.asarray(pixels)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    what = f"pixels of type {arr.dtype} and shape {tuple(arr.shape)}"
    if arr.dtype == np.bool_ and arr.ndim == 2:
        arr = arr.astype(np.uint8) * 255  # mode "1" as Pillow converts it: white is 255
    if arr.dtype == np.uint8 and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        mode = "L" if arr.ndim == 2 else ("RGB", "RGBA")[arr.shape[2] - 3]
    elif arr.dtype == np.uint16 and arr.ndim == 2:
        mode = "I;16"
    else:
        raise ImageError(f"{what}: give uint8 pixels (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), or the file's "
                         "encoded bytes")
    if arr.shape[0] < 1 or arr.shape[1] < 1 or arr.shape[0] * arr.shape[1] > MAX_PIXELS:
        raise ImageError(f"{what}: refused, an image needs between 1 and {MAX_PIXELS:,} pixels")
    if mode == "I;16":
        arr = arr.astype("<u2")  # the byte order Pillow's I;16 holds
    im = Image.frombuffer(mode, (arr.shape[1], arr.shape[0]), np.ascontiguousarray(arr).tobytes(), "raw", mode, 0, 1)
    return _to_standard_mode(im)


def _decode(path: Path) -> Image.Image:
    fh, size = _open_regular(path)
    with fh:
        return _decode_stream(fh, size)


def _decode_stream(fh, size: int) -> Image.Image:
    """Decode an open binary file of ``size`` bytes (see ``decode``)."""
    try:
        with warnings.catch_warnings():
            # Pillow's notes on a damaged file ("Corrupt EXIF data", "Truncated File Read"): the record says
            # whether it decoded, and a folder of such files would flood the terminal
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fh, formats=FORMATS) as im:
                _check_size(im)
                im.load()
                _check_size(im)  # a frame may change the size as it loads
                ImageOps.exif_transpose(im, in_place=True)  # no copy when there is nothing to turn
                return _to_standard_mode(im)  # a new picture in any case: the file closes after this
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"refused as a decompression bomb: {exc}") from None
    except Image.UnidentifiedImageError:
        what = ("an empty file" if size == 0 else
                f"not an image salcli reads ({', '.join(FORMATS)}), or its header is damaged")
        raise ImageError(f"cannot decode: {what}") from None
    except MemoryError:
        raise ImageError("cannot decode: out of memory") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's parsers raise many types on corrupt data
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise ImageError(f"cannot decode ({detail}); the file may be truncated or corrupt") from None


def _open_regular(path: Path):
    """(binary file, size) of ``path`` when it is a regular file (following symlinks); ``ImageError`` otherwise.
    Stat'ed before it is opened, so a FIFO or device is never opened; opened with O_NONBLOCK, so one swapped
    in between cannot block either; the open file is checked to be the one stat'ed."""
    before = _stat(path)
    if isinstance(before, OSError):
        raise ImageError(_unreachable(path, before))
    if not stat.S_ISREG(before.st_mode):
        what = _kind(before.st_mode)
        raise ImageError("a folder, not an image file" if what == "a folder"
                         else f"{what}, not a regular file: salcli does not open it")
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise ImageError("cannot read: permission denied" if exc.errno in (errno.EACCES, errno.EPERM)
                         else f"cannot read: {exc.strerror or exc}") from None
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
            raise ImageError("the file was replaced while it was opened; not read")
        return os.fdopen(fd, "rb"), now.st_size
    except BaseException:
        os.close(fd)
        raise


def _check_size(im: Image.Image) -> None:
    if im.width < 1 or im.height < 1:
        raise ImageError(f"cannot decode: the image has no pixels ({im.width}x{im.height})")
    if im.width * im.height > MAX_PIXELS:
        raise ImageError(f"refused: {im.width}x{im.height} pixels is over the decompression-bomb "
                         f"limit of {MAX_PIXELS:,}")


def _to_standard_mode(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode in ("RGB", "L"):
        return im.copy()
    if mode == "1":
        return im.convert("L")
    if mode.startswith("I;16") or mode == "I" or mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64), copy=False, nan=0.0)  # a float NaN is black
        if mode == "F":
            top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0 if arr.max(initial=0) <= 255 else 65535.0
        elif mode == "I":
            top = 255.0 if arr.max(initial=0) <= 255 else 65535.0
        else:
            top = 65535.0
        return Image.fromarray(np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8), "L")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    if im.mode in ("LA", "La"):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "RGBa"):
        background = Image.new("RGBA", im.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, im.convert("RGBA")).convert("RGB")
    return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX ...


# ---------------------------------------------------------------------------------------------- preprocessing
def prepare(im: Image.Image, pre: Preprocess) -> np.ndarray:
    """Resize the short side to ``pre.resize`` (antialiased, ``pre.interpolation``), center-crop ``pre.crop``, convert to
    ``pre.channels``: returns uint8 (crop, crop, channels), the picture the model sees before normalization."""
    im = im.convert("L" if pre.channels == 1 else "RGB")
    geom = geometry.geometry(im.width, im.height, pre.resize, pre.crop)  # the numbers overlays map back with
    if geom.resized[0] * geom.resized[1] > BOX_RESIZE_PIXELS:
        # an extreme aspect ratio (a 1 x 4,000,000 strip at resize 16 is 16 x 64,000,000): resample only the
        # crop's region of the original (the same geometry; values within a grey level or so for bilinear and
        # bicubic), instead of the whole resized picture that could not fit in memory
        im = im.resize((pre.crop, pre.crop), RESAMPLE[pre.interpolation], box=geom.box, reducing_gap=None)
    else:
        if geom.resized != im.size:
            im = im.resize(geom.resized, RESAMPLE[pre.interpolation], reducing_gap=None)
        im = im.crop((geom.left, geom.top, geom.left + pre.crop, geom.top + pre.crop))
    arr = np.asarray(im, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def normalize(pixels: np.ndarray, pre: Preprocess) -> np.ndarray:
    """uint8 (H, W, C) -> float32 (C, H, W), ``(x / 255 - mean) / std``: ``normalize_batch`` on one image."""
    import torch

    pixels = np.require(pixels, requirements=("C", "W"))  # torch wants writable memory (a decoded image is not)
    return normalize_batch(torch.from_numpy(pixels)[None], pre)[0].contiguous().numpy()


def normalize_batch(pixels, pre: Preprocess):
    """uint8 torch tensor (B, H, W, C) -> float32 (B, C, H, W), ``(x / 255 - mean) / std`` in float32, on the
    pixels' device and in torch's threads. A GPU receives uint8 pixels, a quarter of the bytes of float32. The
    result keeps the pixels' channels-last memory layout."""
    import torch

    x = pixels.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(pre.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def picture(im: Image.Image, cap: int) -> np.ndarray:
    """The decoded picture for display: scaled down (antialiased, never up) to at most ``cap`` pixels on its long
    side, in its own mode (RGB or L): uint8 (h, w, 3 or 1). Overlays on the original are drawn on it, so a batch
    holds at most ``cap``² pixels per image whatever the size of the files."""
    size = geometry.capped_size(im.width, im.height, cap)
    if size != im.size:
        im = im.resize(size, Image.BICUBIC, reducing_gap=3.0)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


class ImageDataset:
    """Items are dicts: ``index``, ``key``, and either ``pixels`` (with ``size``, the original's (width, height))
    or ``error``.

    With ``display`` (a size cap, ``--overlay-size``), a good item also holds ``picture``, the original scaled to
    fit the cap (``picture()``): what an overlay on the original needs (None: no overlays, no picture). The
    model's input (``pixels``) is the same either way.

    A file that cannot be decoded becomes an error record; it never raises, so a DataLoader worker survives.
    """

    def __init__(self, items: list[ImageItem], pre: Preprocess, display: int | None = None) -> None:
        self.items, self.pre, self.display = items, pre, display

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        extra = {}
        try:
            im = load(item)
            pixels = prepare(im, self.pre)
            extra = {"size": im.size}  # the manifest's width and height, with or without overlays
            if self.display is not None:
                extra["picture"] = picture(im, self.display)
        except ImageError as exc:
            return {"index": index, "key": item.key, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - any other failure is still this one file's failure
            return {"index": index, "key": item.key, "error": printable(f"{type(exc).__name__}: {exc}")}
        return {"index": index, "key": item.key, "pixels": pixels, **extra}


def collate(records: list[dict]) -> dict:
    """Stack the good records' pixels into one uint8 tensor (B, H, W, C) and pass the failed records through; an
    all-bad batch has ``pixels`` None. Each good record keeps its ``picture`` and ``size`` when it has them
    (pictures differ in size: they are not stacked). Normalization happens on the batch, on the model's device
    (``normalize_batch``)."""
    import torch

    good = [r for r in records if "error" not in r]
    stacked = np.stack([r["pixels"] for r in good]) if good else None
    return {
        "good": [{**{k: v for k, v in r.items() if k in ("picture", "size")},
                  "index": r["index"], "key": r["key"], "pixels": stacked[i]} for i, r in enumerate(good)],
        "pixels": torch.from_numpy(stacked) if good else None,
        "errors": [r for r in records if "error" in r],
    }
