"""OUT/report.html: a self-contained gallery of a finished run (pure HTML generation, no torch, no I/O but reads).

Reads OUT/run.json and OUT/manifest.jsonl (and, when present, OUT/evaluation.json, OUT/metrics.jsonl and
OUT/plots/*.png) and returns one HTML page that leads with the gallery: one row per image with its prediction,
its original picture and one overlay per method; then the failed images, the evaluation table and plots, and the
run's settings folded in a ``<details>``. Times are ISO 8601 (UTC). Overlays and pictures are found by the run's
sink (``outputs.open_sink``: run.json's ``format``), never by reading manifest paths here, and linked by
relative, URL-quoted paths, so the report keeps working when OUT is copied elsewhere. A packed run (``--format
parquet|webdataset``) keeps its overlays inside its part files, where no browser can show them: the report copies
each one out to OUT/report_files/METHOD/KEY.png (``outputs.export_overlay``, the one write here) and links that;
a run with ``--no-overlays`` shows "no overlay" (unless ``salcli render`` drew its overlays since: the sink links
those first). Work is linear in the manifest: one dict lookup and one
``overlay_link`` (a ``stat`` for ``files``) per (image, method); images load lazily in the browser.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from html import escape
from pathlib import Path, PurePosixPath
from typing import Any, Iterable
from urllib.parse import quote

from . import outputs

# Manifest fields every record has; anything else a method adds (e.g. IG's completeness_gap) is shown in its cell.
BASE_FIELDS = {"image", "method", "status", "error", "npy", "overlay", "pred", "pred_label", "prob", "target",
               "target_label", "score", "settings", "schema_version", "source", "size", "mtime_ns", "width",
               "height", "display_range", "overlay_scale", "member", "etag", "container", "rendered"}
THUMB = 240  # px: the gallery's image width (overlay captions and legends are sized to be read at this width)
RANDOM = "random"  # evaluate's random-map baseline, a method in metrics.jsonl only

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top;text-align:left}
th{background:#f2f2f2}.gallery thead th{position:sticky;top:0}
dl.kv{display:grid;grid-template-columns:max-content auto;gap:2px 12px}dl.kv dt{font-weight:600}dl.kv dd{margin:0}
code,.mono{font-family:ui-monospace,monospace;font-size:12px;word-break:break-all}
img.ov{width:240px;display:block}img.px{image-rendering:pixelated}img.plot{max-width:480px;margin:4px}
.gallery td.key{max-width:14em}.nav{margin:.2em 0 1em}details{margin-top:1.6em}summary{font-weight:600;cursor:pointer}
.err{color:#b00020}.muted{color:#777}.m{font-size:12px;margin:2px 0 0;padding:0;list-style:none}
.yes{color:#070}.no{color:#b00020}
"""


def build_report(out: Path, report_dir: Path | None = None) -> str:
    """The HTML of OUT's report. Links are relative to ``report_dir`` (default OUT), which must be inside OUT.

    Raises UsageError (via outputs.read_run_json) when OUT holds no run.json.
    """
    run = outputs.read_run_json(out)
    sink = outputs.open_sink(out, run)
    records = outputs.read_manifest(out)
    prefix = _link_prefix(out, report_dir)
    images = _by_image(records)
    methods = _method_order(run, records)
    metrics, eval_errors = _read_metrics(out / "metrics.jsonl")
    evaluation = _read_json(out / "evaluation.json")
    plots = sorted(p.name for p in (out / "plots").glob("*.png")) if (out / "plots").is_dir() else []
    title = f"salcli report: {out.name or out}"
    parts = ["<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
             f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{escape(title)}</h1>",
             _summary(run, images, methods, evaluation is not None or bool(plots)),
             _gallery(sink, images, methods, metrics, eval_errors, prefix),
             _failures(images),
             _evaluation(evaluation, plots, prefix),
             _header(run, len(images), methods),
             "</body></html>\n"]
    return "\n".join(p for p in parts if p)


# -- reading

def _link_prefix(out: Path, report_dir: Path | None) -> str:
    if report_dir is None:
        return ""
    rel = os.path.relpath(out.resolve(), report_dir.resolve())
    return "" if rel == "." else PurePosixPath(*Path(rel).parts).as_posix() + "/"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return {"error": f"{path.name} could not be read: {exc}"}


