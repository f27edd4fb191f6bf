"""`salcli evaluate`: score a finished run for localization, faithfulness and stability. Orchestration only:
the measures live in ``metrics.py``, files are written by ``outputs.py``. Never imports typer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import images, methods, metrics, models, outputs
from .config import Preprocess, RunConfig, build_config
from .errors import UsageError
from .methods.base import image_seed

RANDOM = "random"  # the random-map baseline's name in tables and metrics.jsonl
FRAGILE = 0.5  # an explanation whose stability (rank correlation under tiny changes) is below this is fragile


@dataclass(frozen=True)
class EvalOptions:
    masks: Path | None = None
    boxes: Path | None = None
    methods: tuple[str, ...] = ()
    tolerance: float | None = None  # pointing-game tolerance in input pixels (default 15 px per 224 px)
    top_k: float = 0.2
    steps: int = 32  # points on the deletion/insertion curves
    stability: bool = True
    batch_size: int = 16
    device: str = "auto"


@dataclass
class EvalSummary:
    rows: list[dict[str, Any]]  # one per method (and the random baseline): mean of each metric
    per_image: list[dict[str, Any]] = field(default_factory=list)
    skipped_unannotated: int = 0
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # method -> curve name -> mean


def config_from_run(run: dict[str, Any], overrides: dict[str, Any]) -> RunConfig:
    """The run's model settings, with the model options given to this command on top."""
    settings = run.get("settings") or {}
    cli: dict[str, Any] = {k: settings.get(k) for k in ("model", "weights", "config_file", "labels")}
    if isinstance(cli.get("labels"), list):
        cli["labels"] = tuple(cli["labels"])
    for key, value in (settings.get("preprocess") or {}).items():
        cli[key] = ",".join(map(str, value)) if isinstance(value, list) else value
    cli.update({k: v for k, v in overrides.items() if v is not None})
    cli["trust_checkpoint"] = overrides.get("trust_checkpoint")  # never taken from the file
    cli["device"] = overrides.get("device") or "auto"
    return build_config(cli)


def load_annotations(keys: list[str], masks: Path | None, boxes: Path | None) -> dict[str, Any]:
    """key -> a mask array in original image pixels (bool), from mask PNGs or boxes (CSV or COCO JSON)."""
    found: dict[str, Any] = {}
    if masks is not None:
        if not masks.is_dir():
            raise UsageError(f"--masks {masks}: not a folder")
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
        raise UsageError(f"--boxes {path}: no such file")
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
                    raise UsageError(f"--boxes {path}: expected columns image,x0,y0,x1,y1") from None
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


def _load_method(name: str, run: dict[str, Any]) -> methods.Method:
    params = (run.get("methods") or {}).get(name, {}).get("params", {})
    return methods.create(name, params)


