"""Issue 16's figures: images/s, files and bytes of each output format, where the time goes per image, whether the
decoder and writer pools scale, and an estimate for 10^8 images.

    .venv/bin/python benchmarks/bench_formats.py          # full size: about 15 minutes on 2 idle cores
    .venv/bin/python benchmarks/bench_formats.py --images 60 --images-resnet 4 --repeat 1 --json /tmp/r.json  # smoke

Two models, method ``vanilla``, ``--device cpu`` unless given: the builtin model (``builtin:fashion-mnist``, 28x28;
``--images`` copies of the 30 Fashion-MNIST samples, mirrored and shifted: 1,500 distinct pictures) and
torchvision's resnet18 with random weights (``torchvision:resnet18``; ``--images-resnet`` 224x224 JPEGs cut from
the sample photos). Every run is ``python -m salcli explain ... -q --json`` in a fresh process into a fresh OUT,
timed end to end (wall clock, and the CPU time of the process and its decoding workers); its own ``run.json``
timings give the run without Python's start and the model load (``setup_seconds``). The formats of one model run in
rounds (``--repeat``, alternating the order), and each figure is the median over the rounds, so a slow moment of a
shared machine weighs on every format.

- **Throughput**: images/s of the run after set-up (``run.json``'s ``images_per_second``), end to end (the process's
  wall clock), and at the margin: each format also runs over the first quarter of the images, and the difference of
  the two runs' times after set-up over the difference of their images is the cost of one more image (a run's fixed
  costs, such as importing pyarrow for the first Parquet part, cancel out, as they do at 10^8 images). Ratios to
  ``files`` (with overlays) are taken within a round. Issue 16's bar: ``--format parquet --no-overlays`` >= 3x
  ``files`` for the builtin model.
- **Where the time goes**: a separate process runs the pipeline's steps one by one on one thread over (up to
  ``--stage-images`` of) the same images: decode, the model (the best of three passes), overlay render, PNG and
  ``.npy`` encoding, the picture's JPEG, then each format's store alone (an ``OutputWriter`` with one writer thread
  fed the computed maps and the drawn overlays: encoding, files, journal, parts, manifest). The CLI's marginal time
  per image minus the model's is the non-model work.
- **Storage**: files and bytes under OUT after the run. Files that grow with the images (``.npy``, ``.png``,
  ``original/*.jpg``) are scaled linearly; part files (Parquet, tar shards) are counted from the sink's own part
  limits (``part_rows``, ``part_bytes``) and the measured bytes per row; the manifest and run.json are one file each.
- **Scaling**: ``--workers 0/1/2`` (decoding processes) and 1/2/4 writer threads (``outputs.OutputWriter``'s
  ``threads``, not a CLI option: set by a launcher that patches its default) for ``files`` and
  ``parquet --no-overlays``, builtin model.
- **10^8 images**: an estimate from the measured marginal per-image costs: hours of this machine, the non-model
  hours that a GPU would leave, storage, files.

Prints a markdown section for BENCHMARKS.md (also written to ``--markdown``) and stores the figures in ``--json``
under ``"formats"`` (the file's other keys are kept).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_name  # benchmarks/machine.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUILTIN, RESNET = "builtin:fashion-mnist", "torchvision:resnet18"
FORMATS = (  # (label, format, overlays, map dtype)
    ("files", "files", True, "float32"),
    ("files --no-overlays", "files", False, "float32"),
    ("parquet", "parquet", True, "float32"),
    ("parquet --no-overlays", "parquet", False, "float32"),
    ("parquet --no-overlays --map-dtype float16", "parquet", False, "float16"),
    ("webdataset --no-overlays", "webdataset", False, "float32"),
)


def options(fmt: str, overlays: bool, dtype: str) -> list[str]:
    return ["--format", fmt, *([] if overlays else ["--no-overlays"]), *(["--map-dtype", dtype] if dtype != "float32"
                                                                          else [])]


BASE, TARGET = "files", "parquet --no-overlays"
BAR = 3.0
SCALED = (("files", options("files", True, "float32")), ("parquet --no-overlays", options("parquet", False, "float32")))
SCALING = ((0, 2), (1, 2), (2, 2), (0, 1), (0, 4))  # (--workers, writer threads); (0, 2) is the default on the CPU
FIXED = {"run.json", "manifest.jsonl", ".salcli.lock"}  # one each per OUT, whatever the number of images
PACKED = {"data": "parquet", "wds": "webdataset"}  # OUT's folder of part files -> the sink
SCALE = 10**8

# Runs `salcli explain` with the writer pool's thread count patched (argv[1]; 0: unchanged), the rest as the CLI's.
LAUNCH = r"""
import sys
threads = int(sys.argv.pop(1))
if threads:
    from salcli import outputs
    init = outputs.OutputWriter.__init__
    def patched(self, *args, **kwargs):
        kwargs["threads"] = threads
        init(self, *args, **kwargs)
    outputs.OutputWriter.__init__ = patched
