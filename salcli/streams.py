"""Inputs that are not local image files: fsspec URLs (``s3://``, ``gs://``, ``https://``, ``memory://``, ``file://``,
...) and the image members of tar shards (WebDataset's layout), local or remote. No torch, no terminal.

- **Listing** (discovery, in the main process): a URL names one file (or one tar); a tar's member list is read once,
  one pass over its headers (its data is seeked over, never read), and each image member becomes an item that
  remembers where its bytes are (offset and size).
- **Reading** (where decoding happens: the DataLoader workers): a URL's bytes through fsspec, a member's bytes from
  its offset in the tar. At most ``MAX_BYTES`` are read; ``images`` decodes the bytes with the same limits (formats,
  pixels, modes) as a local file's, and whatever goes wrong is that image's error record.
- **Identity** (resume): a URL's size and ETag or modification time as its file system reports them; a member's
  size and header time, and the identity of its tar (so a tar rewritten in place is redone).

Keys: a URL's key is its protocol, host and path joined by ``/`` (``s3://bucket/a/x.jpg`` -> ``s3/bucket/a/x.jpg``;
an https URL's query and fragment, and any user name or password, are left out), so it is the same whatever else
is listed. A member's key is the tar's key, ``/``, and the member's name (``shards/train-0001.tar/cat/001.jpg``).

fsspec is an optional extra (``pip install 'salcli[remote]'``), imported only when a URL is given.
"""

from __future__ import annotations

import datetime as dt
import functools
import posixpath
import re
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from .errors import UsageError, setting

URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
LOOKS_LIKE_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/")  # what pathlib leaves of a URL typed as a path
TAR = ".tar"
MAX_BYTES = 1 << 30  # a remote file or tar member larger than this is refused before it is read
IDENTITY_THREADS = 16  # concurrent metadata requests for the URLs' identities (resume)
INSTALL = "pip install 'salcli[remote]'"
_ETAG_KEYS = ("ETag", "etag", "e_tag", "md5Hash", "Content-MD5", "md5")
_MTIME_KEYS = ("mtime", "LastModified", "last_modified", "Last-Modified", "updated", "modified", "timeCreated",
               "created")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def is_url(location: Any) -> bool:
    """Whether ``location`` is a URL (``PROTOCOL://...``, a string); a Path never is."""
    return isinstance(location, str) and URL.match(location) is not None


def is_tar(location: Path | str) -> bool:
    """Whether an input names a tar shard (``.tar``, any case; an https URL's query does not count)."""
    path = urlsplit(location).path if is_url(location) and _protocol(location) in ("http", "https") else str(location)
    return path.lower().endswith(TAR)


def _protocol(url: str) -> str:
    return url.split("://", 1)[0].lower()


# ---------------------------------------------------------------------------------------------- fsspec
def fsspec_module():
    """fsspec, or a usage error saying how to install it."""
    try:
        import fsspec
    except ImportError:
        raise UsageError(f"{setting('files_from')} lists URLs, which salcli reads with fsspec, and fsspec is not "
                         f"installed: {INSTALL} (plus the file system's own package: s3fs for s3://, gcsfs for "
                         "gs://, aiohttp for https://)") from None
    return fsspec


def require(urls: list[str]) -> None:
    """Before any work: fsspec is installed and knows every protocol listed, with its package installed."""
    fsspec = fsspec_module()
    for protocol in sorted({_protocol(u) for u in urls}):
        try:
            fsspec.get_filesystem_class(protocol)
        except ValueError:
            raise UsageError(f"{setting('files_from')} lists a {protocol}:// URL, a protocol fsspec does not know; "
                             "check the line (s3://, gs://, https://, file://, memory://, ...)") from None
        except ImportError as exc:
            raise UsageError(f"{setting('files_from')} lists {protocol}:// URLs, and fsspec needs a package for them "
                             f"that is not installed: {exc}") from None


def _fs(url: str):
    """(file system, path) of a URL; the file system instance is fsspec's cached one."""
    return fsspec_module().core.url_to_fs(url)


