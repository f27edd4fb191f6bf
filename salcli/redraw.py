"""`salcli render`: overlays drawn again from a finished run's stored maps, in any format, without the model (and
without torch). Never imports typer.

For each (image, method) whose map is stored (status ``ok`` or ``skipped``), the map is read through the run's sink,
the picture is read again from the record's ``source`` (a local file, a URL, a tar member: ``images.from_record``),
and the overlay is drawn as ``explain`` draws it (``overlay.draw``: the same picture, geometry, caption, legend and
PNG encoder), with the run's display settings or the ones given (``--colormap``, ``--alpha``, ``--sign``,
``--scale image|run|VALUE``, ``--overlay-on``, ``--overlay-size``). ``--scale run`` is one range per method over
every stored map of the method. Where the PNGs go (``METHOD/KEY.png``, the files layout, in every case):

- ``-o DIR``: under DIR; OUT is only read.
- into OUT (the default), ``files``: ``OUT/METHOD/KEY.png``, replaced whole; each record's ``overlay`` names it.
- into OUT, ``parquet`` or ``webdataset`` (whose part files are never rewritten): ``OUT/overlays/METHOD/KEY.png``;
  each record's ``rendered`` names it (``overlay`` keeps naming the overlay in the part, or null).

Beside them (in DIR, or in OUT), ``render.jsonl`` has one line per (image, method) render tried (``status`` ok or
error, ``error``, ``overlay``: the PNG's path relative to that folder) and ``render.json`` the display settings
each method was last drawn with. An image whose source is gone, or changed since its map was computed, gets an
error line: both views need the picture (``--overlay-on input`` is the picture resized and cropped). The records
of explain are never marked failed by render: their maps are still whole.
"""

from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from . import __version__, images, outputs, overlay, streams
from .config import Preprocess
from .errors import UsageError, setting
from .maps import display_range
from .outputs.packed import RENDERED  # OUT/overlays/METHOD/KEY.png: a packed run's overlays drawn by render
from .outputs.sinks.files import png_rel

LOG = "render.jsonl"
ABOUT = "render.json"
STORED = ("ok", "skipped")  # records whose map is stored
WINDOW = 256  # images in flight at once


@dataclass(frozen=True)
class RenderOptions:
    """What ``salcli render`` was given; None: the run's own setting."""

    methods: tuple[str, ...] = ()  # as typed (any case, comma lists, all); () = every method with stored maps
    dest: Path | None = None  # -o DIR; None: into OUT
    colormap: str | None = None
    alpha: float | None = None
    overlay_on: str | None = None
    overlay_size: int | None = None
    sign: str | None = None
    scale: str | None = None
    threads: int | None = None