def _read_metrics(path: Path) -> tuple[dict[tuple[str, str], dict], dict[str, list[str]]]:
    """metrics.jsonl as {(image, method): row} and {image: [error, ...]} (rows evaluate could not score)."""
    rows: dict[tuple[str, str], dict] = {}
    errors: dict[str, list[str]] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return rows, errors
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict):
            continue
        if row.get("method") is None:
            errors.setdefault(str(row.get("image")), []).append(str(row.get("error")))
        else:
            rows[(str(row.get("image")), str(row["method"]))] = row
    return rows, errors


def _by_image(records: Iterable[dict]) -> dict[str, dict[str, dict]]:
    images: dict[str, dict[str, dict]] = {}
    for r in records:
        images.setdefault(str(r.get("image")), {})[str(r.get("method"))] = r
    return dict(sorted(images.items()))


def _method_order(run: dict, records: list[dict]) -> list[str]:
    declared = list(run.get("methods") or {})
    extra = sorted({str(r.get("method")) for r in records} - set(declared))
    return declared + extra


# -- formatting

def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return "-" if value is None else str(value)


def _kv(pairs: Iterable[tuple[str, Any]]) -> str:
    items = "".join(f"<dt>{escape(k)}</dt><dd class=\"mono\">{escape(_fmt(v))}</dd>" for k, v in pairs)
    return f"<dl class=\"kv\">{items}</dl>"


def _iso(value: Any) -> str | None:
    """A Unix time -> ISO 8601 in UTC (``2025-01-31T12:00:00+00:00``); None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return datetime.fromtimestamp(value, timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return None


def _date(timings: dict) -> str | None:
    return _iso(timings.get("started")) if isinstance(timings, dict) else None


TIME_KEYS = ("started", "finished")  # run.json timings that are Unix times


def _timings(timings: Any) -> list[tuple[str, Any]]:
    """run.json's timings with the Unix times as ISO 8601."""
    if not isinstance(timings, dict):
        return []
    return [(k, (_iso(v) or v) if k in TIME_KEYS else v) for k, v in timings.items()]


def _label(rec: dict, idx: str, name: str) -> str:
    label = rec.get(name)
    return str(label) if label is not None else (f"class {rec[idx]}" if rec.get(idx) is not None else "-")


def _href(prefix: str, rel: str) -> str:
    return escape(prefix + quote(rel, safe="/"))


# -- sections

def _header(run: dict, n_images: int, methods: list[str]) -> str:
    model = run.get("model") or {}
    timings = run.get("timings") or {}
    general = [("date (UTC)", _date(timings)), ("salcli", run.get("salcli_version")),
               ("command", " ".join(map(str, run.get("argv") or [])) or None),
               ("model", model.get("spec")), ("model kind", model.get("kind")), ("weights", model.get("weights")),
               ("trusted checkpoint", model.get("trusted")), ("layer", run.get("layer")),
               ("seed", run.get("seed")), ("device", run.get("device")), ("batch size", run.get("batch_size")),
               ("images", n_images), ("counts", run.get("counts")), ("interrupted", run.get("interrupted"))]
    sha = [(name, digest) for name, digest in (model.get("sha256") or {}).items()]
    labels = run.get("labels")
    pre = list((run.get("preprocess") or {}).items())
    if labels:
        pre.append(("labels", f"{len(labels)} classes: " + ", ".join(map(str, labels[:20]))
                    + (" ..." if len(labels) > 20 else "")))
    params = [(m, (run.get("methods") or {}).get(m, {}).get("params", "not in run.json")) for m in methods]
    shards = [(name, {**info, "timings": dict(_timings(info.get("timings")))} if isinstance(info, dict) else info)
              for name, info in (run.get("shards") or {}).items()]
    shown = run.get("overlay") if isinstance(run.get("overlay"), dict) else {}
    geometry = run.get("geometry") if isinstance(run.get("geometry"), dict) else {}
    return "".join([
        "<details id=\"settings\"><summary>Settings, checksums, timings and versions</summary>",
        "<h2>Run</h2>", _kv(general),
        "<h2>Checksums (sha256)</h2>" + _kv(sha) if sha else "",
        "<h2>Preprocessing</h2>", _kv(pre),
        "<h2>Overlays</h2>" + _kv(shown.items()) if shown else "",
        "<h2>Geometry</h2>" + _kv(geometry.items()) if geometry else "",
        "<h2>Methods and parameters</h2>", _kv(params),
        "<h2>Timings (UTC)</h2>", _kv(_timings(timings)),
        "<h2>Shards</h2>" + _kv(shards) if shards else "",
        "<h2>Versions</h2>", _kv((run.get("versions") or {}).items()),
        "</details>",
    ])