sys.argv[0] = "salcli"
from salcli.cli import run
run()
"""

# The pipeline's steps one after another, milliseconds per image (JSON on stdout): decoding, the model (the best of
# three passes over the images), overlay render and encodings on one thread, then for each format the store alone:
# an OutputWriter with one writer thread fed the computed maps and the drawn overlays (encode, write, journal, part
# files, manifest), as the pipeline feeds it.
STAGES = r"""
import io, json, sys, time
from pathlib import Path
import numpy as np
from salcli import images, outputs, overlay, pipeline, provenance
from salcli.config import build_config
from salcli.outputs import png_bytes
from salcli.outputs.sinks.files import jpeg_bytes

folder, model, device, out, limit = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4]), int(sys.argv[5])
stores = json.loads(sys.argv[6])
clock = time.perf_counter
config = build_config({"inputs": [folder], "out": out / "unused", "model": model, "methods": ["vanilla"],
                       "device": device, "quiet": True})
job = pipeline.plan_job(config, pipeline.SilentReporter())
resolved, items = job.resolved, job.items[:limit]
n = len(items)
ms, fixed = {}, {}
plain = images.ImageDataset(items, resolved.preprocess, display=None)
dataset = images.ImageDataset(items, resolved.preprocess, display=resolved.config.overlay_size)
for i in range(min(n, 16)):  # warm-up: lazy imports, the first files' pages
    plain[i], dataset[i]
ms["decode"] = ms["decode_with_picture"] = float("inf")
for _ in range(2):
    t0 = clock(); [plain[i] for i in range(n)]; ms["decode"] = min(ms["decode"], clock() - t0)
    t0 = clock(); recs = [dataset[i] for i in range(n)]
    ms["decode_with_picture"] = min(ms["decode_with_picture"], clock() - t0)
bs = resolved.batch_size
batches = [images.collate(recs[s:s + bs]) for s in range(0, n, bs)]
ex = resolved.explainer
keys = [[g["key"] for g in b["good"]] for b in batches]
sync = (lambda: __import__("torch").cuda.synchronize()) if resolved.device.type == "cuda" else (lambda: None)
ex(ex.from_pixels(batches[0]["pixels"]), keys[0], resolved.target); sync()  # warm-up
passes = []
for _ in range(3):
    t0 = clock()
    results = [ex(ex.from_pixels(b["pixels"]), k, resolved.target) for b, k in zip(batches, keys)]
    sync(); passes.append(clock() - t0)
ms["model"] = min(passes)
display = overlay.Display.from_config(resolved.config)
method = resolved.methods[0]
for name in ("render", "png", "npy_float32", "npy_float16", "picture_jpeg"):
    ms[name] = 0.0
drawn = []
for b, r in zip(batches, results):
    facts, maps = r.facts(resolved.labels), r.maps[method.name].numpy()
    drawn.append([])
    for row, i in enumerate(r.rows[method.name]):
        g = b["good"][i]
        t0 = clock(); d = overlay.renderer(display, resolved.preprocess.resize, method, g, maps[row], facts[i])()
        t1 = clock(); png_bytes(d)
        t2 = clock(); np.save(io.BytesIO(), np.ascontiguousarray(maps[row], dtype=np.float32), allow_pickle=False)
        t3 = clock(); np.save(io.BytesIO(), np.ascontiguousarray(maps[row], dtype=np.float16), allow_pickle=False)
        t4 = clock(); jpeg_bytes(g["picture"])
        t5 = clock()
        ms["render"] += t1 - t0; ms["png"] += t2 - t1; ms["npy_float32"] += t3 - t2; ms["npy_float16"] += t4 - t3
        ms["picture_jpeg"] += t5 - t4
        drawn[-1].append(d)