@dataclass
class RenderSummary:
    out: str
    dest: str  # the folder holding the PNGs' layout and render.jsonl
    methods: list[str]
    counts: dict[str, int]
    seconds: float
    in_place: bool
    errors: list[dict[str, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.counts.get("error") else 0

    def to_json(self) -> dict[str, Any]:
        return {"out": self.out, "dest": self.dest, "methods": self.methods, "counts": self.counts,
                "errors": self.errors, "seconds": self.seconds, "in_place": self.in_place,
                "exit_code": self.exit_code}


def render(out: Path, options: RenderOptions, reporter=None, argv: list[str] | None = None) -> RenderSummary:
    """Draw the overlays of OUT's stored maps (see the module docstring). Usage errors (no run, a bad option, a
    method with no maps in OUT, a -o that is not a folder) are raised before anything is written."""
    started = time.time()
    run = outputs.read_run_json(out)
    sink = outputs.open_sink(out, run)
    display = _display(run, options)
    pre = _preprocess(run)
    stored = [r for r in outputs.read_manifest(out) if r.get("status") in STORED]
    methods = _methods(run, stored, options.methods)
    records = [r for r in stored if r.get("method") in methods]
    urls = sorted({r["source"] for r in records if streams.is_url(r.get("source"))})
    if urls:
        streams.require(urls)
    home, in_place = _destination(out, sink, options.dest)
    kinds = {m: SimpleNamespace(signed=_signed(run, m), convention="") for m in methods}
    scales = _run_scales(sink, records, kinds, display) if display.scale == "run" else {}
    if not records and reporter is not None:
        reporter.note(f"{out} holds no stored maps{' of ' + ', '.join(methods) if methods else ''} (every record "
                      "failed, or none was written): nothing to draw")
    by_image: dict[str, list[dict]] = {}
    for r in records:
        by_image.setdefault(r["image"], []).append(r)
    drawer = _Drawer(out, sink, display, pre, kinds, scales, home, pictures=in_place)
    results: list[dict] = []
    if reporter is not None:
        reporter.start(len(by_image))
    threads = options.threads or min(4, os.cpu_count() or 1)
    try:
        with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="salcli-render") as pool:
            todo = list(by_image.items())
            for start in range(0, len(todo), WINDOW):
                for found in pool.map(lambda pair: drawer.image(*pair), todo[start:start + WINDOW]):
                    results += found
                    if reporter is not None:
                        reporter.advance(1)
    finally:  # an interrupted render keeps what it drew: the records and the log say so
        if reporter is not None:
            reporter.finish()
        log_home = home if not in_place else out
        _record(out, sink, results, in_place, log_home, home)
        _describe(log_home, out, sink, display, methods, scales, results, argv)
    counts = {"ok": sum(r["status"] == "ok" for r in results), "error": sum(r["status"] == "error" for r in results)}
    errors = [{"image": r["image"], "method": r["method"], "error": r["error"]} for r in results
              if r["status"] == "error"]
    return RenderSummary(str(out), str(home), methods, counts, round(time.time() - started, 3), in_place, errors)


# ---------------------------------------------------------------------------------------------- settings
def _display(run: dict, options: RenderOptions) -> overlay.Display:
    """The display settings: each option given, else the run's (run.json's ``settings``), checked as explain
    checks them."""
    from . import render as draw
    from .config import check_display
    from .schema import check_values

    settings = run.get("settings") if isinstance(run.get("settings"), dict) else {}

    def pick(name: str, default: Any) -> Any:
        given = getattr(options, name)
        return given if given is not None else settings.get(name, default)

    on, size, sign = pick("overlay_on", "original"), pick("overlay_size", overlay.DEFAULT_SIZE), pick("sign", "all")
    alpha, colormap = pick("alpha", 0.5), str(pick("colormap", "jet"))
    check_values({"alpha": alpha, "overlay_size": size, "preprocess": {}})
    scale = check_display(on, size, sign, str(pick("scale", "image")))
    draw.colormap_lut(colormap)  # an unknown name: a usage error suggesting the closest
    return overlay.Display(on=on, size=int(size), sign=sign, scale=scale, colormap=colormap, alpha=float(alpha))


def _preprocess(run: dict) -> Preprocess:
    found = run.get("preprocess")
    if not isinstance(found, dict):
        raise UsageError("run.json holds no preprocessing (written by a salcli too old for render); rerun explain")
    return Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in found.items()})


def _norm(name: str) -> str:
    return re.sub(r"[\s_-]+", "", name.lower())


def _methods(run: dict, stored: list[dict], typed: tuple[str, ...]) -> list[str]:
    """The methods to draw, in the run's order: those typed (any case, with or without '-', '_' and spaces, comma
    lists, ``all``), or every method with stored maps. A method with no maps in OUT is a usage error."""
    with_maps = {r.get("method") for r in stored}
    known = [m for m in dict.fromkeys([*(run.get("methods") or {}), *sorted(map(str, with_maps))]) if m in with_maps]
    if not typed:
        return known
    chosen: list[str] = []
    for value in typed:
        for part in (p.strip() for p in str(value).split(",")):
            if part.lower() == "all":
                chosen += known
            elif part:
                chosen.append(_match(part, known))
    return list(dict.fromkeys(chosen))


def _match(name: str, known: list[str]) -> str:
    hits = [m for m in known if _norm(m) == _norm(name)]
    if hits:
        return hits[0]
    canonical = None
    try:  # an alias (Saliency, IG): the method registry knows them (this imports torch, on this path only)
        from .methods import canonical as resolve

        canonical = resolve(name)
    except Exception:  # noqa: BLE001 - an unknown name: the message below lists the run's methods
        pass
    if canonical in known:
        return canonical
    raise UsageError(f"{setting('methods')} {name}: OUT holds no maps of it; its methods with maps: "
                     f"{', '.join(known) or 'none'}")


