"""salcli's speed figures, measured as ratios in one run on one machine (issue 5's targets).

    .venv/bin/pip install -e '.[test]'                       # the peers (captum, grad-cam) are test extras
    .venv/bin/python benchmarks/bench.py                     # everything, about 15 minutes on 2 CPU cores
    .venv/bin/python benchmarks/bench.py --only limit,compute --write BENCHMARKS.md

Sections (``--only``): limit, compute, pipeline, peers, passes, startup, memory, gpu. Every section prints a
markdown table; ``--write FILE`` writes them all with the machine and versions. Nothing is a timed test: the
figures are ratios measured side by side in this process, on the same model, images and device.

The model is torchvision's ResNet-50 at 224² in fp32 with random weights (nothing is downloaded), saved to a
state-dict file that salcli and the peers both load. Random weights cost exactly what trained ones cost.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_name  # benchmarks/machine.py, beside this script

import numpy as np
import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from salcli import fastpath, images, render  # noqa: E402
from salcli.config import Preprocess, build_config  # noqa: E402
from salcli.outputs import PNG_COMPRESS_LEVEL  # noqa: E402

PRE = Preprocess(resize=232, crop=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
SECTIONS = ("limit", "compute", "pipeline", "peers", "passes", "startup", "memory", "gpu")
RESULTS: dict[str, dict] = {}
TABLES: list[str] = []


def table(title: str, head: list[str], rows: list[list]) -> None:
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    text = "\n".join(lines) + "\n"
    TABLES.append(text)
    print(text, flush=True)


def timed(fn, reps: int = 1) -> float:
    """Seconds per call (best of ``reps`` after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


# ---------------------------------------------------------------------------------------------- fixtures
class Bench:
    def __init__(self, work: Path, device: str, arch: str = "resnet50") -> None:
        self.work, self.device, self.arch = work, torch.device(device), arch
        torch.manual_seed(0)
        self.model = getattr(torchvision.models, arch)().eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.to(self.device)
        self.weights = work / f"{arch}.pth"
        torch.save(self.model.state_dict(), self.weights)
        self.photos = sorted((ROOT / "sample_photos").glob("*.jpg"))

    def jpegs(self, n: int, name: str) -> Path:
        """A folder of n real JPEG photos (the sample photos, copied under new names)."""
        folder = self.work / name
        if not folder.exists():
            folder.mkdir()
            for i in range(n):
                shutil.copy(self.photos[i % len(self.photos)], folder / f"img{i:05d}.jpg")
        return folder

    def tensor(self, n: int) -> torch.Tensor:
        xs = [images.normalize(images.prepare(images.decode(self.photos[i % len(self.photos)]), PRE), PRE)
              for i in range(n)]
        return torch.from_numpy(np.stack(xs)).to(self.device)

    def raw_rate(self, model: torch.nn.Module, batch: int, channels_last: bool = False) -> float:
        """Images per second of forward + backward to the input (one gradient pass), no Python around it."""
        x = self.tensor(batch)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        target = torch.zeros(batch, dtype=torch.long, device=self.device)

        def once():
            leaf = x.detach().requires_grad_(True)
            score = model(leaf).gather(1, target.view(-1, 1)).sum()
            torch.autograd.grad(score, leaf)
            self.sync()

        return batch / timed(once, reps=3)

    def forward_rate(self, batch: int) -> float:
        x = self.tensor(batch)

        def once():
            with torch.no_grad():
                self.model(x)
            self.sync()

        return batch / timed(once, reps=3)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def fast(self, precision: str = "fp32") -> fastpath.FastModel:
        example = self.tensor(1)
        return fastpath.prepare(self.model, example, True, precision)

    def method_rate(self, name: str, n: int, params: dict | None = None, optimize: bool = True,
                    precision: str = "fp32", batch: int | None = None, chunk: int | None = None) -> float:
        """Images per second of one method on preloaded tensors (compute only), through the engine the pipeline
        runs (``salcli.Explainer``), with the pipeline's automatic batch and chunk sizes unless given."""
        from salcli.engine import Explainer
        from salcli.resolve import auto_batch

        batch = batch or auto_batch(PRE, self.device)
        engine = Explainer(self.model, [name], params={name: params or {}}, preprocess=PRE, chunk=chunk or "auto",
                           batch_size=batch, precision=precision, optimize=optimize, device=self.device)
        x = self.tensor(n)
        target = torch.cat([engine.forward(x[s:s + batch]).argmax(1) for s in range(0, n, batch)])
        keys = [f"img{i}" for i in range(n)]

        def once():
            for start in range(0, n, batch):
                result = engine(x[start:start + batch], keys[start:start + batch], target[start:start + batch])
                assert not result.failures, result.failures
            self.sync()

        return n / timed(once, reps=3 if n >= 16 else 1)

    def explain(self, folder: Path, out: Path, method: str, params: list[str] = (), **extra) -> float:
        """Seconds for `salcli explain` in this process, model load and writing included."""
        from salcli.pipeline import run

        shutil.rmtree(out, ignore_errors=True)
        cli = {"inputs": (folder,), "out": out, "model": f"torchvision:{self.arch}", "weights": str(self.weights),
               "methods": (method,), "params": list(params), "device": str(self.device), "quiet": True, **extra}
        t0 = time.perf_counter()
        summary = run(build_config(cli))
        seconds = time.perf_counter() - t0
        assert summary.counts.get("error", 0) == 0, summary.errors[:2]
        return seconds


# ---------------------------------------------------------------------------------------------- sections
PASSES = {"vanilla": 1, "smoothgrad": 50, "integrated-gradients": 50}


def section_limit(b: Bench) -> None:
    rows, best = [], (0.0, 0)
    for batch in (1, 2, 4, 8, 16):
        rate = b.raw_rate(b.model, batch)
        rows.append([batch, f"{rate:.2f}"])
        best = max(best, (rate, batch))
    fast = b.fast()
    fast_rate = b.raw_rate(fast.module, best[1], fast.channels_last)
    fwd = b.forward_rate(best[1])
    RESULTS["limit"] = {"rate": best[0], "batch": best[1], "fast_rate": fast_rate, "forward": fwd,
                        "fast_notes": fast.notes}
    rows.append(["best", f"**{best[0]:.2f}** at batch {best[1]}: the limit of one gradient pass"])
    rows.append([f"{best[1]}, fast path", f"{fast_rate:.2f} ({', '.join(fast.notes)}): "
                 f"{fast_rate / best[0]:.2f}x the limit"])
    rows.append([f"{best[1]}, forward only", f"{fwd:.2f}"])
    table(f"The limit: forward + backward to the input, {b.arch} 224² fp32 on {b.device}", ["batch", "images/s"],
          rows)


def fresh_limit(b: Bench) -> float:
    """The limit, measured again at its best batch size: the higher of this and every earlier measure is the
    bar, so a slow moment during the limit section cannot make the methods look closer to the limit."""
    limit = RESULTS["limit"]
    limit["rate"] = max(limit["rate"], b.raw_rate(b.model, limit["batch"]))
    return limit["rate"]


def section_compute(b: Bench) -> None:
    rows = []
    for name, n, params in (("vanilla", 32, {}), ("smoothgrad", 4, {}), ("integrated-gradients", 4, {})):
        limit = fresh_limit(b)
        for label, optimize in (("salcli", True), ("salcli --no-optimize", False)):
            rate = b.method_rate(name, n, params, optimize)
            bar = limit / PASSES[name]
            rows.append([name, label, f"{rate:.3f}", f"{bar:.3f}", f"**{rate / bar:.2f}**", "0.9"])
            RESULTS.setdefault("compute", {})[f"{name}/{label}"] = rate / bar
    full = fresh_limit(b)  # one full backward pass: the raw gradient pass rate
    for label, optimize in (("salcli", True), ("salcli --no-optimize", False)):
        rate = b.method_rate("gradcam", 32, {}, optimize)
        rows.append(["gradcam", label, f"{rate:.3f}", f"{full:.3f} (one full backward)",
                     f"**{rate / full:.2f}**", "> 1"])
        RESULTS.setdefault("compute", {})[f"gradcam/{label}"] = rate / full
    table("Compute near the limit (preloaded tensors through salcli.Explainer, the engine every command runs: its "
          "forward pass for predictions and probabilities included; the pipeline's automatic batch and chunk)",
          ["method", "run", "images/s", "limit images/s", "ratio", "bar"], rows)


def section_pipeline(b: Bench) -> None:
    """The marginal rate between a run of 16 and a run of 64 photos (start-up cancels out), against the
    compute-only rate measured right before them; five such rounds, the median ratio is reported, so a slow
    moment of this shared machine lands on both sides of one ratio instead of between them."""
    small, large = 16, 64
    folder_s, folder_l = b.jpegs(small, f"jpeg{small}"), b.jpegs(large, f"jpeg{large}")
    rounds = []
    for _ in range(5):
        compute = b.method_rate("vanilla", 32)
        t_s = b.explain(folder_s, b.work / "p-small", "vanilla")
        t_l = b.explain(folder_l, b.work / "p-large", "vanilla")
        marginal = (large - small) / (t_l - t_s)
        rounds.append((marginal / compute, compute, marginal))
    ratio, compute, marginal = sorted(rounds)[len(rounds) // 2]
    RESULTS["pipeline"] = ratio
    table("The pipeline hides I/O (vanilla, real JPEGs, the default workers and writer threads)",
          ["what", "images/s"],
          [["compute only (preloaded tensors)", f"{compute:.2f}"],
           [f"salcli explain, marginal rate between {small} and {large} images", f"{marginal:.2f}"],
           ["ratio (bar 0.85), the median of five rounds", f"**{ratio:.2f}** (rounds: "
            f"{', '.join(f'{r[0]:.2f}' for r in rounds)})"]])


def peer_write(out: Path, names: list[str], maps: np.ndarray, pixels: list[np.ndarray]) -> None:
    """What a user script around a peer does: the same .npy and overlay PNG per image, written in turn."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    for name, m, px in zip(names, maps, pixels):
        np.save(out / f"{name}.npy", m.astype(np.float32))
        Image.fromarray(render.overlay(px, m)).save(out / f"{name}.png", compress_level=PNG_COMPRESS_LEVEL)


def peer_run(b: Bench, folder: Path, out: Path, attribute, batch: int = 8) -> float:
    """Seconds for a peer end to end: load the model from the same file, decode, attribute, write."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    model = getattr(torchvision.models, b.arch)()
    model.load_state_dict(torch.load(b.weights, weights_only=True))
    model.eval().to(b.device)
    files = sorted(folder.glob("*.jpg"))
    for start in range(0, len(files), batch):
        part = files[start:start + batch]
        pixels = [images.prepare(images.decode(p), PRE) for p in part]
        x = torch.from_numpy(np.stack([images.normalize(px, PRE) for px in pixels])).to(b.device)
        with torch.no_grad():
            target = model(x).argmax(1)
        maps = attribute(model, x, target).detach().float().cpu().numpy()
        peer_write(out, [p.name for p in part], maps, pixels)
    return time.perf_counter() - t0


def section_peers(b: Bench) -> None:
    import warnings

    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    warnings.filterwarnings("ignore")

    def saliency(model, x, t):
        return Saliency(model).attribute(x, target=t, abs=True).amax(1)

    def ig(model, x, t):
        return IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x) + torch.tensor(
            [-m / s for m, s in zip(PRE.mean, PRE.std)], device=x.device).view(1, 3, 1, 1), target=t, n_steps=50,
            internal_batch_size=32).sum(1)

    def smooth(model, x, t):
        sigma = float(0.15 * (x.max() - x.min()))
        return NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=50, stdevs=sigma,
                                                      nt_samples_batch_size=4, target=t, abs=True).amax(1)

    def gradcam(model, x, t):
        with GradCAM(model=model, target_layers=[model.layer4[-1]]) as cam:
            return torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(i)) for i in t]))

    rows = []
    for name, n, peer, label, bar in (("vanilla", 32, saliency, "Captum Saliency", 1.2),
                                      ("integrated-gradients", 4, ig, "Captum IntegratedGradients (50 steps, "
                                                                       "internal_batch_size 32)", 1.2),
                                      ("smoothgrad", 4, smooth, "Captum NoiseTunnel(Saliency) (50 samples, "
                                                                "nt_samples_batch_size 4)", 1.5),
                                      ("gradcam", 32, gradcam, "pytorch-grad-cam GradCAM (batch 8)", 1.5)):
        folder = b.jpegs(n, f"jpeg{n}")
        peer_run(b, b.jpegs(2, "jpeg2"), b.work / "warm", peer)  # warm-up: lazy initializations
        ours, theirs = float("inf"), float("inf")
        for _ in range(2):  # alternating, each side the best of two runs: a slow moment does not decide the ratio
            ours = min(ours, b.explain(folder, b.work / f"ours-{name}", name))
            theirs = min(theirs, peer_run(b, folder, b.work / f"peer-{name}", peer))
        RESULTS.setdefault("peers", {})[name] = theirs / ours
        rows.append([name, f"{n / ours:.3f}", label, f"{n / theirs:.3f}", f"**{theirs / ours:.2f}x**", f"{bar}x"])
    table("Ahead of the peers, end to end (model load, decoding, attribution, .npy and overlay PNG written; "
          "each side the best of two alternating runs)",
          ["method", "salcli images/s", "peer", "peer images/s", "speed-up", "bar"], rows)