def _summary(run: dict, images: dict[str, dict[str, dict]], methods: list[str], evaluated: bool) -> str:
    """One line under the title: when, which model, how many images and methods; links to what follows."""
    model = (run.get("model") or {}).get("spec")
    failed = sum(1 for recs in images.values() if any(r.get("status") == "error" for r in recs.values()))
    bits = [f"{len(images)} image(s) x {len(methods)} method(s): {', '.join(methods) or '-'}"]
    if model:
        bits.append(f"model {model}")
    date = _date(run.get("timings") or {})
    if date:
        bits.append(f"started {date}")
    links = [f"<a href=\"#failures\">failures: {failed}</a>"]
    if evaluated:
        links.append("<a href=\"#evaluation\">evaluation</a>")
    links.append("<a href=\"#settings\">settings</a>")
    return (f"<p class=\"nav\">{escape('; '.join(bits))}<br>{' · '.join(links)}</p>")


def _failures(images: dict[str, dict[str, dict]]) -> str:
    items = []
    for key, recs in images.items():
        errors = sorted({str(r.get("error")) for r in recs.values() if r.get("status") == "error"})
        if errors:
            failed = sorted(m for m, r in recs.items() if r.get("status") == "error")
            items.append(f"<li><code>{escape(key)}</code> ({escape(', '.join(failed))}): "
                         f"<span class=\"err\">{escape('; '.join(errors))}</span></li>")
    if not items:
        return "<h2 id=\"failures\">Failures</h2><p class=\"muted\">none</p>"
    return f"<h2 id=\"failures\">Failures ({len(items)} image(s))</h2><ul>{''.join(items)}</ul>"


def _evaluation(evaluation: Any, plots: list[str], prefix: str) -> str:
    if evaluation is None and not plots:
        return ""
    parts = ["<h2 id=\"evaluation\">Evaluation</h2>"]
    if isinstance(evaluation, dict) and evaluation.get("error"):
        parts.append(f"<p class=\"err\">{escape(str(evaluation['error']))}</p>")
    rows = [r for r in (evaluation or {}).get("methods", []) if isinstance(r, dict)] \
        if isinstance(evaluation, dict) else []
    if rows:
        columns = list(dict.fromkeys(k for r in rows for k in r if k != "beats_random"))
        head = "".join(f"<th>{escape(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(_eval_cell(r, c) for c in columns) + "</tr>" for r in rows)
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
                     "<p class=\"muted\">✓ / ✗: beats the random-map baseline on the same images.</p>")
        skipped = evaluation.get("skipped_unannotated")
        if skipped:
            parts.append(f"<p>{escape(str(skipped))} image(s) had no annotation and were skipped for localization.</p>")
    for name in plots:
        src = _href(prefix, f"plots/{name}")
        parts.append(f"<a href=\"{src}\"><img class=\"plot\" src=\"{src}\" alt=\"{escape(name)}\"></a>")
    return "".join(parts)


def _eval_cell(row: dict, col: str) -> str:
    beats = row.get("beats_random") if isinstance(row.get("beats_random"), dict) else {}
    mark = ""
    if col in beats:
        mark = " <span class=\"yes\">✓</span>" if beats[col] else " <span class=\"no\">✗</span>"
    return f"<td>{escape(_fmt(row.get(col)))}{mark}</td>"