def evaluate(out: Path, opts: EvalOptions, model_overrides: dict[str, Any], reporter) -> EvalSummary:
    """Score every ok map of the run in OUT; write OUT/metrics.jsonl, OUT/evaluation.json and curve plots."""
    from .pipeline import resolve_device

    run = outputs.read_run_json(out)
    records = [r for r in outputs.read_manifest(out) if r.get("status") in ("ok", "skipped") and r.get("npy")]
    available = sorted({r["method"] for r in records})
    for name in opts.methods:
        if name not in available:
            raise UsageError(f"-m {name}: the run in {out} has no maps for it; it has {', '.join(available) or 'none'}")
    chosen = list(opts.methods) or available
    records = [r for r in records if r["method"] in chosen]
    if not records:
        raise UsageError(f"{out} has no finished maps to evaluate; run salcli explain first")
    config = config_from_run(run, model_overrides)
    pre, _, _ = models.resolve_preset(config)
    device = resolve_device(opts.device)
    model = models.load_model(config.model, config.weights, config.trust_checkpoint).module.to(device)
    method_objs = {name: _load_method(name, run) for name in chosen}
    layer = None
    if any(m.needs_layer for m in method_objs.values()):
        from . import layers

        layer = layers.resolve_layer(model, run.get("layer"),
                                     torch.zeros(1, pre.channels, pre.crop, pre.crop, device=device))
    seed = int(run.get("seed", 0))
    by_key: dict[str, dict[str, dict]] = {}
    for r in records:
        by_key.setdefault(r["image"], {})[r["method"]] = r
    keys = sorted(by_key)
    annotations = load_annotations(keys, opts.masks, opts.boxes) if (opts.masks or opts.boxes) else {}
    tolerance = opts.tolerance if opts.tolerance is not None else 15.0 * pre.crop / 224.0
    rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, list[torch.Tensor]]] = {}
    reporter.start(len(keys))
    for start in range(0, len(keys), opts.batch_size):
        batch_keys = keys[start:start + opts.batch_size]
        x, sizes, good = _load_inputs(batch_keys, by_key, pre, rows)
        if not good:
            reporter.advance(len(batch_keys))
            continue
        x = x.to(device)
        first = [next(iter(by_key[k].values())) for k in good]
        target = torch.tensor([int(r["target"]) for r in first], device=device)
        maps = {RANDOM: torch.stack([random_map(k, seed, (pre.crop, pre.crop)) for k in good])}
        for name in chosen:
            present = [k for k in good if name in by_key[k]]
            if len(present) == len(good):
                maps[name] = torch.stack([torch.from_numpy(np.load(out / by_key[k][name]["npy"])) for k in good])
        for name, sal in maps.items():
            scores = _faithfulness(model, x, sal, target, opts.steps, good, seed, curves.setdefault(name, {}))
            stab = (_stability(model, x, sal.to(device), target, method_objs[name], good, seed, layer, pre)
                    if opts.stability and name != RANDOM else [{} for _ in good])
            for i, key in enumerate(good):
                row = {"image": key, "method": name, **scores[i], **stab[i]}
                if key in annotations:
                    mask = mask_at_input(annotations[key], sizes[i], pre)
                    if mask.any():
                        s = sal[i].numpy()
                        row.update(pointing_game=float(metrics.pointing_hit(s, mask, tolerance)),
                                   energy=metrics.energy_inside(s, mask), iou=metrics.top_k_iou(s, mask, opts.top_k))
                rows.append(row)
        reporter.advance(len(batch_keys))
    reporter.finish()
    summary = EvalSummary(rows=_summarize(rows, chosen), per_image=rows,
                          skipped_unannotated=len([k for k in keys if k not in annotations]) if annotations or
                          opts.masks or opts.boxes else 0,
                          curves={m: {c: torch.stack(v).mean(0).tolist() for c, v in cs.items()}
                                  for m, cs in curves.items()})
    return summary


def _load_inputs(keys: list[str], by_key: dict, pre: Preprocess, rows: list) -> tuple[torch.Tensor, list, list]:
    tensors, sizes, good = [], [], []
    for key in keys:
        source = next(iter(by_key[key].values())).get("source")
        try:
            im = images.decode(Path(source)) if source else None
        except images.ImageError as exc:
            im = None
            rows.append({"image": key, "method": None, "error": f"cannot read the image again: {exc}"})
        if im is None:
            continue
        sizes.append(im.size)
        tensors.append(torch.from_numpy(images.normalize(images.prepare(im, pre), pre)))
        good.append(key)
    return (torch.stack(tensors) if tensors else torch.empty(0)), sizes, good


def _faithfulness(model, x, sal, target, steps, keys, seed, curves) -> list[dict[str, float]]:
    g = torch.Generator().manual_seed(image_seed(seed, "road:" + keys[0]))
    found = {
        "deletion": metrics.perturbation_curve(model, x, sal, target, "deletion", "zero", steps),
        "deletion_road": metrics.perturbation_curve(model, x, sal, target, "deletion", "road", steps, generator=g),
        "insertion": metrics.perturbation_curve(model, x, sal, target, "insertion", "blur", steps),
    }
    for name, curve in found.items():
        curves.setdefault(name, []).extend(curve)
    areas = {name: metrics.auc(curve) for name, curve in found.items()}
    return [{f"{name}_auc": float(a[i]) for name, a in areas.items()} for i in range(len(keys))]


