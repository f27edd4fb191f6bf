"""`salcli explain`'s orchestration: images -> batches -> the engine -> records and files. Never imports typer.

Set-up is ``resolve.resolve`` (shared with every command), the maps come from ``engine.Explainer``, what a file
depends on from ``provenance``, and files are written by ``outputs``. Terminal output goes through a
``Reporter`` that the caller supplies (``cli.py`` owns the terminal).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from . import images, maps, outputs, overlay, provenance
from .config import RunConfig
from .engine import ModelFailure
from .outputs.journal import PRUNED
from .errors import UsageError, setting
from .resolve import Resolved, resolve


GONE_SHOWN = 20  # gone images named in the summary (all are counted)


class Reporter(Protocol):
    def start(self, total: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def note(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...
    def finish(self) -> None: ...


class SilentReporter:
    def start(self, total: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def note(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...
    def finish(self) -> None: ...


@dataclass
class RunSummary:
    out: str
    counts: dict[str, int]
    images: int
    seconds: float
    device: str
    errors: list[dict[str, str]] = field(default_factory=list)
    max_failures: str = "0"  # failed records allowed before exit 1 (``--max-failures``)
    # images by what this run did with them: new (no record before), redone (a method recomputed: new settings,
    # a replaced file, a method added), unchanged (every method skipped), gone (records in OUT, no longer an
    # input; their outputs are removed with --prune, and then counted as pruned)
    changes: dict[str, int] = field(default_factory=dict)
    gone: list[str] = field(default_factory=list)  # the first GONE_SHOWN gone images

    @property
    def exit_code(self) -> int:
        from .config import failures_allowed

        failed = self.counts.get("error", 0)
        return 1 if failed and failed > failures_allowed(self.max_failures, sum(self.counts.values())) else 0

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "exit_code": self.exit_code}


@dataclass
class Job:
    """An explain run: the resolved settings, its images, and what resume compares."""

    resolved: Resolved
    items: list[images.ImageItem]
    settings: dict[str, str]  # method -> fingerprint of everything its outputs depend on
    workers: int
    content: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> size, mtime_ns (images.content)
    changes: dict[str, int] = field(default_factory=dict)  # new / redone / unchanged / gone / pruned images


def plan_job(config: RunConfig, reporter: Reporter) -> Job:
    """Validate everything and load the model; raises UsageError / ModelLoadError before any work."""
    if config.out is None:
        raise UsageError(f"give an output folder with {setting('out')}")
    if config.out.exists() and not config.out.is_dir():
        raise UsageError(f"{setting('out')} {config.out}: a file, not a folder; give a folder (it is created "
                         "when missing)")
    listed = config.files_from is not None
    if listed and config.inputs:
        raise UsageError(f"give the inputs as arguments or with {setting('files_from')}, not both")
    paths = images.read_file_list(config.files_from) if listed else list(config.inputs)
    skipped: list[images.Skipped] = []  # FIFOs, sockets, devices named like images, unreadable folders
    items = images.discover(paths, exclude=config.out, listed=listed, root=config.root, skipped=skipped)
    if skipped:
        reporter.note(images.describe_skipped(skipped))
    if not items:  # a CI job with a path typo, or a folder that is not there yet, must not pass
        where = ", ".join(str(p) for p in paths)
        raise UsageError(f"no images in {where} (searched recursively for {', '.join(sorted(images.EXTENSIONS))}); "
                         "check the path")
    if config.shard is not None:
        items = images.shard(items, *config.shard)
        reporter.note(f"shard {config.shard[0]}/{config.shard[1]} ({config.shard_source}): {len(items)} image(s)")
    resolved = resolve(config, reporter)
    workers = (config.workers if config.workers is not None
               else auto_workers(len(items), resolved.batch_size, resolved.device))
    return Job(resolved, items, provenance.method_settings(resolved), workers)


def auto_workers(images: int, batch_size: int, device: torch.device) -> int:
    """--workers default: decoding worker processes where they pay. On a GPU the main process only launches
    kernels, so up to 4 workers decode the next batches beside it. On the CPU the model's threads already use
    every core, and worker processes cost the main process more than the decoding they take off it (measured:
    0.88 of the compute-only rate in-process against 0.66 with 1 or 2 workers, resnet50 on 2 cores; 0.95 against
    0.90 with a core left free), so the main process decodes. One batch never needs workers."""
    if images <= batch_size or device.type == "cpu":
        return 0
    return min(4, max(1, os.cpu_count() or 1))


# ---------------------------------------------------------------------------------------------- the run
class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled like Ctrl-C: the writers drain, the journal is flushed, the run stops."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _signals_as_interrupts():
    """SIGTERM (Slurm's time limit and preemption, torchrun stopping the other ranks) and SIGHUP end the run as
    Ctrl-C does. Only the main thread can install handlers; elsewhere the defaults stay."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run(config: RunConfig, reporter: Reporter | None = None, argv: list[str] | None = None) -> RunSummary:
    """Explain every image with every method; write maps, overlays, the journal, and (without shards) the
    merged manifest and run.json. A sharded run leaves its journal and run file in OUT/parts for ``merge``."""
    reporter = reporter or SilentReporter()
    started = time.time()
    job = plan_job(config, reporter)
    loaded_at = time.time()
    writer = outputs.OutputWriter(config.out, shard=config.shard, keys={item.key for item in job.items},
                                  sink=config.format, overlays=config.overlays, map_dtype=config.map_dtype)
    interrupted = False
    todo: list[int] = []
    gone: list[str] = []
    try:
        with _signals_as_interrupts():
            todo = _pending_images(job, writer)
            gone = writer.gone({item.key for item in job.items})
            job.changes["gone"] = len(gone)
            if gone and config.prune:
                writer.prune(gone)
                job.changes["pruned"] = len(gone)
            reporter.start(len(job.items))
            reporter.advance(len(job.items) - len(todo))
            _explain(job, todo, writer, reporter)
            overlay.redraw_at_run_scale(job.resolved, writer, job.items, job.workers)  # --scale run only
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        writer.close()
        reporter.finish()
        finished = time.time()
        counts = {s: 0 for s in ("ok", "error", "skipped")}
        errors = []
        for rec in writer.records.values():  # one pass: each record is parsed from its JSON line once
            if rec["status"] == PRUNED:
                continue  # a tombstone: counted in job.changes
            counts[rec["status"]] = counts.get(rec["status"], 0) + 1
            if rec["status"] == "error":
                errors.append({"image": rec["image"], "method": rec["method"], "error": rec["error"]})
        computed = len(todo)
        timings = {"started": started, "finished": finished, "seconds": round(finished - started, 3),
                   "setup_seconds": round(loaded_at - started, 3),
                   "images_per_second": round(computed / max(finished - loaded_at, 1e-9), 3) if computed else None}
        info = provenance.run_info(job.resolved, job.settings, images=len(job.items), workers=job.workers,
                                   counts=counts, timings=timings, argv=argv, interrupted=interrupted)
        info["changes"] = dict(job.changes)
        writer.write_run_part(info)
        if config.shard is None:  # one process owns OUT: merge now; shards are merged by `salcli merge`
            writer.write_manifest()
            writer.write_run_json(info, None)
            writer.drop_journal()  # the manifest holds its records now
    return RunSummary(str(config.out), counts, len(job.items), round(time.time() - started, 3),
                      str(job.resolved.device), errors, config.max_failures, dict(job.changes), gone[:GONE_SHOWN])


def _pending_images(job: Job, writer: outputs.OutputWriter) -> list[int]:
    """Indices of images with at least one method to compute; records skips for the rest, and counts the
    images as new, redone or unchanged in ``job.changes``."""
    todo = []
    overwrite = job.resolved.config.overwrite
    changes = job.changes
    changes.update(new=0, redone=0, unchanged=0)
    found = images.contents(job.items)  # size and mtime; a URL's size and ETag, fetched concurrently
    for index, item in enumerate(job.items):
        job.content[item.key] = content = found[item.key]
        pending = False
        seen = False
        for m in job.resolved.methods:
            seen = seen or writer.previous.get((item.key, m.name), {}).get("status") not in (None, PRUNED)
            prev = None if overwrite else writer.done_before(item.key, m.name, job.settings[m.name], content)
            if prev is None:
                pending = True
            else:
                writer.add({**prev, "status": "skipped", "error": None})
        if pending:
            todo.append(index)
        changes["redone" if pending and seen else "new" if pending else "unchanged"] += 1
    return todo


def _explain(job: Job, todo: list[int], writer: outputs.OutputWriter, reporter: Reporter) -> None:
    if not todo:
        return
    resolved = job.resolved
    # the overlay's picture only when overlays are drawn (on a 3000x2000 JPEG it costs 70% of the decoding)
    dataset = images.ImageDataset(job.items, resolved.preprocess,
                                  display=resolved.config.overlay_size if resolved.config.overlays else None)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, todo), batch_size=resolved.batch_size, shuffle=False,
        num_workers=job.workers, collate_fn=images.collate, persistent_workers=False,
        prefetch_factor=2 if job.workers else None, pin_memory=resolved.device.type == "cuda")
    trim = _malloc_trim()
    for number, batch in enumerate(loader, 1):
        for bad in batch["errors"]:
            for m in resolved.methods:
                writer.add(provenance.record(bad["key"], m.name, job.settings[m.name], status="error",
                                             error=bad["error"], **job.content.get(bad["key"], {})))
        if batch["pixels"] is not None:
            _explain_batch(job, batch, writer)
        reporter.advance(len(batch["good"]) + len(batch["errors"]))
        writer.drain(wait_all=False)
        writer.checkpoint()  # the journal is durable after every batch: a kill loses at most the next one
        if trim is not None and number % 32 == 0:
            trim(0)  # hand freed heap pages back, so the RSS of a long run stays flat