def _signed(run: dict, method: str) -> bool | None:
    """Whether ``method``'s maps carry a sign (None: each map decides), from run.json's ``overlay.signed``; for
    runs written before that field, from the sign mode the run drew them in, else from the method registry."""
    shown = run.get("overlay") if isinstance(run.get("overlay"), dict) else {}
    flags = shown.get("signed")
    if isinstance(flags, dict) and method in flags:
        return flags[method]
    mode, sign = (shown.get("modes") or {}).get(method), shown.get("sign")
    if mode == "by map":
        return None
    if mode is not None and sign not in (None, "absolute"):
        return mode != "absolute"
    try:
        from .methods import get

        return overlay.signed(get(method))
    except Exception:  # noqa: BLE001 - a method this salcli does not know: its maps decide
        return None


def _destination(out: Path, sink, dest: Path | None) -> tuple[Path, bool]:
    """(the folder the METHOD/KEY.png layout goes under, whether render draws into OUT)."""
    if dest is None:
        return (out / RENDERED if sink.buffered else out), True
    if dest.resolve() == out.resolve():
        raise UsageError(f"{setting('out')} {dest} is OUT itself: leave {setting('out')} out to draw into OUT (its "
                         "records then name the new overlays), or give another folder")
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{setting('out')} {dest}: a file, not a folder; give a folder (it is created when missing)")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{setting('out')} {dest}: cannot be created ({exc.strerror or exc})") from None
    return dest, False


def _run_scales(sink, records: list[dict], kinds: dict, display: overlay.Display) -> dict[str, tuple[float, float]]:
    """``--scale run``: per method, one range over every stored map (``overlay.run_scale`` of each map's own
    range, as explain's last pass computes it). A map that cannot be read, or is not finite, is left out (its
    overlay fails with the reason)."""
    ranges: dict[str, list] = {}
    for r in records:
        try:
            m = sink.load_map(r)
        except Exception:  # noqa: BLE001
            continue
        if np.isfinite(m).all():
            ranges.setdefault(r["method"], []).append(display_range(m, overlay.mode_of(kinds[r["method"]], display, m)))
    return {name: overlay.run_scale(found) for name, found in ranges.items()}


# ---------------------------------------------------------------------------------------------- drawing
class _Drawer:
    """Draws every overlay of one image (called on the render threads): reads the picture once, then each
    method's map; writes each PNG whole. Returns one render record per (image, method)."""

    def __init__(self, out, sink, display, pre, kinds, scales, home: Path, pictures: bool) -> None:
        self.out, self.sink, self.display, self.pre = out, sink, display, pre
        self.kinds, self.scales, self.home, self.pictures = kinds, scales, home, pictures

    def image(self, key: str, records: list[dict]) -> list[dict]:
        first = records[0]
        where = first.get("source") or "?"
        if first.get("member"):
            where = f"{where} member {first['member']}"
        try:
            item = images.from_record(first)
            got = images.ImageDataset([item], self.pre, display=self.display.size)[0]
            if "error" in got:
                raise images.ImageError(got["error"])
            changed = _changed(first, images.content(item))
        except images.ImageError as exc:
            return [_result(r, error=f"cannot read the image again ({where}): {exc}") for r in records]
        if changed:
            return [_result(r, error=f"the image ({where}) changed since its map was computed ({changed} differ); "
                                     "rerun salcli explain to recompute its maps") for r in records]
        if self.pictures and self.sink.picture_link(key) is None:  # the report's original column, when missing
            try:
                self.sink.write_picture(key, got["picture"])
            except Exception:  # noqa: BLE001 - only that cell of the report is lost
                pass
        return [self.one(r, got) for r in records]

    def one(self, record: dict, item: dict) -> dict:
        try:
            saliency = self.sink.load_map(record)
        except Exception as exc:  # noqa: BLE001 - a part cut short, a deleted .npy
            return _result(record, error=f"cannot read the map: {type(exc).__name__}: {exc}")
        method = record["method"]
        scale = self.scales.get(method)
        try:
            mode = overlay.mode_of(self.kinds[method], self.display, saliency)
            picture = overlay.draw(self.display, self.pre.resize, mode, saliency, item, overlay.caption(record), scale)
            rel = png_rel(method, record["image"])
            outputs.write_overlay(self.home, rel, picture)
        except Exception as exc:  # noqa: BLE001 - a NaN map, a full disk: this overlay fails, not the render
            return _result(record, error=f"{type(exc).__name__}: {exc}")
        return _result(record, overlay=rel, scale=scale)