t0 = clock()
try:
    import pyarrow, pyarrow.parquet  # a fixed cost of the first Parquet part, left out of the per-image figure
    fixed["pyarrow_import_seconds"] = clock() - t0
except ImportError:
    stores = [s for s in stores if s[1] != "parquet"]
content = images.contents(items)


def store_run(index, fmt, overlays, dtype, upto):
    t0 = clock()
    writer = outputs.OutputWriter(out / f"store-{index}", threads=1, sink=fmt, keys={it.key for it in items},
                                  overlays=overlays, map_dtype=dtype)
    for b, r, ds in list(zip(batches, results, drawn))[:upto]:
        facts, maps = r.facts(resolved.labels), r.maps[method.name].numpy()
        if overlays:
            for g in b["good"]:
                writer.submit_picture(g["key"], g["picture"])
        for row, i in enumerate(r.rows[method.name]):
            g = b["good"][i]
            rec = provenance.record(g["key"], method.name, job.settings[method.name], status="ok", error=None,
                                    **facts[i], **images.origin(items[g["index"]]), **content[g["key"]],
                                    **overlay.record_fields(display, method, g, maps[row]))
            writer.submit(rec, maps[row], (lambda d=ds[row]: d))
        writer.drain(wait_all=False)
        writer.checkpoint()
    writer.close()
    writer.write_manifest()
    return clock() - t0


for index, (label, fmt, overlays, dtype) in enumerate(stores):  # warm-up: one batch each; the first one of a
    seconds = store_run(f"warm-{index}", fmt, overlays, dtype, 1)  # format pays its library's first use
    fixed.setdefault(f"first_{fmt}_batch_seconds", seconds)
store = {label: 1000 * store_run(index, fmt, overlays, dtype, len(batches)) / n
         for index, (label, fmt, overlays, dtype) in enumerate(stores)}
print(json.dumps({"images": n, "batch_size": bs, "fixed": fixed, "store_ms_per_image": store,
                  "ms_per_image": {k: 1000 * v / n for k, v in ms.items()}}))
