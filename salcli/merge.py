"""`salcli merge` and `salcli verify`: the only cross-process steps, read-only over the shards' journals.

``merge`` streams every journal (``OUT/parts/manifest-*.jsonl``) and the old merged manifest into
``OUT/manifest.jsonl`` (the last record of each (image, method), sorted, in bounded memory) and the shards' run
files into ``OUT/run.json`` (counts summed, the shards present, one settings fingerprint per method). ``verify``
accounts for every expected image: missing, failed, outputs missing (the run's sink says a record's map or overlay
is not whole: a deleted file, a part a kill left unfinished), duplicated across shards, mixed settings, or not
among the inputs. Both work on every format: they read journals, and ask the run's sink only. Never imports typer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import outputs
from .errors import UsageError, setting
from .outputs import journal


@dataclass
class MergeSummary:
    records: int
    shards: list[str]
    incomplete: list[str] = field(default_factory=list)  # shards whose run file says they did not finish


def _run_parts(out: Path) -> list[dict[str, Any]]:
    parts = journal.read_run_parts(out)
    if not parts:
        raise UsageError(f"{out} holds no run files in {journal.PARTS}/: give the output folder of salcli explain")
    return parts


def _fingerprints(parts: list[dict[str, Any]]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for doc in parts:
        for method, entry in (doc.get("methods") or {}).items():
            found.setdefault(method, set()).add(entry.get("settings"))
    return found


def merge(out: Path) -> MergeSummary:
    """Write OUT/manifest.jsonl and OUT/run.json from the parts; shards with different settings are an error
    (nothing is written then)."""
    parts = _run_parts(out)
    mixed = {m: sorted(map(str, fps)) for m, fps in _fingerprints(parts).items() if len(fps) > 1}
    if mixed:
        lines = "; ".join(f"{m}: {', '.join(fps)}" for m, fps in mixed.items())
        raise UsageError(f"the shards in {out} were run with different settings ({lines}); rerun the odd shards "
                         "with the same options, or write them to another output folder")
    n = outputs.write_merged_manifest(out)
    counts: dict[str, int] = {}
    shards: dict[str, Any] = {}
    for doc in parts:
        for status, c in (doc.get("counts") or {}).items():
            counts[status] = counts.get(status, 0) + int(c)
        name = journal.tag(tuple(doc["shard"]) if doc.get("shard") else None)
        shards[name] = {k: doc.get(k) for k in ("counts", "timings", "device", "host", "complete", "images")}
    base = {k: v for k, v in parts[0].items() if k not in ("shard", "host", "pid", "complete", "schema_version")}
    base["settings"] = {**(base.get("settings") or {}), "shard": None, "shard_source": None}
    info = {**base, "counts": counts, "images": sum(int(d.get("images") or 0) for d in parts),
            "interrupted": any(d.get("interrupted") for d in parts), "shards": shards}
    outputs.write_json(out / outputs.RUN_JSON, {"schema_version": outputs.SCHEMA_VERSION, **info})
    return MergeSummary(n, sorted(shards), sorted(s for s, d in shards.items() if not d["complete"]))


def verify(out: Path, files_from: Path | None = None) -> list[str]:
    """One line per problem (empty: every expected image has one ok record per method, with one setting each).

    The expected images are the run's inputs listed again (or the paths in ``files_from``); the methods are the
    run's."""
    from . import images
    from .config import RunConfig

    parts = _run_parts(out)
    config = RunConfig.from_json(parts[0].get("settings") or {})
    listed = files_from if files_from is not None else config.files_from
    if listed is not None and str(listed) == "-" and files_from is None:
        raise UsageError(f"the run read its inputs from standard input; give the list again with "
                         f"{setting('files_from')}")
    paths = images.read_file_list(listed) if listed is not None else list(config.inputs)
    expected = {i.key for i in images.discover(paths, exclude=out, listed=listed is not None, root=config.root)}
    methods = list(dict.fromkeys(m for doc in parts for m in (doc.get("methods") or {})))
    records = {(r["image"], r["method"]): r for r in outputs.read_manifest(out)}
    problems = []
    missing = [(k, m) for k in sorted(expected) for m in methods if (k, m) not in records]
    failed = [(k, m) for (k, m), r in records.items() if r.get("status") == "error"]
    sink = outputs.open_sink(out, parts[0])  # the run's format: its outputs must still be there, whole
    incomplete = sorted(key for key, r in records.items() if r.get("status") in ("ok", "skipped")
                        and not sink.complete(r))
    foreign = sorted({k for k, _ in records} - expected)
    seen: dict[tuple[str, str], str] = {}
    duplicated = set()
    for path in journal.part_files(out):
        for key, _ in journal.read_lines(path):
            if seen.setdefault(key, path.name) != path.name:
                duplicated.add(key)
    settings = {m: {r.get("settings") for (k, mm), r in records.items() if mm == m} for m in methods}
    for label, items in (("missing", missing), ("failed", failed), ("outputs missing", incomplete),
                         ("duplicated across shards", sorted(duplicated))):
        if items:
            shown = ", ".join(f"{k} ({m})" for k, m in items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
            problems.append(f"{label}: {len(items)} (image, method): {shown}")
    if foreign:
        problems.append(f"not among the inputs: {len(foreign)} image(s): {', '.join(foreign[:5])}"
                        + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""))
    for m, fps in settings.items():
        if len(fps) > 1:
            problems.append(f"mixed settings: {m} has maps from {len(fps)} different settings")
    return problems