def _changed(record: dict, now: dict) -> str:
    """What differs between the file the map was computed from (the record) and the file now; '' if nothing."""
    differ = [k for k in ("size", "mtime_ns", "etag", "container")
              if record.get(k) is not None and k in now and record[k] != now[k]]
    return " and ".join(differ)


def _result(record: dict, *, error: str | None = None, overlay: str | None = None,
            scale: tuple[float, float] | None = None) -> dict:
    found = {"image": record["image"], "method": record["method"], "status": "error" if error else "ok",
             "error": error, "overlay": overlay, "record": record}
    if scale is not None:
        found["overlay_scale"] = [float(v) for v in scale]
    return found


# ---------------------------------------------------------------------------------------------- what is written
def _record(out: Path, sink, results: list[dict], in_place: bool, log_home: Path, home: Path) -> None:
    """render.jsonl (merged with an earlier one: the last line of an (image, method) wins), and in place the
    manifest records of the overlays drawn."""
    prefix = "" if home == log_home else f"{RENDERED}/"
    lines = {}
    log = log_home / LOG
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                old = json.loads(line)
                lines[(str(old["image"]), str(old["method"]))] = old
            except (ValueError, KeyError, TypeError):
                continue
    updates = {}
    for r in results:
        rec = r["record"]
        entry = {"image": r["image"], "method": r["method"], "status": r["status"], "error": r["error"],
                 "overlay": prefix + r["overlay"] if r["overlay"] else None, "source": rec.get("source"),
                 **({"member": rec["member"]} if rec.get("member") else {}),
                 **({"overlay_scale": r["overlay_scale"]} if "overlay_scale" in r else {})}
        lines[(r["image"], r["method"])] = entry
        if in_place and r["status"] == "ok":
            updates[(r["image"], r["method"])] = _updated(rec, entry, sink)
    if results or lines:
        outputs.write_jsonl(log, [lines[k] for k in sorted(lines)])
    if updates:
        outputs.update_records(out, updates)


def _updated(record: dict, entry: dict, sink) -> dict:
    """A manifest record once render has drawn its overlay into OUT: ``files`` names the PNG in ``overlay`` (and
    ``overlay_scale`` says the range it was drawn at, with --scale run); a packed format names it in ``rendered``."""
    if sink.buffered:
        return {**record, "rendered": entry["overlay"]}
    updated = {**record, "overlay": entry["overlay"]}
    updated.pop("overlay_scale", None)
    if "overlay_scale" in entry:
        updated["overlay_scale"] = entry["overlay_scale"]
    return updated


def _describe(log_home: Path, out: Path, sink, display: overlay.Display, methods: list[str],
              scales: dict, results: list[dict], argv) -> None:
    """render.json: how each method's overlays were last drawn, merged with an earlier render's."""
    from . import render as draw

    path = log_home / ABOUT
    doc: dict[str, Any] = {}
    if path.is_file():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            doc = {}
    doc = doc if isinstance(doc, dict) else {}
    now = time.time()
    per_method = doc.get("methods") if isinstance(doc.get("methods"), dict) else {}
    for m in methods:
        mine = [r for r in results if r["method"] == m]
        per_method[m] = {"on": display.on, "size": display.size, "sign": display.sign, "scale": display.scale,
                         "colormap": display.colormap, "diverging_colormap": draw.DIVERGING, "alpha": display.alpha,
                         "scale_range": list(scales[m]) if m in scales else None,
                         "counts": {s: sum(r["status"] == s for r in mine) for s in ("ok", "error")},
                         "finished": now}
    doc.update({"schema_version": outputs.SCHEMA_VERSION, "salcli_version": __version__,
                "run": str(out.resolve()), "format": sink.name,
                "layout": ("METHOD/KEY.png under this folder" if log_home != out or not sink.buffered
                           else f"{RENDERED}/METHOD/KEY.png"),
                "argv": [images.printable(str(a)) for a in argv] if argv else None, "methods": per_method})
    outputs.write_json(path, doc)
