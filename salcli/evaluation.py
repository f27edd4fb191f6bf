"""`salcli evaluate`: score a finished run for localization, faithfulness and stability. Orchestration only:
the measures are the registry in ``measures/`` (over the pure functions of ``metrics.py``), the run's settings
are resolved by ``resolve.py`` into the same engine ``explain`` ran, maps are read through the run's output sink,
and files are written by ``outputs``. Never imports typer.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import images, measures, outputs
from .config import Preprocess, RunConfig
from .errors import UsageError, setting
from .methods.base import image_seed
from .resolve import resolve

RANDOM = "random"  # the random-map baseline's name in tables and metrics.jsonl


@dataclass(frozen=True)
class EvalOptions:
    masks: Path | None = None
    boxes: Path | None = None
    methods: tuple[str, ...] = ()
    tolerance: float | None = None  # pointing-game tolerance in input pixels (default 15 px per 224 px)
    top_k: float = 0.2
    steps: int = 32  # points on the deletion/insertion curves
    skip: frozenset[str] = frozenset()  # measures not to run (``--no-stability`` skips "stability")
    batch_size: int = 16
    device: str = "auto"


@dataclass
class EvalSummary:
    rows: list[dict[str, Any]]  # one per method (and the random baseline): mean of each metric
    per_image: list[dict[str, Any]] = field(default_factory=list)
    skipped_unannotated: int = 0
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # method -> curve name -> mean


def config_from_run(run: dict[str, Any], overrides: RunConfig | None = None,
                    given: frozenset[str] = frozenset()) -> RunConfig:
    """The run's settings, read as data from run.json, with the model options given to this command on top
    (``given``: the fields of ``overrides`` that were set). ``--trust-checkpoint`` is never taken from the file,
    and the device is this machine's, not the run's."""
    config = RunConfig.from_json(run.get("settings") or {})
    changes: dict[str, Any] = {"trust_checkpoint": False, "device": "auto", "out": None, "inputs": ()}
    if overrides is not None:
        for name in given:
            changes[name] = getattr(overrides, name)
        changes["preprocess"] = {**config.preprocess, **overrides.preprocess}
        changes["trust_checkpoint"] = overrides.trust_checkpoint
    return dataclasses.replace(config, **changes)


def load_annotations(keys: list[str], masks: Path | None, boxes: Path | None) -> dict[str, Any]:
    """key -> a mask array in original image pixels (bool), from mask PNGs or boxes (CSV or COCO JSON)."""
    found: dict[str, Any] = {}
    if masks is not None:
        if not masks.is_dir():
            raise UsageError(f"{setting('masks')} {masks}: not a folder")
        for key in keys:
            parts = key.split("/")
            # the key itself, or any trailing part of it (masks made for a sub-folder of the run's inputs)
            tails = ["/".join(parts[i:]) for i in range(len(parts))]
            for tail in tails:
                hit = next((c for c in (masks / tail, (masks / tail).with_suffix(".png"), masks / f"{tail}.png")
                            if c.is_file()), None)
                if hit is not None:
                    found[key] = np.asarray(images.decode(hit).convert("L")) > 127
                    break
    if boxes is not None:
        for key, value in _read_boxes(boxes).items():
            if key in keys:
                found[key] = value
    return found


def _read_boxes(path: Path) -> dict[str, Any]:
    """Boxes per image as ``("boxes", [(x0, y0, x1, y1), ...])`` in original pixels.

    CSV: a header with ``image,x0,y0,x1,y1`` (image = the relative path). COCO JSON: ``images`` (id, file_name)
    and ``annotations`` (image_id, bbox = [x, y, w, h]).
    """
    if not path.is_file():
        raise UsageError(f"{setting('boxes')} {path}: no such file")
    out: dict[str, list] = {}
    if path.suffix.lower() == ".json":
        doc = json.loads(path.read_text())
        names = {im["id"]: im["file_name"] for im in doc.get("images", [])}
        for ann in doc.get("annotations", []):
            x, y, w, h = ann["bbox"]
            out.setdefault(names[ann["image_id"]], []).append((x, y, x + w, y + h))
    else:
        import csv

        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                try:
                    out.setdefault(row["image"], []).append(tuple(float(row[k]) for k in ("x0", "y0", "x1", "y1")))
                except (KeyError, ValueError):
                    raise UsageError(f"{setting('boxes')} {path}: expected columns image,x0,y0,x1,y1") from None
    return {k: ("boxes", v) for k, v in out.items()}


def mask_at_input(annotation: Any, size: tuple[int, int], pre: Preprocess) -> np.ndarray:
    """An annotation in original pixels (W, H = ``size``) -> a bool mask at the model's input resolution,
    through the same resize and center crop as the image."""
    from PIL import Image, ImageDraw

    if isinstance(annotation, tuple) and annotation[0] == "boxes":
        canvas = Image.new("L", size, 0)
        draw = ImageDraw.Draw(canvas)
        for x0, y0, x1, y1 in annotation[1]:
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=255)
    else:
        canvas = Image.fromarray(annotation.astype(np.uint8) * 255, "L")
        if canvas.size != size:
            canvas = canvas.resize(size, Image.NEAREST)
    nearest = Preprocess(resize=pre.resize, crop=pre.crop, channels=1, interpolation="nearest")
    return images.prepare(canvas, nearest)[:, :, 0] > 127


def random_map(key: str, seed: int, shape: tuple[int, int]) -> torch.Tensor:
    """The random-map baseline for one image: uniform noise seeded by (seed, key)."""
    g = torch.Generator().manual_seed(image_seed(seed, f"{key}#random-map"))
    return torch.rand(shape, generator=g)


def evaluate(out: Path, opts: EvalOptions, overrides: RunConfig | None = None, given: frozenset[str] = frozenset(),
             reporter=None) -> EvalSummary:
    """Score every finished map of the run in OUT with every registered measure (``salcli.measures``).

    The run's settings are read from run.json and resolved as ``explain`` resolves them (the same model as it
    ran, methods and parameters, layer, references, chunk, seed), so maps recomputed for stability are the maps
    the run wrote. ``overrides``/``given``: the model options given to this command."""
    from .pipeline import SilentReporter

    reporter = reporter or SilentReporter()
    run = outputs.read_run_json(out)
    sink = outputs.open_sink(out, run)
    records = [r for r in outputs.read_manifest(out) if r.get("status") in ("ok", "skipped")]
    available = sorted({r["method"] for r in records})
    for name in opts.methods:
        if name not in available:
            raise UsageError(f"{setting('methods')} {name}: the run in {out} has no maps for it; it has "
                             f"{', '.join(available) or 'none'}")
    chosen = list(opts.methods) or available
    records = [r for r in records if r["method"] in chosen]
    if not records:
        raise UsageError(f"{out} has no finished maps to evaluate; run salcli explain first")
    config = config_from_run(run, overrides, given)
    config = dataclasses.replace(config, methods=tuple(chosen), device=opts.device, batch_size=opts.batch_size,
                                 params={k: v for k, v in config.params.items() if k in chosen})
    resolved = resolve(config, reporter, default_batch=opts.batch_size)
    pre, engine, seed = resolved.preprocess, resolved.explainer, config.seed
    by_key: dict[str, dict[str, dict]] = {}
    for r in records:
        by_key.setdefault(r["image"], {})[r["method"]] = r
    keys = sorted(by_key)
    annotations = load_annotations(keys, opts.masks, opts.boxes) if (opts.masks or opts.boxes) else {}
    opts = dataclasses.replace(opts, tolerance=opts.tolerance if opts.tolerance is not None
                               else 15.0 * pre.crop / 224.0)
    chosen_measures = [m for m in measures.measures("evaluate") if m.name not in opts.skip]
    rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, list[torch.Tensor]]] = {}
    reporter.start(len(keys))
    for start in range(0, len(keys), opts.batch_size):
        batch_keys = keys[start:start + opts.batch_size]
        x, sizes, good = _load_inputs(batch_keys, by_key, pre, rows)
        if good:
            masks = [mask_at_input(annotations[k], sizes[i], pre) if k in annotations else None
                     for i, k in enumerate(good)]
            rows += _score_batch(x.to(resolved.device), good, masks, by_key, chosen, sink, engine, seed, opts,
                                 chosen_measures, curves)
        reporter.advance(len(batch_keys))
    reporter.finish()
    annotated = bool(annotations or opts.masks or opts.boxes)
    return EvalSummary(rows=_summarize(rows, chosen), per_image=rows,
                       skipped_unannotated=len([k for k in keys if k not in annotations]) if annotated else 0,
                       curves={m: {c: torch.stack(v).mean(0).tolist() for c, v in cs.items()}
                               for m, cs in curves.items()})


def _score_batch(x, good, masks, by_key, chosen, sink, engine, seed, opts, chosen_measures, curves) -> list[dict]:
    """Every measure on every method's maps (and the random map's) for one batch of images."""
    target = torch.tensor([int(next(iter(by_key[k].values()))["target"]) for k in good], device=x.device)
    maps = {RANDOM: torch.stack([random_map(k, seed, tuple(x.shape[-2:])) for k in good])}
    for name in chosen:
        if all(name in by_key[k] for k in good):
            maps[name] = torch.stack([torch.from_numpy(sink.load_map(by_key[k][name])) for k in good])
    rows = []
    for name, sal in maps.items():
        batch = measures.Batch(keys=good, x=x, maps=sal, target=target, seed=seed, engine=engine, method=name,
                               masks=masks, options=opts, curves=curves.setdefault(name, {}))
        values: dict[str, list] = {}
        for measure in chosen_measures:
            if "engine" in measure.needs and name == RANDOM:
                continue
            values.update(measure.measure(batch))
        for i, key in enumerate(good):
            rows.append({"image": key, "method": name,
                         **{col: v[i] for col, v in values.items() if v[i] is not None}})
    return rows


def _load_inputs(keys: list[str], by_key: dict, pre: Preprocess, rows: list) -> tuple[torch.Tensor, list, list]:
    tensors, sizes, good = [], [], []
    for key in keys:
        record = next(iter(by_key[key].values()))
        try:  # a local file, a URL or a tar member, as the run read it (``source``, ``member``)
            im = images.load(images.from_record(record)) if record.get("source") else None
        except images.ImageError as exc:
            im = None
            rows.append({"image": key, "method": None, "error": f"cannot read the image again: {exc}"})
        if im is None:
            continue
        sizes.append(im.size)
        tensors.append(torch.from_numpy(images.normalize(images.prepare(im, pre), pre)))
        good.append(key)
    return (torch.stack(tensors) if tensors else torch.empty(0)), sizes, good


def _summarize(rows: list[dict[str, Any]], chosen: list[str]) -> list[dict[str, Any]]:
    """Per method: each metric aggregated over images (mean, or a count), the random baseline beside them, and
    whether each method beats it on the metrics that are compared with it."""
    table = []
    for name in [*chosen, RANDOM]:
        mine = [r for r in rows if r.get("method") == name]
        if not mine:
            continue
        row: dict[str, Any] = {"method": name, "images": len(mine)}
        for metric in measures.metrics("evaluate"):
            values = [r[metric.name] for r in mine if r.get(metric.name) is not None]
            if metric.aggregate == "count":
                row[metric.name] = sum(bool(v) for v in values)
            else:
                row[metric.name] = float(np.mean(values)) if values else None
        table.append(row)
    rand = next((r for r in table if r["method"] == RANDOM), None)
    if rand:
        for row in table:
            if row["method"] == RANDOM:
                continue
            row["beats_random"] = {m.name: m.beats(row[m.name], rand[m.name]) for m in measures.metrics("evaluate")
                                   if m.vs_random and row.get(m.name) is not None and rand.get(m.name) is not None}
    return table


def write_results(out: Path, summary: EvalSummary) -> list[str]:
    """OUT/metrics.jsonl (per image and method), OUT/evaluation.json (the table), OUT/plots/*.png."""
    from . import render

    outputs.write_jsonl(out / "metrics.jsonl", summary.per_image)
    outputs.write_json(out / "evaluation.json", {"schema_version": outputs.SCHEMA_VERSION, "methods": summary.rows,
                                                 "skipped_unannotated": summary.skipped_unannotated,
                                                 "mean_curves": summary.curves})
    written = ["metrics.jsonl", "evaluation.json"]
    for curve, title in measures.curve_titles().items():
        series = {m: cs[curve] for m, cs in summary.curves.items() if curve in cs}
        if series:
            png = render.line_plot(series, title, "fraction of pixels changed, most salient first",
                                   "probability of the target class", auc=True)
            outputs.write_bytes(out / "plots" / f"{curve}.png", png)
            written.append(f"plots/{curve}.png")
    return written