def _malloc_trim():
    """glibc's ``malloc_trim`` (None elsewhere). Batches of tensors, pixels and PNG buffers are freed in
    several threads; glibc keeps such memory in per-thread arenas, and the RSS drifts up and down by tens of MB
    unless it is trimmed now and then (about a millisecond per call)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def _explain_batch(job: Job, batch: dict, writer: outputs.OutputWriter) -> None:
    resolved, good = job.resolved, batch["good"]
    keys = [g["key"] for g in good]
    overwrite = resolved.config.overwrite
    pending = {m.name: [i for i, k in enumerate(keys) if overwrite or (k, m.name) not in writer.records]
               for m in resolved.methods}
    try:
        result = resolved.explainer(resolved.explainer.from_pixels(batch["pixels"]), keys, resolved.target,
                                    pending)
    except ModelFailure as exc:  # the batch fails, the run goes on
        for m in resolved.methods:
            for i in pending[m.name]:
                writer.add(provenance.record(keys[i], m.name, job.settings[m.name], status="error", error=str(exc),
                                             **job.content[keys[i]]))
        return
    facts = result.facts(resolved.labels)
    origins = {g["key"]: images.origin(job.items[g["index"]]) for g in good}  # source (and a tar's member)
    for g in good:  # the picture the report shows beside the overlays, once per image (none with --no-overlays)
        if g.get("picture") is not None and resolved.config.overlays:
            writer.submit_picture(g["key"], g["picture"])
    display = overlay.Display.from_config(resolved.config)
    for m in resolved.methods:
        done = result.rows.get(m.name, [])
        failure = result.failures.get(m.name)
        for i in sorted(set(pending[m.name]) - set(done)):
            writer.add(provenance.record(keys[i], m.name, job.settings[m.name], status="error",
                                         error=f"{m.name} failed: {type(failure).__name__}: {failure}", **facts[i],
                                         **job.content[keys[i]]))
        if not done:
            continue
        saliency = result.maps[m.name].numpy()
        extras = result.extras.get(m.name, {})
        # a layer map kept at its layer's size (--layer-maps native) is stored as it is; its record says how to
        # bring it to the input's size, and the overlay is drawn from it resized so, as every reader resizes it
        size = tuple(batch["pixels"].shape[1:3])
        native = tuple(saliency.shape[1:]) != size
        upsample = {"upsample": {**maps.UPSAMPLE, "size": list(size)}} if native else {}
        for row, i in enumerate(done):
            shown = maps.upsample(saliency[row], size) if native else saliency[row]
            rec = provenance.record(keys[i], m.name, job.settings[m.name], status="ok", error=None, **facts[i],
                                    **origins[keys[i]], **job.content[keys[i]],
                                    **{n: values[row] for n, values in extras.items()}, **upsample,
                                    **overlay.record_fields(display, m, good[i], shown))
            writer.submit(rec, saliency[row], _renderer(job, display, m, good[i], shown, facts[i]))


def _renderer(job: Job, display: overlay.Display, method, item: dict[str, Any], saliency: np.ndarray,
              facts: dict[str, Any]):
    """The overlay of one map, drawn on a writer thread: on the original picture or the input crop, signed maps
    in blue and red, with a caption and a legend (``overlay``)."""
    return overlay.renderer(display, job.resolved.preprocess.resize, method, item, saliency, facts)