def _stability(model, x, sal, target, method, keys, seed, layer, pre) -> list[dict[str, float]]:
    """Rank correlation of the map with the maps of (a) x plus noise of 1% of its range and (b) x shifted one
    pixel right (compared on the overlap); max-sensitivity = the largest relative change of the map."""
    ctx = methods.Context(keys=keys, seed=seed, layer=layer, mean=pre.mean, std=pre.std)
    spread = (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3))).view(-1, 1, 1, 1)
    noise = torch.stack([torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(
        image_seed(seed, "stability:" + k))) for k in keys]).to(x.device)
    noisy = method.attribute(model, x + 0.01 * spread * noise, target, ctx).detach().float()
    shifted = method.attribute(model, torch.roll(x, 1, dims=-1), target, ctx).detach().float()
    out = []
    for i in range(len(keys)):
        base, a, b = sal[i].cpu().numpy(), noisy[i].cpu().numpy(), shifted[i].cpu().numpy()
        rho = [metrics.spearman(base, a), metrics.spearman(base[:, :-1], b[:, 1:])]
        norm = max(float(np.linalg.norm(base)), 1e-12)
        sens = max(float(np.linalg.norm(a - base)), float(np.linalg.norm(b[:, 1:] - base[:, :-1]))) / norm
        out.append({"stability": float(np.mean(rho)), "max_sensitivity": sens,
                    "fragile": bool(np.mean(rho) < FRAGILE)})
    return out


METRIC_COLUMNS = ("pointing_game", "energy", "iou", "deletion_auc", "deletion_road_auc", "insertion_auc",
                  "stability", "max_sensitivity")


def _summarize(rows: list[dict[str, Any]], chosen: list[str]) -> list[dict[str, Any]]:
    """Mean of each metric per method, the random baseline's means beside them, and whether each beats it."""
    table = []
    for name in [*chosen, RANDOM]:
        mine = [r for r in rows if r.get("method") == name]
        if not mine:
            continue
        row: dict[str, Any] = {"method": name, "images": len(mine)}
        for col in METRIC_COLUMNS:
            values = [r[col] for r in mine if col in r]
            row[col] = float(np.mean(values)) if values else None
        row["fragile"] = sum(bool(r.get("fragile")) for r in mine)
        table.append(row)
    rand = next((r for r in table if r["method"] == RANDOM), None)
    if rand:
        lower_is_better = {"deletion_auc", "deletion_road_auc"}
        for row in table:
            if row["method"] == RANDOM:
                continue
            row["beats_random"] = {
                col: (row[col] < rand[col] if col in lower_is_better else row[col] > rand[col])
                for col in ("pointing_game", "energy", "iou", "deletion_auc", "deletion_road_auc", "insertion_auc")
                if row.get(col) is not None and rand.get(col) is not None}
    return table


def write_results(out: Path, summary: EvalSummary) -> list[str]:
    """OUT/metrics.jsonl (per image and method), OUT/evaluation.json (the table), OUT/plots/*.png."""
    from . import render

    outputs.write_jsonl(out / "metrics.jsonl", summary.per_image)
    outputs.write_json(out / "evaluation.json", {"schema_version": outputs.SCHEMA_VERSION, "methods": summary.rows,
                                                 "skipped_unannotated": summary.skipped_unannotated,
                                                 "mean_curves": summary.curves})
    written = ["metrics.jsonl", "evaluation.json"]
    titles = {"deletion": "Deletion (zero fill)", "deletion_road": "Deletion (ROAD noisy linear imputation)",
              "insertion": "Insertion (from a blur)"}
    for curve, title in titles.items():
        series = {m: cs[curve] for m, cs in summary.curves.items() if curve in cs}
        if series:
            png = render.line_plot(series, title, "fraction of pixels changed, most salient first",
                                   "probability of the target class")
            outputs.write_bytes(out / "plots" / f"{curve}.png", png)
            written.append(f"plots/{curve}.png")
    return written