"""


# ---------------------------------------------------------------------------------------------- inputs
def fashion_images(folder: Path, n: int) -> Path:
    """n distinct 28x28 PNGs in class folders: the Fashion-MNIST samples, mirrored and shifted by a few pixels."""
    import numpy as np
    from PIL import Image

    samples = sorted((ROOT / "sample_images" / "fashion-mnist").rglob("*.png"))
    for i in range(n):
        src = samples[i % len(samples)]
        variant = i // len(samples)
        a = np.asarray(Image.open(src).convert("L"))
        if variant % 2:
            a = a[:, ::-1]
        a = np.roll(a, ((variant // 2) % 5 - 2, (variant // 10) % 5 - 2), axis=(0, 1))
        dest = folder / src.parent.name / f"{src.stem}-{variant:05d}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(a)).save(dest)
    return folder


def photo_images(folder: Path, n: int) -> Path:
    """n 224x224 JPEGs (quality 90): square crops of the sample photos at random places and sizes, some mirrored."""
    import random

    from PIL import Image

    photos = sorted((ROOT / "sample_photos").glob("*.jpg"))
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rng = random.Random(i)
        im = Image.open(photos[i % len(photos)]).convert("RGB")
        side = int(min(im.size) * rng.uniform(0.6, 1.0))
        left, top = rng.randint(0, im.width - side), rng.randint(0, im.height - side)
        im = im.crop((left, top, left + side, top + side)).resize((224, 224), Image.BILINEAR)
        if (i // len(photos)) % 2:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        im.save(folder / f"img{i:05d}.jpg", quality=90)
    return folder


# ---------------------------------------------------------------------------------------------- one run
def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def explain(folder: Path, out: Path, model: str, opts: list[str], device: str, n: int,
            threads: int | None = None) -> dict:
    """One `salcli explain` process into a fresh OUT: its times, its run.json timings and what it left in OUT."""
    shutil.rmtree(out, ignore_errors=True)
    args = [str(folder), "-o", str(out), "--model", model, "-m", "vanilla", "--device", device, *opts, "-q",
            "--json"]
    command = ([sys.executable, "-c", LAUNCH, str(threads), "explain", *args] if threads is not None
               else [sys.executable, "-m", "salcli", "explain", *args])
    cpu0, t0 = children_cpu(), time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    if proc.returncode != 0:
        raise SystemExit(f"salcli explain failed ({proc.returncode}): {' '.join(command[-len(args):])}\n"
                         f"{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout)
    if summary["counts"].get("ok") != n:
        raise SystemExit(f"expected {n} maps, got {summary['counts']}: {' '.join(args)}")
    timings = json.loads((out / "run.json").read_text())["timings"]
    figures = {"wall_seconds": wall, "cpu_seconds": cpu, "run_seconds": timings["seconds"],
               "setup_seconds": timings["setup_seconds"], "images_per_second": timings["images_per_second"],
               "images_per_second_end_to_end": n / wall, **storage(out)}
    shutil.rmtree(out, ignore_errors=True)
    return figures


def storage(out: Path) -> dict:
    """Files and bytes under OUT: those that grow one by one with the images, the part files, the fixed ones."""
    linear = {"files": 0, "bytes": 0, "allocated": 0}
    parts = {"files": 0, "bytes": 0, "allocated": 0, "folder": None}
    fixed = {"files": 0, "bytes": 0, "allocated": 0}
    manifest = 0
    for path in out.rglob("*"):
        if not path.is_file():
            continue
        st = path.stat()
        rel = path.relative_to(out)
        if rel.parts[0] in PACKED and len(rel.parts) == 2:
            kind = parts
            parts["folder"] = rel.parts[0]
        elif rel.parts[0] == "parts" or str(rel) in FIXED:
            kind = fixed
            if str(rel) == "manifest.jsonl":
                manifest = st.st_size
        else:
            kind = linear
        kind["files"] += 1
        kind["bytes"] += st.st_size
        kind["allocated"] += st.st_blocks * 512
    return {"linear": linear, "parts": parts, "fixed": fixed, "manifest_bytes": manifest}


def part_files(images: int, measured: dict, n: int) -> int:
    """Part files (Parquet parts, tar shards) for ``images`` images (one method): the sink's part limits applied to
    the measured bytes per row; 0 for the files format."""
    folder = measured["parts"]["folder"]
    if not folder:
        return 0
    from salcli.outputs import sinks

    sink = sinks.get(PACKED[folder])
    by_rows = math.ceil(images / sink.part_rows) if sink.part_rows else 1
    by_bytes = math.ceil(images * measured["parts"]["bytes"] / n / sink.part_bytes)
    return max(by_rows, by_bytes, 1)


def files_for(images: int, measured: dict, n: int) -> int:
    """Files in OUT for ``images`` images (one method), from what a run of n images left."""
    return (math.ceil(measured["linear"]["files"] * images / n) + measured["fixed"]["files"]
            + part_files(images, measured, n))


# ---------------------------------------------------------------------------------------------- sections
def formats(folder: Path, small: Path, work: Path, model: str, n: int, k: int, repeat: int, device: str) -> dict:
    """Each format's runs over n images and over the first k of them (``small``), in rounds that alternate the
    order; medians over the rounds. The marginal cost per image is the difference of the two runs' times after
    set-up over n - k images: the fixed costs of a run (the first Parquet part's pyarrow import, the manifest and
    run.json) cancel out, as they do at 10^8 images."""
    explain(folder, work / "warm", model, options(*FORMATS[3][1:]), device, n)  # page cache, bytecode, weights
    runs: dict[str, list[dict]] = {label: [] for label, *_ in FORMATS}
    marginal: dict[str, list[float]] = {label: [] for label, *_ in FORMATS}
    for r in range(repeat):
        for label, *spec in (FORMATS if r % 2 == 0 else FORMATS[::-1]):
            big = explain(folder, work / "out", model, options(*spec), device, n)
            few = explain(small, work / "out", model, options(*spec), device, k)
            runs[label].append(big)
            work_big, work_few = big["run_seconds"] - big["setup_seconds"], few["run_seconds"] - few["setup_seconds"]
            marginal[label].append(1000 * (work_big - work_few) / (n - k))
            print(f"  {model} {label}: {big['images_per_second']:.1f} images/s, marginal "
                  f"{num(marginal[label][-1] and 1000 / marginal[label][-1], '{:.1f}')}", file=sys.stderr, flush=True)
    result = {}
    for label, measured in runs.items():
        med = {key: statistics.median(m[key] for m in measured)
               for key in ("wall_seconds", "cpu_seconds", "run_seconds", "setup_seconds", "images_per_second",
                           "images_per_second_end_to_end")}
        last = measured[-1]  # storage is the same in every round
        ms = statistics.median(marginal[label])
        result[label] = {
            **med, "rounds": [m["images_per_second"] for m in measured],
            "ms_per_image": 1000 * (med["run_seconds"] - med["setup_seconds"]) / n,
            "marginal_ms_per_image": ms, "marginal_rounds_ms": marginal[label],
            "marginal_images_per_second": 1000 / ms if ms > 0 else None,  # None: the machine's noise won
            "cpu_per_wall": med["cpu_seconds"] / med["wall_seconds"],
            "files_per_10000": files_for(10_000, last, n), "files_per_1e8": files_for(SCALE, last, n),
            "bytes_per_image": (last["linear"]["bytes"] + last["parts"]["bytes"] + last["manifest_bytes"]) / n,
            "allocated_per_image": (last["linear"]["allocated"] + last["parts"]["allocated"]
                                    + last["manifest_bytes"]) / n,
            "manifest_bytes_per_image": last["manifest_bytes"] / n,
            "part_files": last["parts"]["files"], "part_files_expected": part_files(n, last, n),
        }
    for label, r in result.items():  # ratios within each round, then the median
        r["ratio_to_files"] = statistics.median(a["images_per_second"] / b["images_per_second"]
                                                for a, b in zip(runs[label], runs[BASE]))
        r["ratio_to_files_end_to_end"] = statistics.median(
            a["images_per_second_end_to_end"] / b["images_per_second_end_to_end"]
            for a, b in zip(runs[label], runs[BASE]))
        valid = [b / a for a, b in zip(marginal[label], marginal[BASE]) if a > 0 and b > 0]
        r["ratio_to_files_marginal"] = statistics.median(valid) if valid else None  # None: a round's noise won
    return result


def stages(folder: Path, work: Path, model: str, device: str, limit: int) -> dict:
    out = work / "stages-out"
    proc = subprocess.run([sys.executable, "-c", STAGES, str(folder), model, device, str(out), str(limit),
                           json.dumps(FORMATS)], capture_output=True, text=True, cwd=ROOT)
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"stage timing failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def scaling(folder: Path, work: Path, n: int, repeat: int, device: str) -> dict:
    runs: dict[str, list[float]] = {}
    for r in range(repeat):
        order = [(label, opts, w, t) for label, opts in SCALED for w, t in SCALING]
        for label, opts, workers, threads in (order if r % 2 == 0 else order[::-1]):
            m = explain(folder, work / "out", BUILTIN, [*opts, "--workers", str(workers)], device, n, threads)
            runs.setdefault(f"{label}|{workers}|{threads}", []).append(m["images_per_second"])
            print(f"  scaling {label} workers {workers} threads {threads}: {m['images_per_second']:.1f} images/s",
                  file=sys.stderr, flush=True)
    return {key: {"images_per_second": statistics.median(v), "rounds": v} for key, v in runs.items()}


# ---------------------------------------------------------------------------------------------- report
def machine() -> str:
    import numpy
    import PIL
    import torch

    try:
        import pyarrow

        arrow = pyarrow.__version__
    except ImportError:
        arrow = "not installed"
    cpu = cpu_name()
    load = ", load average before the run {:.2f}".format(os.getloadavg()[0]) if hasattr(os, "getloadavg") else ""
    return (f"{cpu}, {os.cpu_count()} logical CPUs{load}; Python {sys.version.split()[0]}, torch {torch.__version__}, "
            f"NumPy {numpy.__version__}, Pillow {PIL.__version__}, pyarrow {arrow}")


def fmt_bytes(b: float) -> str:
    for unit, size in (("MB", 1e6), ("KB", 1e3)):
        if b >= size:
            return f"{b / size:.1f} {unit}"
    return f"{b:.0f} B"


def short(model: str) -> str:
    return model.split(":", 1)[1]


def num(value: float | None, fmt: str) -> str:
    """``value`` formatted, or n/a when it is missing or not positive (a marginal figure lost in noise)."""
    return fmt.format(value) if value is not None and value > 0 else "n/a"


def non_model(r: dict, st: dict) -> float:
    return r["marginal_ms_per_image"] - st["ms_per_image"]["model"]


def markdown(res: dict) -> str:
    cfg, models = res["config"], res["models"]
    names = {BUILTIN: f"builtin:fashion-mnist (28x28), {cfg['images']:,} images (marginal: against the first "
                      f"{cfg['images_small']:,})",
             RESNET: f"resnet18 224x224, random weights, {cfg['images_resnet']:,} images (marginal: against the first "
                     f"{cfg['images_resnet_small']:,})"}
    rounds = f"{cfg['repeat']} round{'s' if cfg['repeat'] != 1 else ''}"
    out = ["## Formats and throughput at scale (issue 16)", "",
           f"`{cfg['command']}` ({cfg['date']}, {cfg['seconds'] / 60:.0f} minutes; {cfg['machine']}). Method "
           f"`vanilla`, `--device {cfg['device']}`; each run is `python -m salcli explain ... -q --json` in a fresh "
           f"process into a fresh OUT; figures are medians of {rounds} (the order of the formats alternates between "
           "rounds), and ratios are taken within a round.", ""]
    builtin = models.get(BUILTIN)
    if builtin:
        r = builtin["formats"][TARGET]
        verdict = "met" if r["ratio_to_files"] >= BAR else "**missed**"
        out += [f"Issue 16's bar, `--format {TARGET}` against `--format files` (with overlays), builtin model: "
                f"**{r['ratio_to_files']:.2f}x** the images/s of the run after set-up (bar {BAR:.0f}x: {verdict}); "
                f"{num(r['ratio_to_files_marginal'], '{:.2f}x')} per image at the margin (fixed costs of a run left "
                f"out, as at scale); {r['ratio_to_files_end_to_end']:.2f}x end to end (Python's start and the model "
                "load included).", ""]
    for model, m in models.items():
        st = m["stages"]
        out += [f"### Throughput: {names[model]}", "",
                "| format | images/s, run after set-up | images/s, end to end | marginal images/s | marginal ms per "
                "image | model ms | non-model ms | CPU / wall | x `files` (run / marginal) |",
                "|---|---|---|---|---|---|---|---|---|"]
        for label, r in m["formats"].items():
            rest = non_model(r, st)
            rate = r["marginal_images_per_second"]
            out.append(f"| `{label}` | {r['images_per_second']:.1f} | {r['images_per_second_end_to_end']:.1f} | "
                       f"{num(rate, '{:.1f}')} | {num(rate and r['marginal_ms_per_image'], '{:.2f}')} | "
                       f"{st['ms_per_image']['model']:.2f} | {num(rate and rest, '{:.2f}')} | {r['cpu_per_wall']:.2f} "
                       f"| **{r['ratio_to_files']:.2f}** / {num(r['ratio_to_files_marginal'], '{:.2f}')} |")
        setup = statistics.median(r["setup_seconds"] for r in m["formats"].values())
        start = statistics.median(r["wall_seconds"] - r["run_seconds"] for r in m["formats"].values())
        out += ["", f"Per process: set-up (discovery, model load; run.json's `setup_seconds`) {setup:.2f} s, Python's "
                f"start and imports {start:.2f} s. \"Model\" is the compute-only time per image of the same engine "
                "and batch size (the best of three passes, next table); \"non-model\" is the rest of the marginal "
                "time per image: decoding, overlay, encoding, writing, journal, as the pipeline overlaps them with "
                "the model on this machine's cores. n/a: at or below zero, lost in the machine's noise.", ""]
    out += ["### Where the time goes, milliseconds per image (each step alone, one thread)", "",
            "| step | " + " | ".join(short(model) for model in models) + " |", "|---|" + "---|" * len(models)]
    steps = (("decode (the model's input only)", "decode"),
             ("decode and the overlay's picture (what the pipeline does, with or without overlays)",
              "decode_with_picture"),
             ("model: vanilla, forward + backward (batch {bs})", "model"), ("overlay render", "render"),
             ("overlay PNG encode", "png"), ("map .npy encode, float32", "npy_float32"),
             ("map .npy encode, float16", "npy_float16"), ("picture JPEG (`files`' `original/`)", "picture_jpeg"))
    for title, key in steps:
        cells = [f"{m['stages']['ms_per_image'][key]:.3f}" for m in models.values()]
        title = title.format(bs="/".join(str(m["stages"]["batch_size"]) for m in models.values()))
        out.append(f"| {title} | " + " | ".join(cells) + " |")
    for label, *_ in FORMATS:
        cells = [f"{m['stages']['store_ms_per_image'][label]:.3f}" if label in m["stages"]["store_ms_per_image"]
                 else "n/a" for m in models.values()]
        out.append(f"| store `{label}`: encode, write, journal, parts, manifest (OutputWriter, 1 thread) | "
                   + " | ".join(cells) + " |")
    fixed = next(iter(models.values()))["stages"]["fixed"]
    first = ""
    if "pyarrow_import_seconds" in fixed and "first_parquet_batch_seconds" in fixed:
        first = (f" Once per process, and left out of these rows (each store was first run on one batch): importing "
                 f"pyarrow, {fixed['pyarrow_import_seconds']:.2f} s here (in the CLI it happens at the first Parquet "
                 f"part, after set-up), and the first Parquet part's first batch, "
                 f"{fixed['first_parquet_batch_seconds']:.2f} s, against "
                 f"{fixed.get('first_webdataset_batch_seconds', float('nan')):.2f} s for WebDataset.")
    out += ["", "The store rows feed an `OutputWriter` the computed maps and the already drawn overlays (the render is "
            "the row above), so they are the encoding and the file-system work of each format, with a run's fixed "
            "costs (opening, fsync'ing and closing a part, the manifest) spread over the step's images." + first, ""]
    out += ["### Storage (one method)", "",
            "| format | files per 10,000 images (" + " / ".join(short(m) for m in models) + ") | "
            + " | ".join(f"bytes per image, {short(model)} (on disk)" for model in models) + " |",
            "|---|---|" + "---|" * len(models)]
    first = next(iter(models.values()))
    for label in first["formats"]:
        cells = [f"{fmt_bytes(m['formats'][label]['bytes_per_image'])} "
                 f"({fmt_bytes(m['formats'][label]['allocated_per_image'])})" for m in models.values()]
        counts = " / ".join(f"{m['formats'][label]['files_per_10000']:,}" for m in models.values())
        out.append(f"| `{label}` | {counts} | " + " | ".join(cells) + " |")
    out += ["", "Files count the manifest and run.json (and `parts/run-*.json`, `.salcli.lock`); `.npy`, `.png` and "
            "`original/*.jpg` scale with the images, part files are counted from the sink's part limits (Parquet: "
            "10,000 rows or 256 MiB; WebDataset: 1 GiB) and the measured bytes per row. Bytes per image include the "
            "manifest's line; \"on disk\" counts allocated blocks (4 KiB or more per small file).", ""]
    if "scaling" in res:
        out += ["### Do the pools scale? builtin model, images/s of the run after set-up", "",
                "| `--workers` (decoding processes) | writer threads | `files` | `parquet --no-overlays` |",
                "|---|---|---|---|"]
        for workers, threads in SCALING:
            cells = [f"{res['scaling'][f'{label}|{workers}|{threads}']['images_per_second']:.1f}"
                     for label, _ in SCALED]
            note = " (the default on the CPU)" if (workers, threads) == (0, 2) else ""
            out.append(f"| {workers} | {threads}{note} | " + " | ".join(cells) + " |")
        out += ["", f"This machine has {os.cpu_count()} logical CPUs. On the CPU `--workers` defaults to 0 "
                "(`pipeline.auto_workers`: decoding in the main process; up to 4 on CUDA), and the writer pool has "
                "2 threads whatever the cores (`outputs.OutputWriter(threads=2)`; not a CLI option, set here by "
                "patching its default).", ""]
    out += ["### An estimate for 10^8 images per method (not a measurement)", "",
            "Scaled from the marginal per-image costs above: one `salcli explain` process on one machine like this "
            "one. On a GPU the model's time per image shrinks by one to two orders of magnitude; what the CPU does "
            "per image (decoding, overlays, encoding, writing: the non-model column) does not, and a process then "
            "runs at about the rate of its non-model work (the last column), so GPU-hours for one process per GPU are "
            "about the non-model hours unless the model time on the GPU is larger. Decoding moves to up to 4 worker "
            "processes on CUDA; render, encode and write stay on the 2 writer threads.", "",
            "| model | format | hours of this machine | non-model hours | images/s if the model were free | storage "
            "| files |", "|---|---|---|---|---|---|---|"]
    for model, m in models.items():
        for label, r in m["formats"].items():
            rest = non_model(r, m["stages"]) if r["marginal_images_per_second"] else None
            hours = r["marginal_ms_per_image"] * SCALE / 3.6e6 if r["marginal_images_per_second"] else None
            out.append(f"| {short(model)} | `{label}` | {num(hours, '{:,.0f}')} | "
                       f"{num(rest and rest * SCALE / 3.6e6, '{:,.0f}')} | {num(rest and 1000 / rest, '{:,.0f}')} | "
                       f"{r['bytes_per_image'] * SCALE / 1e12:.2f} TB | {r['files_per_1e8']:,} |")
    out += ["", "n/a: the figure it needs came out at or below zero (the difference of two runs' times drowned in the "
            "machine's noise); run again on a quiet machine, or with more images."]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000, help="images for the builtin model (default 2000)")
    ap.add_argument("--images-resnet", type=int, default=64, help="images for resnet18 (default 64)")
    ap.add_argument("--repeat", type=int, default=2, help="rounds of every run; figures are medians (default 2)")
    ap.add_argument("--stage-images", type=int, default=512,
                    help="images of the step-by-step timing, at most (default 512)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-scaling", action="store_true", help="skip the --workers / writer-thread runs")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results.json",
                    help="store the figures under the key 'formats' of this JSON file (other keys kept)")
    ap.add_argument("--markdown", type=Path, default=Path("/tmp/bench_formats.md"),
                    help="write the BENCHMARKS.md section here too")
    args = ap.parse_args()
    if args.images < 2 or args.images_resnet < 2 or args.repeat < 1:
        ap.error("--images and --images-resnet must be at least 2, --repeat at least 1")
    small, small_resnet = max(1, args.images // 4), max(1, args.images_resnet // 4)
    res: dict = {"config": {"images": args.images, "images_small": small, "images_resnet": args.images_resnet,
                            "images_resnet_small": small_resnet, "repeat": args.repeat, "device": args.device,
                            "machine": machine(), "date": time.strftime("%Y-%m-%d"),
                            "command": ".venv/bin/python benchmarks/bench_formats.py " + " ".join(sys.argv[1:])},
                 "models": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-formats-") as tmp:
        work = Path(tmp)
        for model, n, k, make in ((BUILTIN, args.images, small, fashion_images),
                                  (RESNET, args.images_resnet, small_resnet, photo_images)):
            name = model.replace(":", "-")
            folder, few = make(work / name, n), make(work / f"{name}-first-{k}", k)  # the same first k images
            print(f"{model}: {n} images", file=sys.stderr, flush=True)
            res["models"][model] = {"images": n, "stages": stages(folder, work, model, args.device, args.stage_images),
                                    "formats": formats(folder, few, work, model, n, k, args.repeat, args.device)}
        if not args.no_scaling:
            res["scaling"] = scaling(work / BUILTIN.replace(":", "-"), work, args.images, args.repeat, args.device)
    res["config"]["seconds"] = round(time.perf_counter() - started, 1)
    text = markdown(res)
    print(text)
    args.markdown.write_text(text, encoding="utf-8")
    old = json.loads(args.json.read_text()) if args.json.exists() else {}
    old["formats"] = res
    args.json.write_text(json.dumps(old, indent=2, default=float))
    print(f"[{res['config']['seconds']:.0f} s; markdown in {args.markdown}, figures in {args.json} under 'formats']",
          file=sys.stderr)


if __name__ == "__main__":
    main()