def _gallery(sink: outputs.sinks.Sink, images: dict[str, dict[str, dict]], methods: list[str], metrics: dict,
             eval_errors: dict[str, list[str]], prefix: str) -> str:
    show_random = any(m == RANDOM for _, m in metrics)
    head = "".join(f"<th>{escape(m)}</th>" for m in ["image", "original", *methods])
    head += "<th>random baseline</th>" if show_random else ""
    rows = []
    for key, recs in images.items():
        facts = next((r for r in recs.values() if r.get("pred") is not None), next(iter(recs.values())))
        prob = facts.get("prob")
        pred = _label(facts, "pred", "pred_label") + (f" ({prob:.2%})" if isinstance(prob, (int, float)) else "")
        notes = "".join(f"<div class=\"err\">evaluate: {escape(e)}</div>" for e in eval_errors.get(key, []))
        target = _label(facts, "target", "target_label")
        about = (f"<code>{escape(key)}</code><div>pred: {escape(pred)}</div><div>target: {escape(target)}</div>"
                 f"{_size(facts)}{notes}")
        cells = [f"<td class=\"key\">{about}</td>", _picture_cell(sink, key, facts, prefix)]
        cells += [_cell(sink, recs.get(m), metrics.get((key, m)), prefix) for m in methods]
        if show_random:
            cells.append(f"<td>{_metric_list(metrics.get((key, RANDOM)) or {}, {})}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<h2>Images ({len(images)})</h2><table class=\"gallery\"><thead><tr>{head}</tr></thead>"
            f"<tbody>\n" + "\n".join(rows) + "\n</tbody></table>")


def _size(rec: dict) -> str:
    w, h = rec.get("width"), rec.get("height")
    return f"<div class=\"muted\">{w} x {h} px</div>" if isinstance(w, int) and isinstance(h, int) else ""


def _picture_cell(sink: outputs.sinks.Sink, key: str, facts: dict, prefix: str) -> str:
    """The original picture (the sink's copy, scaled to fit --overlay-size), or a dash when there is none."""
    rel = sink.picture_link(key) if hasattr(sink, "picture_link") else None
    if not _inside(rel):
        return "<td class=\"muted\">-</td>"
    src = _href(prefix, rel)
    small = max(facts.get("width") or 0, facts.get("height") or 0)
    pixelated = " px" if isinstance(small, int) and 0 < small < THUMB else ""  # small pictures: visible pixels
    return (f"<td><a href=\"{src}\"><img class=\"ov{pixelated}\" loading=\"lazy\" decoding=\"async\" "
            f"src=\"{src}\" alt=\"original {escape(key)}\"></a></td>")


def _cell(sink: outputs.sinks.Sink, rec: dict | None, metric_row: dict | None, prefix: str) -> str:
    if rec is None:
        return "<td class=\"muted\">not run</td>"
    if rec.get("status") == "error":
        return f"<td class=\"err\">{escape(str(rec.get('error')))}</td>"
    rel = sink.overlay_link(rec)
    if rel is None and rec.get("overlay") is not None:
        rel = outputs.export_overlay(sink, rec)  # a packed sink's overlay, copied out for the browser
    if _inside(rel):  # the sink's answer, still never a link outside OUT
        src = _href(prefix, rel)
        body = (f"<a href=\"{src}\"><img class=\"ov\" loading=\"lazy\" decoding=\"async\" src=\"{src}\" "
                f"alt=\"{escape(rel)}\"></a>")
    elif rec.get("overlay") is None:  # written without an overlay (a sink's choice): nothing is missing
        body = "<span class=\"muted\">no overlay</span>"
    else:
        body = f"<span class=\"err\">overlay missing: {escape(str(rec.get('overlay')))}</span>"
    extras = {k: v for k, v in rec.items() if k not in BASE_FIELDS}
    return f"<td>{body}{_metric_list(metric_row or {}, extras)}</td>"


def _inside(rel: Any) -> bool:
    """A path that stays inside OUT (a link from the manifest's data; never link outside)."""
    if not isinstance(rel, str) or not rel:
        return False
    p = PurePosixPath(rel)
    return not p.is_absolute() and ".." not in p.parts


def _metric_list(metric_row: dict, extras: dict) -> str:
    items = [(k, v) for k, v in metric_row.items() if k not in ("image", "method")] + list(extras.items())
    if not items:
        return ""
    lis = "".join(f"<li>{escape(k)}: {escape(_fmt(v))}</li>" for k, v in items)
    return f"<ul class=\"m\">{lis}</ul>"