def _local(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


# ---------------------------------------------------------------------------------------------- keys
def url_key(url: str) -> str:
    """The key of a URL: protocol, host and path, joined by ``/``; the path's ``.`` and ``..`` resolved and empty
    segments dropped; no user name or password, and (https) no query or fragment."""
    protocol, rest = url.split("://", 1)
    protocol = protocol.lower()
    if protocol in ("http", "https"):
        parts = urlsplit(url)
        host, path = parts.netloc, parts.path
    else:
        host, _, path = rest.partition("/")
    host = host.rpartition("@")[2]  # user:password@host
    path = posixpath.normpath("/" + path).lstrip("/") if path else ""
    return "/".join(p for p in (protocol, host, path) if p)


def redact(url: str) -> str:
    """A URL as the manifest's ``source`` keeps it: a password in it becomes ``***``."""
    match = re.match(r"([^:/]+://)([^/@]*):([^/@]*)@", url)
    return f"{match[1]}{match[2]}:***@{url[match.end():]}" if match else url


def member_key(name: str) -> tuple[str, str | None]:
    """(the part of a member's key after the tar's, why it must not be read or None): ``./`` and empty segments
    dropped; a ``..`` segment (a name that climbs out of the tar) is written ``%2E%2E`` and the member not read."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        return "/".join("%2E%2E" if p == ".." else p for p in parts), "its name climbs out of the tar ('..'): not read"
    return "/".join(parts), None


# ---------------------------------------------------------------------------------------------- identity
def _ns(value: Any) -> int | None:
    """A modification time as a file system reports it (seconds, a datetime, an ISO or HTTP date) -> ns."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return int(round(value * 1e9))
    if isinstance(value, str):
        from email.utils import parsedate_to_datetime

        for parse in (dt.datetime.fromisoformat, parsedate_to_datetime):
            try:
                value = parse(value.strip())
                break
            except (TypeError, ValueError, IndexError):
                continue
        else:
            return None
    if isinstance(value, dt.datetime):
        delta = (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)) - _EPOCH
        return (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000
    return None


def identity_of(info: dict[str, Any]) -> dict[str, Any]:
    """What resume compares for a file known by its metadata (``fs.info``): ``size``, ``mtime_ns`` (None when
    the file system gives no time) and ``etag`` when it gives one (S3's ETag, GCS's md5Hash, an HTTP ETag)."""
    size = info.get("size")
    found: dict[str, Any] = {"size": int(size) if isinstance(size, (int, float)) and not isinstance(size, bool)
                             else None,
                             "mtime_ns": next((t for t in map(_ns, (info.get(k) for k in _MTIME_KEYS))
                                               if t is not None), None)}
    etag = next((str(info[k]).strip('"') for k in _ETAG_KEYS if info.get(k)), None)
    if etag:
        found["etag"] = etag
    return found


UNKNOWN = {"size": -1, "mtime_ns": -1}  # a file whose metadata cannot be read: never skipped


def url_identity(url: str) -> dict[str, Any]:
    try:
        fs, path = _fs(url)
        return identity_of(fs.info(path))
    except Exception:  # noqa: BLE001 - not there, no permission, a network error: decoding will say which
        return dict(UNKNOWN)


def url_identities(urls: list[str]) -> dict[str, dict[str, Any]]:
    """url -> identity, the metadata requests made concurrently (they wait on the network, not the CPU)."""
    with ThreadPoolExecutor(max_workers=max(1, min(IDENTITY_THREADS, len(urls)))) as pool:
        return dict(zip(urls, pool.map(url_identity, urls)))


# ---------------------------------------------------------------------------------------------- tar shards
@dataclass(frozen=True)
class Member:
    """An image member of a tar: its ``name`` in the tar, where its bytes are (``offset``, ``size``), its header
    ``mtime`` (s), the identity of the tar (``container``), and ``problem`` when it must not be read (then it is
    an error record)."""

    name: str
    offset: int
    size: int
    mtime: int
    container: str
    problem: str | None = None

    def identity(self) -> dict[str, Any]:
        if self.problem is not None:
            return dict(UNKNOWN)
        return {"size": self.size, "mtime_ns": self.mtime * 10**9, "container": self.container}


def _open(location: Path | str, identity: bool = False) -> tuple[BinaryIO, str | None]:
    """(binary file, identity string or None) of a tar or file: a local path through ``images``' regular-file
    check (a FIFO is never opened), a URL through fsspec (a ``file://`` URL as a local path). With ``identity``
    (listing a tar) the file's metadata is read first: ``SIZE:ETAG`` or ``SIZE:MTIME_NS``. Raises ImageError."""
    import os

    from . import images

    if not is_url(location):
        fh, _ = images._open_regular(Path(location))
        st = os.fstat(fh.fileno())
        return fh, f"{st.st_size}:{st.st_mtime_ns}"
    try:
        fs, path = _fs(location)
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed URL
        raise images.ImageError(f"cannot read: {type(exc).__name__}: {exc}") from None
    if _local(fs):
        return _open(Path(path), identity)
    try:
        ident = None
        if identity:
            info = fs.info(path)
            if info.get("type") not in (None, "file"):
                raise images.ImageError(f"a {info.get('type')}, not a file")
            found = identity_of(info)
            ident = f"{found['size']}:{found.get('etag') or found['mtime_ns']}"
        return fs.open(path, "rb"), ident
    except images.ImageError:
        raise
    except FileNotFoundError:
        raise images.ImageError("file not found") from None
    except IsADirectoryError:
        raise images.ImageError("a folder, not an image file") from None
    except PermissionError:
        raise images.ImageError("cannot read: permission denied") from None
    except Exception as exc:  # noqa: BLE001 - whatever the file system raises is this input's error
        raise images.ImageError(f"cannot read: {type(exc).__name__}: {exc}") from None


def members(location: Path | str) -> tuple[dict[str, Member], str | None]:
    """The image members of the tar at ``location`` by name (a name given twice: the last, as ``tar`` extracts),
    and why the listing stopped early (a damaged tar), or raises ImageError when the tar cannot be read at all.
    Only regular members named like images (``images.EXTENSIONS``) are kept; other members (WebDataset's
    ``.cls``, ``.json``) are passed over. One pass over the headers: the members' data is seeked over."""
    from . import images

    fh, container = _open(location, identity=True)
    found: dict[str, Member] = {}
    with fh:
        try:
            head = fh.read(2)
            fh.seek(0)
        except Exception as exc:  # noqa: BLE001
            raise images.ImageError(f"cannot read: {type(exc).__name__}: {exc}") from None
        if head == b"\x1f\x8b":
            raise images.ImageError("a gzip-compressed tar: salcli reads a member at its offset, which needs an "
                                    "uncompressed .tar (gunzip it)")
        try:
            tar = tarfile.open(fileobj=fh, mode="r:")
        except Exception as exc:  # noqa: BLE001 - tarfile raises ReadError, EOFError, OSError ...
            raise images.ImageError(f"not a tar file salcli reads ({exc})") from None
        stopped = None
        while True:
            try:
                info = tar.next()
            except Exception as exc:  # noqa: BLE001 - a damaged header after some members
                stopped = f"the tar is damaged after {len(found)} image member(s) ({exc}); the rest was not read"
                break
            if info is None:  # the end, or a header that does not parse (tarfile stops there without a word)
                stopped = _damaged(fh, tar.offset, len(found))
                break
            tar.members.clear()  # a shard of a million members keeps only what salcli needs
            if not info.isfile() or posixpath.splitext(info.name)[1].lower() not in images.EXTENSIONS:
                continue
            problem = "a sparse member: not read" if info.issparse() else None
            if info.size > MAX_BYTES:
                problem = f"refused: {info.size:,} bytes is over the limit of {MAX_BYTES:,} for a member"
            found.pop(info.name, None)  # a later member of the same name wins, and keeps the tar's order
            found[info.name] = Member(info.name, info.offset_data, info.size, int(info.mtime), container, problem)
    return found, stopped


def _damaged(fh: BinaryIO, offset: int, count: int) -> str | None:
    """Why a tar listing that ended at ``offset`` ended early: a whole tar has only zero blocks (its end marker,
    padding) after its last member; anything else there is a member header that does not parse."""
    try:
        fh.seek(offset)
        rest = fh.read(10240)
    except Exception:  # noqa: BLE001
        return None
    if not rest.strip(b"\0"):
        return None
    return (f"the tar is damaged after {count} image member(s): the header at byte {offset:,} does not parse; the "
            "rest was not read")


def tar_items(location: Path | str, key: str, identity: str) -> list[tuple[str, Any]]:
    """(identity, ImageItem) for each image member of the tar at ``location`` whose own key is ``key``: the
    member's key is ``key/NAME``. A tar that cannot be read, or the damaged rest of one, is an item of the tar's
    key whose record says why (it never stops the run)."""
    from . import images

    try:
        found, stopped = members(location)
    except images.ImageError as exc:
        return [(identity, _broken(location, key, f"the tar {images.printable(str(location))}: {exc}"))]
    items = []
    for name, member in found.items():
        rest, problem = member_key(name)
        if problem is not None and member.problem is None:
            member = Member(member.name, member.offset, member.size, member.mtime, member.container, problem)
        items.append((f"{identity}#{name}", images.ImageItem(location, images.printable(f"{key}/{rest}"), member)))
    if stopped is not None:
        items.append((f"{identity}#", _broken(location, key, stopped)))
    return items


def _broken(location: Path | str, key: str, why: str):
    from . import images

    return images.ImageItem(location, images.printable(key), Member("", 0, 0, 0, "", why))


@functools.lru_cache(maxsize=8)
def _index(location: Path | str) -> tuple[dict[str, Member], str | None]:
    return members(location)


def find_member(location: Path | str, name: str, key: str):
    """The item of member ``name`` of the tar at ``location`` (a record read back: ``salcli render``,
    ``evaluate``); the tar is listed once per process. An item whose record says why when it is not there."""
    from . import images

    try:
        found, _ = _index(location)
    except images.ImageError as exc:
        return _broken(location, key, f"the tar {images.printable(str(location))}: {exc}")
    member = found.get(name)
    if member is None:
        return _broken(location, key, f"the tar {images.printable(str(location))} no longer holds {name}")
    return images.ImageItem(location, key, member)


# ---------------------------------------------------------------------------------------------- reading
def read(item) -> bytes:
    """The bytes of a URL or tar member (``images.ImageItem``), at most ``MAX_BYTES``; raises ImageError."""
    from . import images

    member: Member | None = item.member
    if member is not None and member.problem is not None:
        raise images.ImageError(member.problem)
    fh = _open(item.path)[0] if member is not None else _open_url(item.path)
    with fh:
        try:
            if member is not None:
                fh.seek(member.offset)
                data = fh.read(member.size)
                if len(data) != member.size:
                    raise images.ImageError(f"the tar is cut short inside this member ({len(data):,} of "
                                            f"{member.size:,} bytes)")
                return data
            data = fh.read(MAX_BYTES + 1)
        except images.ImageError:
            raise
        except Exception as exc:  # noqa: BLE001 - a network error, a file gone since it was opened
            raise images.ImageError(f"cannot read: {type(exc).__name__}: {exc}") from None
    if len(data) > MAX_BYTES:
        raise images.ImageError(f"refused: over the limit of {MAX_BYTES:,} bytes for a remote file")
    return data


def _open_url(url: str) -> BinaryIO:
    """A URL opened for reading (a ``file://`` URL through the local regular-file check); its size checked first
    when the file system knows it."""
    from . import images

    fh, _ = _open(url)
    size = getattr(fh, "size", None)  # fsspec's buffered files know it; a local file is checked as it is read
    if isinstance(size, int) and size > MAX_BYTES:
        fh.close()
        raise images.ImageError(f"refused: {size:,} bytes is over the limit of {MAX_BYTES:,} for a remote file")
    return fh