def section_passes(b: Bench) -> None:
    """Target 4: gradient passes to reach a 1% completeness gap, Captum's default rule against salcli's."""
    from captum.attr import IntegratedGradients

    from salcli.models import load_model

    rows = []
    torch.manual_seed(0)
    cases = [("builtin:fashion-mnist", load_model("builtin:fashion-mnist").module, None),
             ("resnet18 224² (random weights)", torchvision.models.resnet18().eval(), PRE)]
    for label, model, pre in cases:
        for p in model.parameters():
            p.requires_grad_(False)
        if pre is None:
            pre = Preprocess(resize=28, crop=28, mean=(0.2860,), std=(0.3530,), channels=1)
            files = sorted((ROOT / "sample_images" / "fashion-mnist").rglob("*.png"))[::3]
        else:
            files = b.photos
        x = torch.from_numpy(np.stack([images.normalize(images.prepare(images.decode(f), pre), pre)
                                       for f in files]))
        mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (pre.mean, pre.std))
        base = ((torch.zeros_like(x) - mean) / std)  # black pixels, normalized: the "black" baseline
        with torch.no_grad():
            target = model(x).argmax(1)
            delta = (model(x) - model(base)).gather(1, target.view(-1, 1)).squeeze(1).double()
        ladder = (4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
        need = [None] * len(files)
        for n in ladder:
            maps = IntegratedGradients(model).attribute(x, baselines=base, target=target, n_steps=n,
                                                        internal_batch_size=64).sum(dim=(1, 2, 3)).double()
            gap = ((maps - delta).abs() / delta.abs()).tolist()
            for i, g in enumerate(gap):
                if need[i] is None and g <= 0.01:
                    need[i] = n
            if all(v is not None for v in need):
                break
        need = [v if v is not None else 1024 for v in need]
        from salcli.engine import Explainer

        engine = Explainer(model, ["integrated-gradients"], preprocess=pre,
                           params={"integrated-gradients": {"rule": "adaptive", "tolerance": 0.01}})
        extras = engine(x, [f.name for f in files], target).extras["integrated-gradients"]
        ours = extras["ig_steps"]
        assert max(extras["completeness_gap"]) <= 0.01
        captum_each, captum_one = sum(need), max(need) * len(files)
        RESULTS.setdefault("passes", {})[label] = {"captum_per_image": need, "ours": ours}
        rows.append([label, len(files), f"{captum_one} ({max(need)} steps for every image)",
                     f"{captum_each} (each image's own smallest step count on the ladder)",
                     f"{sum(ours) + 0} ({min(ours)}-{max(ours)} per image)",
                     f"**{sum(ours) / captum_one:.2f}** / {sum(ours) / captum_each:.2f}"])
    table("Fewer passes for the same answer: gradient passes to a 1% completeness gap (black baseline). Captum: "
          "Gauss-Legendre (its default), smallest n_steps on the ladder 4, 8, 16, 24, 32, 48, 64, 96, 128, ... "
          "that brings the gap to 1%, plus 2 forwards; salcli: `rule=adaptive, tolerance=0.01`, no extra forwards",
          ["model", "images", "Captum, one n_steps for the run", "Captum, best n_steps per image (oracle)",
           "salcli adaptive", "ratio (bar 0.5)"], rows)


def section_startup(b: Bench) -> None:
    exe = str(Path(sys.executable).with_name("salcli"))
    helps = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run([exe, "--help"], stdout=subprocess.DEVNULL, check=True)
        helps.append(time.perf_counter() - t0)
    one = b.work / "one"
    one.mkdir(exist_ok=True)
    shutil.copy(next((ROOT / "sample_images" / "fashion-mnist" / "Bag").glob("*.png")), one / "bag.png")
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run([exe, "explain", str(one), "-o", str(b.work / "one-out"), "--overwrite", "-q"], check=True)
        runs.append(time.perf_counter() - t0)
    RESULTS["startup"] = {"help": statistics.median(helps), "one_image": statistics.median(runs)}
    table("Start-up (median wall time of a fresh process)", ["command", "seconds", "bar"],
          [["salcli --help", f"**{statistics.median(helps):.2f}**", "0.3"],
           ["salcli explain one.png -o out (builtin model, vanilla)", f"**{statistics.median(runs):.2f}**", "3"]])


def rss_of_tree(pid: int) -> tuple[int, int]:
    """(RSS of the process, RSS of it and its children) in bytes, from /proc."""
    def rss(p: int) -> int:
        try:
            with open(f"/proc/{p}/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return 0

    def children(p: int) -> list[int]:
        try:
            with open(f"/proc/{p}/task/{p}/children") as fh:
                kids = [int(c) for c in fh.read().split()]
        except OSError:
            return []
        return kids + [g for k in kids for g in children(k)]

    own = rss(pid)
    return own, own + sum(rss(c) for c in children(pid))


def section_memory(b: Bench, count: int = 10_000) -> None:
    from PIL import Image

    folder = b.work / "small"
    if not folder.exists():
        rng = np.random.default_rng(0)
        for i in range(count):
            sub = folder / f"{i // 1000:02d}"
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(sub / f"{i:05d}.png")
    exe = str(Path(sys.executable).with_name("salcli"))
    out = b.work / "small-out"
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.Popen([exe, "explain", str(folder), "-o", str(out), "-q"])
    samples: list[tuple[float, int, int]] = []
    t0 = time.perf_counter()
    while proc.poll() is None:
        own, tree = rss_of_tree(proc.pid)
        if own:
            samples.append((time.perf_counter() - t0, own, tree))
        time.sleep(0.25)
    assert proc.returncode == 0
    total = samples[-1][0]
    warm = [s for s in samples if s[0] >= 0.2 * total]  # after warm-up: the first fifth of the run

    def median_rss(lo: float, hi: float) -> float:
        return statistics.median(s[1] for s in samples if lo * total <= s[0] <= hi * total) / 2**20

    # growth with the image count: the RSS over the last tenth of the run against the RSS just after warm-up
    # (medians, so one sample taken while a batch is in flight does not decide it); the largest excursion too
    growth = median_rss(0.9, 1.0) - median_rss(0.2, 0.3)
    excursion = (max(s[1] for s in warm) - min(s[1] for s in warm)) / 2**20
    peak_tree = max(s[2] for s in samples) / 2**20
    quarters = [min(warm, key=lambda s, q=q: abs(s[0] - q * total))[1] / 2**20 for q in (0.25, 0.5, 0.75, 1.0)]
    print("main RSS (MB) at 25/50/75/100% of the run:", [round(q) for q in quarters], file=sys.stderr)
    RESULTS["memory"] = {"growth_mb": growth, "excursion_mb": excursion, "quarters_mb": quarters, "peak_main_mb": max(s[1] for s in samples) / 2**20,
                         "peak_tree_mb": peak_tree, "seconds": total}
    table(f"Memory over {count:,} small images (builtin model, vanilla; RSS sampled every 0.25 s)",
          ["what", "value", "bar"],
          [["run time", f"{total:.0f} s ({count / total:.0f} images/s with writing)", ""],
           ["main process RSS growth: median over the last 10% of the run minus median over 20-30%",
            f"**{growth:.1f} MB**", "< 50 MB"],
           ["largest RSS excursion after warm-up (max minus min)", f"{excursion:.1f} MB", ""],
           ["peak RSS, main process", f"{max(s[1] for s in samples) / 2**20:.0f} MB", ""],
           ["peak RSS, main process and decoding workers", f"{peak_tree:.0f} MB", ""]])


def section_gpu(b: Bench) -> None:
    if not torch.cuda.is_available():
        table("GPU", ["what", "value"], [["CUDA", "not available on this machine: not measured"]])
        return
    rows = []
    for arch in ("resnet50", "vit_b_16"):
        g = Bench(b.work, "cuda", arch)
        limit = max(g.raw_rate(g.model, batch) for batch in (16, 32, 64))
        for precision in ("fp32", "bf16"):
            for name in ("vanilla", "smoothgrad", "integrated-gradients", "gradcam"):
                n = 64 if name in ("vanilla", "gradcam") else 16
                rate = g.method_rate(name, n, precision=precision, batch=64, chunk=512)
                bar = limit / PASSES.get(name, 1)
                rows.append([arch, precision, name, f"{rate:.1f}", f"{rate / bar:.2f}"])
                RESULTS.setdefault("gpu", {})[f"{arch}/{precision}/{name}"] = rate / bar
        x = g.tensor(8)
        target = torch.zeros(8, dtype=torch.long, device="cuda")
        for name in ("vanilla", "gradcam"):
            from salcli.engine import Explainer

            keys = [str(i) for i in range(8)]
            fp32, bf16 = (Explainer(g.model, [name], preprocess=PRE, precision=p, device="cuda")(x, keys, target)
                          .maps[name] for p in ("fp32", "bf16"))
            rho = [float(np.corrcoef(np.argsort(np.argsort(p.flatten().cpu().numpy())),
                                     np.argsort(np.argsort(q.float().flatten().cpu().numpy())))[0, 1])
                   for p, q in zip(fp32, bf16)]
            rows.append([arch, "bf16 vs fp32", name, "Spearman", f"{min(rho):.3f} (min of 8)"])
            RESULTS.setdefault("gpu", {})[f"{arch}/spearman/{name}"] = min(rho)
    table("GPU (images/s and ratio to the fp32 limit)", ["model", "precision", "method", "images/s", "ratio"], rows)


def targets() -> str:
    """The issue's targets, each figure of this run next to its bar."""
    rows = []

    def add(number: int, what: str, bar: str, figures: list[float], ok: bool, fmt: str = "{:.2f}") -> None:
        rows.append([number, what, bar, " / ".join(fmt.format(f) for f in figures), "met" if ok else "**missed**"])

    c, p = RESULTS.get("compute"), RESULTS.get("peers")
    if c:
        v = [c[f"{m}/salcli"] for m in PASSES]
        add(1, "vanilla / smoothgrad-50 / IG-50 compute against the limit (resnet50 224² fp32, CPU)", "≥ 0.9", v,
            min(v) >= 0.9)
        add(1, "Grad-CAM against one full forward + backward", "> 1", [c["gradcam/salcli"]], c["gradcam/salcli"] > 1,
            "{:.2f}×")
    if "pipeline" in RESULTS:
        add(2, "`salcli explain` marginal rate on real JPEGs / compute-only rate", "≥ 0.85", [RESULTS["pipeline"]],
            RESULTS["pipeline"] >= 0.85)
    if p:
        v = [p["vanilla"], p["integrated-gradients"]]
        add(3, "end to end vs Captum Saliency / IntegratedGradients", "≥ 1.2×", v, min(v) >= 1.2, "{:.2f}×")
        add(3, "end to end vs Captum NoiseTunnel SmoothGrad", "≥ 1.5×", [p["smoothgrad"]], p["smoothgrad"] >= 1.5,
            "{:.2f}×")
        add(3, "end to end vs pytorch-grad-cam GradCAM", "≥ 1.5×", [p["gradcam"]], p["gradcam"] >= 1.5, "{:.2f}×")
    if "passes" in RESULTS:
        v = [sum(r["ours"]) / (max(r["captum_per_image"]) * len(r["ours"])) for r in RESULTS["passes"].values()]
        add(4, f"IG passes to a 1% completeness gap, salcli adaptive / Captum's default rule with one n_steps "
            f"({' / '.join(RESULTS['passes'])})", "≤ 0.5", v, max(v) <= 0.5)
    g = RESULTS.get("gpu")
    if g:
        v = [g["resnet50/fp32/smoothgrad"], g["resnet50/bf16/smoothgrad"]]
        add(5, "GPU smoothgrad-50 against the fp32 limit, resnet50 fp32 / bf16", "≥ 0.8", v, max(v) >= 0.8)
    elif "gpu" in RESULTS.get("sections", []):
        rows.append([5, "GPU figures", "", "not measured: no CUDA device in this run", "**not measured**"])
    s = RESULTS.get("startup")
    if s:
        add(6, "`salcli --help`, seconds", "< 0.3", [s["help"]], s["help"] < 0.3)
        add(6, "`salcli explain` of one image with the builtin model, seconds", "< 3", [s["one_image"]],
            s["one_image"] < 3)
    m = RESULTS.get("memory")
    if m:
        add(6, "main-process RSS growth over 10,000 small images after warm-up, MB", "< 50", [m["growth_mb"]],
            m["growth_mb"] < 50, "{:.1f}")
    if not rows:
        return ""
    head = ["#", "target", "bar", "measured", ""]
    lines = ["## Targets (issue 5), this run", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def write_report(path: Path, device: str) -> None:
    """The run's header, targets and tables between the markers of ``path``; text outside them is kept."""
    body = f"{BEGIN}\n{header(device)}\n{targets()}\n" + "\n".join(TABLES) + f"\n{END}\n"
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if BEGIN in old and END in old:
        rest = old[old.index(END) + len(END):].lstrip("\n")
        body = old[:old.index(BEGIN)] + body + ("\n" + rest if rest else "")
    path.write_text(body, encoding="utf-8")


def header(device: str) -> str:
    import captum
    import PIL

    try:
        import pytorch_grad_cam  # noqa: F401
        from importlib.metadata import version

        gc = version("grad-cam")
    except Exception:  # noqa: BLE001
        gc = "?"
    cpu = cpu_name()
    return (f"- Machine: {cpu}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}, "
            f"device {device}\n- Versions: Python {sys.version.split()[0]}, torch {torch.__version__}, torchvision "
            f"{torchvision.__version__}, Pillow {PIL.__version__}, captum {captum.__version__}, grad-cam {gc}\n"
            f"- Command: `.venv/bin/python benchmarks/bench.py {' '.join(sys.argv[1:])}`\n"
            f"- Date: {time.strftime('%Y-%m-%d')}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--write", type=Path, help="write the tables (with machine and versions) to this file")
    ap.add_argument("--json", type=Path, help="write the raw figures as JSON")
    args = ap.parse_args()
    chosen = args.only.split(",")
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        sys.exit(f"unknown sections: {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    RESULTS["sections"] = chosen
    with tempfile.TemporaryDirectory() as tmp:
        b = Bench(Path(tmp), args.device)
        if "limit" not in chosen and {"compute"} & set(chosen):
            chosen.insert(0, "limit")
        for name in SECTIONS:
            if name in chosen:
                t0 = time.perf_counter()
                globals()[f"section_{name}"](b)
                print(f"[{name}: {time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps(RESULTS, indent=2, default=float))
    if args.write:
        write_report(args.write, args.device)


if __name__ == "__main__":
    main()
