"""The command line. Turns arguments into a RunConfig, runs, and maps errors to exit codes.

Nothing here imports torch at module level: ``salcli --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from . import __version__, sources
from .config import build_config
from .errors import SalcliError, word


app = typer.Typer(
    name="salcli",
    add_completion=True,  # --install-completion / --show-completion: bash, zsh, fish, PowerShell
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="Explain what image classifiers look at: saliency maps, overlays and a manifest for folders of images.\n\n"
         "Example: `salcli explain sample_images -o out` (builtin Fashion-MNIST model, vanilla gradient).",
)


def _stderr():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True, markup=False)  # markup only where asked for


# How the command line spells a setting that a library error names (errors.setting); the rest are --name.
FLAGS = {"out": "-o/--out", "config_file": "--config", "methods": "-m/--method", "params": "-p/--param",
         "method": "-m/--method", "overlays": "--no-overlays"}


def _fail(exc: SalcliError) -> typer.Exit:
    from rich.markup import escape

    kind = {2: "usage error", 3: "model error", 4: "gate failed"}.get(exc.exit_code, "error")
    _stderr().print(f"[bold red]salcli: {kind}:[/] {escape(exc.render(FLAGS))}", markup=True)
    return typer.Exit(exc.exit_code)


def _data_only_stdout():
    """Standard output carries only the command's data (the summary, ``--json``): anything a library prints
    while the work runs (torch.hub's "Downloading:" line, a model's own print calls) goes to stderr."""
    import contextlib

    return contextlib.redirect_stdout(sys.stderr)


class TerminalReporter:
    """Progress bar on a terminal only; notes on stderr unless quiet; with quiet, Python warnings are silenced
    too (``-q`` prints nothing but errors)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar = None
        if quiet:
            import warnings

            warnings.simplefilter("ignore")

    def start(self, total: int) -> None:
        if not self.quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True, leave=False)

    def advance(self, n: int) -> None:
        if self.bar is not None and n:
            self.bar.update(n)

    def note(self, message: str) -> None:
        if not self.quiet:
            from rich.markup import escape

            _stderr().print(f"[yellow]note:[/] {escape(word(message, FLAGS))}", markup=True)

    def warn(self, message: str) -> None:
        """Something that makes the results mean less than the user may think (random weights): always shown."""
        from rich.markup import escape

        _stderr().print(f"[bold red]warning:[/] {escape(word(message, FLAGS))}", markup=True)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"salcli {__version__}")
        raise typer.Exit(0)


# Options shared by every command that loads a model (one definition, so their help never drifts apart).
MODEL_HELP = ", ".join(dict.fromkeys(form for source in sources.describe() for form in source["forms"])) + "."
CONFIG_OPT = typer.Option(None, "--config", help="A TOML preset (see configs/).")
WEIGHTS_KEY_OPT = typer.Option(None, "--weights-key", help="The entry of a checkpoint dict that holds the "
                               "weights, e.g. state_dict_ema (dots go down levels). [default: found: state_dict, "
                               "model, ...]", show_default=False)
RESIZE_OPT = typer.Option(None, "--resize", help="Resize the short side to N pixels.")
CROP_OPT = typer.Option(None, "--crop", help="Center-crop N x N pixels after resizing.")
MEAN_OPT = typer.Option(None, "--mean", help="Per-channel mean, e.g. 0.485,0.456,0.406.")
STD_OPT = typer.Option(None, "--std", help="Per-channel std, e.g. 0.229,0.224,0.225.")
CHANNELS_OPT = typer.Option(None, "--channels", help="1 (grayscale) or 3 (RGB).")
DEVICE_OPT = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N or mps. [default: auto]",
                          show_default=False)


# How overlays are drawn: the same options in `explain` and `render` (render's defaults are the run's own).
def _display_opts(defaults: dict[str, str]) -> tuple:
    return (
        typer.Option(None, "--colormap", help="A matplotlib colormap for maps shown by magnitude (signed maps with "
                     f"--sign all use blue-white-red). [default: {defaults['colormap']}]", show_default=False),
        typer.Option(None, "--alpha", help="Opacity of the heatmap over the image (for signed maps: of the "
                     f"strongest values). [default: {defaults['alpha']}]", show_default=False),
        typer.Option(None, "--overlay-on", help="Draw overlays on the original picture (the map mapped back "
                     "through crop and resize; the cut-away border greyed) or on the model's input crop: original "
                     f"or input. [default: {defaults['overlay_on']}]", show_default=False),
        typer.Option(None, "--overlay-size", help="Most pixels on an overlay's long side. "
                     f"[default: {defaults['overlay_size']}]", show_default=False),
        typer.Option(None, "--sign", help="How signed maps (integrated-gradients, input-x-gradient, occlusion, ...) "
                     "are drawn: all (blue < 0 < red), positive, negative or absolute. Maps that are >= 0 are always "
                     f"drawn by magnitude. [default: {defaults['sign']}]", show_default=False),
        typer.Option(None, "--scale", help="Colour scale: image (each map its own), run (one per method over the "
                     "run's maps, to compare images), or a number (the map value that saturates). "
                     f"[default: {defaults['scale']}]", show_default=False),
    )


COLORMAP_OPT, ALPHA_OPT, OVERLAY_ON_OPT, OVERLAY_SIZE_OPT, SIGN_OPT, SCALE_OPT = _display_opts(
    {"colormap": "jet", "alpha": "0.5", "overlay_on": "original", "overlay_size": "512", "sign": "all",
     "scale": "image"})


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit."),
         debug: bool = typer.Option(False, "--debug", help="Print the traceback of an unexpected error (exit 70) "
                                    "instead of one line; SALCLI_DEBUG=1 does the same.")) -> None:
    """salcli: saliency maps for image classifiers, from the command line."""
    import warnings

    # Deprecation notices of torch and other libraries are for the authors of code that calls them, which a
    # salcli user cannot change; the project's own tests see them.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


@app.command(epilog="Examples:\n\n"
             "`salcli explain sample_images -o out`\n\n"
             "`salcli explain photos/ -o out --model torchvision:resnet50 --weights resnet50.safetensors -m vanilla`\n\n"
             "`salcli explain imgs/ -o out --model net.py:build --weights ckpt.pt --target 3 --json`")
def explain(
    inputs: Optional[List[Path]] = typer.Argument(None, help="Image files and/or folders (searched recursively); "
                                                  "or give --files-from.", show_default=False),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (maps, overlays, manifest.jsonl, run.json)."),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP + " [default: builtin:fashion-mnist]",
                                        show_default=False),
    weights: Optional[str] = typer.Option(None, "--weights", help="Weights: safetensors, or a state dict or "
                                          "checkpoint written by torch.save (any extension; read weights-only), "
                                          "or DEFAULT (torchvision's published weights)."),
    weights_key: Optional[str] = WEIGHTS_KEY_OPT,
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Allow files that run pickled "
                                          "code (whole pickled modules, .pt2). Only for files you trust."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="A TOML preset (see configs/); "
                                               "command-line options override it."),
    resize: Optional[int] = RESIZE_OPT,
    crop: Optional[int] = CROP_OPT,
    mean: Optional[str] = MEAN_OPT,
    std: Optional[str] = STD_OPT,
    channels: Optional[int] = CHANNELS_OPT,
    labels: Optional[Path] = typer.Option(None, "--labels", help="Class names, one per line."),
    method: Optional[List[str]] = typer.Option(None, "-m", "--method", help="Method name, repeatable or "
                                               "comma-separated, in any case (GradCAM, grad-cam); all: every "
                                               "method (see `salcli methods`). [default: vanilla]",
                                               show_default=False),
    param: Optional[List[str]] = typer.Option(None, "-p", "--param", help="METHOD.KEY=VALUE, repeatable."),
    target: Optional[str] = typer.Option(None, "--target", help="pred (top-1), a class index, or a label. "
                                         "[default: pred]", show_default=False),
    layer: Optional[str] = typer.Option(None, "--layer", help="Dotted module name for layer methods "
                                        "(default: found automatically)."),
    device: Optional[str] = DEVICE_OPT,
    batch_size: Optional[str] = typer.Option(None, "--batch-size", help="Images per batch, or auto. "
                                             "[default: auto]", show_default=False),
    chunk: Optional[str] = typer.Option(None, "--chunk", help="Most model inputs per forward pass for methods "
                                        "with inner samples (noise samples, steps, masks), or auto: about 1.2 "
                                        "million input values per pass on the CPU; on CUDA 256 to start, doubled "
                                        "while memory allows. [default: auto]", show_default=False),
    workers: Optional[int] = typer.Option(None, "--workers", help="Image-decoding worker processes "
                                          "(default: up to 4 on a GPU; 0 on the CPU, where the model "
                                          "uses every core, or for one batch)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32, or bf16 (autocast; faster on "
                                            "recent GPUs, maps differ slightly). [default: fp32]",
                                            show_default=False),
    optimize: Optional[bool] = typer.Option(None, "--optimize/--no-optimize", help="Fold BatchNorm into "
                                            "convolutions and use channels_last (same maps up to float "
                                            "rounding). [default: optimize]", show_default=False),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of every random draw. [default: 0]",
                                       show_default=False),
    colormap: Optional[str] = COLORMAP_OPT,
    alpha: Optional[float] = ALPHA_OPT,
    overlay_on: Optional[str] = OVERLAY_ON_OPT,
    overlay_size: Optional[int] = OVERLAY_SIZE_OPT,
    sign: Optional[str] = SIGN_OPT,
    scale: Optional[str] = SCALE_OPT,
    output_format: Optional[str] = typer.Option(None, "--format", help="How maps and overlays are stored: files "
                                                "(a .npy and a .png per image and method), parquet (rows in "
                                                "OUT/data/*.parquet, needs salcli[parquet]) or webdataset (tar "
                                                "shards in OUT/wds/). [default: files]", show_default=False),
    no_overlays: bool = typer.Option(False, "--no-overlays", help="Store maps only: no overlay is drawn or "
                                     "stored (nor the report's copy of each picture)."),
    map_dtype: Optional[str] = typer.Option(None, "--map-dtype", help="float32, or float16 (half the bytes; read "
                                            "back as float32). [default: float32]", show_default=False),
    layer_maps: Optional[str] = typer.Option(None, "--layer-maps", help="input: store the CAM family's maps "
                                             "resized to the model input; native: at their layer's size (7x7 "
                                             "for a ResNet), with the upsampling in the record; readers resize "
                                             "them. [default: native with --format parquet or webdataset, else "
                                             "input]", show_default=False),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo images whose outputs already exist."),
    prune: bool = typer.Option(False, "--prune", help="Remove the outputs and manifest records of images that "
                               "are no longer among the inputs (deleted or moved since an earlier run into OUT)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="I/N: take the I-th (from 0) of N disjoint "
                                        "slices, assigned by a hash of each image's relative path. Default: "
                                        "torchrun's RANK/WORLD_SIZE, an srun step or a Slurm array's position "
                                        "(printed on stderr)."),
    no_shard: bool = typer.Option(False, "--no-shard", help="Ignore torchrun's and Slurm's variables: this "
                                  "process takes every image."),
    root: Optional[Path] = typer.Option(None, "--root", help="Folder the image keys (output names, seeds, shards) "
                                        "are relative to. [default: the deepest folder holding every input]",
                                        show_default=False),
    max_failures: Optional[str] = typer.Option(None, "--max-failures", help="Failed (image, method) records "
                                               "allowed before exit 1: a count, or a percentage such as 5%. "
                                               "[default: 0]", show_default=False),
    files_from: Optional[Path] = typer.Option(None, "--files-from", help="Read the inputs from LIST (- for "
                                              "stdin), one path per line (blank lines and # comments ignored), "
                                              "instead of walking INPUT folders.", metavar="LIST"),
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as one JSON object on stdout."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print nothing but errors."),
) -> None:
    """Explain every image with each method: write OUT/METHOD/IMAGE.npy and .png, manifest.jsonl, run.json.

    Exit codes: 0 all explained or skipped (or no more failures than --max-failures); 1 some images failed (the
    manifest says which); 2 usage error; 3 model could not be loaded; 130/143/129 interrupted by SIGINT/SIGTERM/
    SIGHUP (rerun the same command to resume).
    """
    cli = {"inputs": inputs, "out": out, "model": model, "weights": weights, "weights_key": weights_key,
           "trust_checkpoint": trust_checkpoint or None, "config_file": config_file, "resize": resize,
           "crop": crop, "mean": mean, "std": std, "channels": channels, "labels": labels, "methods": method,
           "params": param, "target": target, "layer": layer, "device": device, "batch_size": batch_size,
           "chunk": chunk, "workers": workers, "precision": precision, "optimize": optimize, "seed": seed,
           "colormap": colormap, "alpha": alpha, "overlay_on": overlay_on, "overlay_size": overlay_size,
           "sign": sign, "scale": scale, "format": output_format, "overlays": False if no_overlays else None,
           "map_dtype": map_dtype, "layer_maps": layer_maps,
           "overwrite": overwrite or None, "prune": prune or None, "shard": shard, "no_shard": no_shard or None,
           "files_from": files_from, "root": root, "max_failures": max_failures, "json": as_json or None, "quiet": quiet or None}
    try:
        config = build_config(cli)
        from .pipeline import run

        with _data_only_stdout():
            summary = run(config, TerminalReporter(config.quiet), argv=sys.argv)
    except SalcliError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt as exc:  # Ctrl-C: 130; SIGTERM: 143; SIGHUP: 129 (128 + the signal)
        _stderr().print("salcli: interrupted; what was written is whole and journaled. Run the same command to "
                        "resume.")
        raise typer.Exit(128 + getattr(exc, "signum", 2)) from None
    from rich.markup import escape

    console = _stderr()
    shown = 5  # the first few failures, with their messages; the manifest holds every one
    for err in summary.errors[:shown]:
        console.print(f"[red]failed:[/] {escape(str(err['image']))} ({err['method']}): {escape(str(err['error']))}",
                      markup=True)
    if summary.errors:
        where = Path(summary.out) / ("manifest.jsonl" if config.shard is None else "parts")
        more = f"{len(summary.errors) - shown} more; " if len(summary.errors) > shown else ""
        console.print(f"[red]failed:[/] {more}see {escape(str(where))} (status error) for every failure",
                      markup=True)
    if as_json:
        typer.echo(json.dumps({"methods": list(config.methods), **summary.to_json()}))  # add fields, never rename
    elif not config.quiet:
        c, n, m = summary.counts, summary.images, len(config.methods)
        written = c.get("ok", 0)
        console.print(escape(f"{n} image{'s' * (n != 1)} x {m} method{'s' * (m != 1)}: {written} "
                             f"map{'s' * (written != 1)} written, {c.get('skipped', 0)} skipped, {c.get('error', 0)} "
                             f"failed in {summary.seconds:.1f} s on {summary.device} -> {summary.out}"), markup=True)
        _print_changes(console, summary.changes, summary.gone)
    raise typer.Exit(summary.exit_code)


def _print_changes(console, changes: dict[str, int], gone: list[str]) -> None:
    """What a rerun into the same OUT did, in images: only when it was not a first run."""
    from rich.markup import escape

    if not any(changes.get(k) for k in ("redone", "unchanged", "gone")):
        return
    said = ", ".join(f"{changes[k]} {k}" for k in ("new", "redone", "unchanged", "gone", "pruned")
                     if changes.get(k) or k in ("new", "redone", "unchanged"))
    console.print(escape(f"images since the last run into OUT: {said}"), markup=True)
    if changes.get("gone") and not changes.get("pruned"):
        more = f" and {changes['gone'] - len(gone)} more" if changes["gone"] > len(gone) else ""
        console.print(escape(f"gone (in OUT, no longer among the inputs): {', '.join(gone)}{more}; their outputs "
                             "are kept: --prune removes them"), markup=True)


# Model options: the same names and meaning in every command that loads a model.
def _model_overrides(model, weights, weights_key, trust_checkpoint, config_file, resize, crop, mean, std,
                     channels):
    return {"model": model, "weights": weights, "weights_key": weights_key,
            "trust_checkpoint": trust_checkpoint or None,
            "config_file": config_file, "resize": resize, "crop": crop, "mean": mean, "std": std,
            "channels": channels}


def with_gates(command: str):
    """Add one gate option per gated metric of ``command`` (from the measures registry) to a command; the
    function receives them as ``gates={keyword: bar or None}``."""
    import functools
    import inspect

    from . import measures

    def wrap(fn):
        signature = inspect.signature(fn)
        extra = [inspect.Parameter(m.gate_option, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[float],
                                   default=typer.Option(None, m.gate_flag, help=f"Gate: exit 4 when {m.name} is "
                                                        f"{'below' if m.better == measures.HIGHER else 'above'} "
                                                        f"this ({m.help}).", show_default=False))
                 for m in measures.gated(command)]
        names = [p.gate_option for p in measures.gated(command)]

        @functools.wraps(fn)
        def command_fn(*args, **kwargs):
            return fn(*args, gates={n: kwargs.pop(n) for n in names}, **kwargs)

        params = [p for p in signature.parameters.values() if p.name != "gates"]
        command_fn.__signature__ = signature.replace(parameters=params + extra)
        return command_fn

    return wrap


def _print_gate_failures(failures: list[str]) -> None:
    from rich.markup import escape

    for line in failures:
        _stderr().print(f"[bold red]gate failed:[/] {escape(word(line, FLAGS))}", markup=True)


def _print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    """A table of one row per method. No cell is ever cut: the first column (the method, as the user types it)
    repeats in as many tables as the other columns need to fit the terminal; a log file gets one wide table."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    cells = []
    for row in rows:
        line = []
        for col in columns:
            value = row.get(col)
            mark = ""
            if isinstance(row.get("beats_random"), dict) and col in row["beats_random"]:
                mark = " ✓" if row["beats_random"][col] else " ✗"
            line.append("-" if value is None else (f"{value:.3f}{mark}" if isinstance(value, float) else str(value)))
        cells.append(line)
    console = Console(stderr=True)
    if not console.is_terminal:
        console.width = max(console.width, 40 + 12 * len(columns))  # a log file gets whole headers and numbers
    headers = [col.replace("_", " ") for col in columns]  # headers wrap between words
    widths = [max([len(w) for w in h.split()] + [len(line[i]) for line in cells]) for i, h in enumerate(headers)]
    def fits(part: list[int]) -> bool:  # a column takes its width, 2 of padding and 1 of border; + the left border
        return widths[0] + 4 + sum(widths[i] + 3 for i in part) <= console.width

    parts: list[list[int]] = [[]]
    for i in range(1, len(columns)):
        if parts[-1] and not fits(parts[-1] + [i]):
            parts.append([])
        parts[-1].append(i)
    size = -(-(len(columns) - 1) // len(parts))  # as many columns in each part, when they fit
    even = [list(range(1, len(columns)))[k:k + size] for k in range(0, len(columns) - 1, size)] if size else parts
    parts = even if len(even) == len(parts) and all(map(fits, even)) else parts
    for n, part in enumerate(parts):
        table = Table(title=escape(title) if n == 0 else None)
        for i in [0, *part]:
            table.add_column(escape(headers[i]), min_width=widths[i], no_wrap=i == 0)
        for line in cells:
            table.add_row(*[escape(line[i]) for i in [0, *part]])
        console.print(table)


@app.command(epilog="Examples:\n\n"
             "`salcli evaluate out --masks sample_masks`\n\n"
             "`salcli evaluate out -m gradcam --min-pointing-game 0.8 --max-deletion-auc 0.3 --json`")
@with_gates("evaluate")
def evaluate(
    out: Path = typer.Argument(..., help="The output folder of a finished salcli explain run."),
    masks: Optional[Path] = typer.Option(None, "--masks", help="Folder of object masks (PNG, white = object) at "
                                         "the images' relative paths."),
    boxes: Optional[Path] = typer.Option(None, "--boxes", help="Object boxes: CSV (image,x0,y0,x1,y1) or COCO JSON."),
    method: Optional[List[str]] = typer.Option(None, "-m", "--method", help="Evaluate only these methods "
                                               "(repeatable or comma-separated, any case). [default: all of the "
                                               "run's]", show_default=False),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP + " [default: the run's model]",
                                        show_default=False),
    weights: Optional[str] = typer.Option(None, "--weights", help="State dict or DEFAULT [default: the run's]."),
    weights_key: Optional[str] = WEIGHTS_KEY_OPT,
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Allow files that run pickled code; "
                                          "never taken from run.json."),
    config_file: Optional[Path] = CONFIG_OPT,
    resize: Optional[int] = RESIZE_OPT,
    crop: Optional[int] = CROP_OPT,
    mean: Optional[str] = MEAN_OPT,
    std: Optional[str] = STD_OPT,
    channels: Optional[int] = CHANNELS_OPT,
    device: Optional[str] = DEVICE_OPT,
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images per batch."),
    tolerance: Optional[float] = typer.Option(None, "--tolerance", help="Pointing-game tolerance in input pixels "
                                              "[default: 15 px per 224 px of input]", show_default=False),
    top_k: float = typer.Option(0.2, "--top-k", help="Fraction of pixels in the top-k region for IoU."),
    steps: int = typer.Option(32, "--steps", min=1, max=65536, help="Points on the deletion and insertion "
                              "curves."),
    stability: bool = typer.Option(True, "--stability/--no-stability", help="Measure stability (recomputes each "
                                   "map twice: small noise, one-pixel shift)."),
    gates: dict = None,
    as_json: bool = typer.Option(False, "--json", help="Print the table as JSON on stdout."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print nothing but errors and failed gates."),
) -> None:
    """Score a finished run: localization against masks or boxes, faithfulness (deletion/insertion AUC beside a
    random-map baseline), stability. Writes OUT/metrics.jsonl, OUT/evaluation.json and OUT/plots/.

    Exit codes: 0 done and every gate passed; 2 usage error; 3 model could not be loaded; 4 a gate failed.
    """
    try:
        from . import gates as quality, measures
        from .config import build_overrides, check_device, parse_methods
        from .evaluation import EvalOptions, evaluate as run_evaluate, write_results

        if device is not None:
            check_device(device)
        chosen = parse_methods(method, everything=()) if method else ()  # all: every method of the run
        opts = EvalOptions(masks=masks, boxes=boxes, methods=chosen, tolerance=tolerance,
                           top_k=top_k, steps=steps, skip=frozenset() if stability else frozenset({"stability"}),
                           batch_size=batch_size, device=device or "auto")
        overrides, given = build_overrides(_model_overrides(model, weights, weights_key, trust_checkpoint,
                                                            config_file, resize, crop, mean, std, channels))
        with _data_only_stdout():
            summary = run_evaluate(out, opts, overrides, given - {"device"}, TerminalReporter(quiet))
        write_results(out, summary)
        failures = quality.check(summary.rows, gates)
    except SalcliError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps({"methods": summary.rows, "skipped_unannotated": summary.skipped_unannotated,
                               "gates_failed": [word(f, FLAGS) for f in failures]}, default=str))
    elif not quiet:
        shown = [m.name for m in measures.metrics("evaluate")
                 if m.table and any(r.get(m.name) is not None for r in summary.rows)]
        _print_table(f"salcli evaluate {out}", summary.rows, ["method", "images", *shown])
        if summary.skipped_unannotated:
            _stderr().print(f"{summary.skipped_unannotated} image(s) had no annotation and were skipped for "
                            "localization")
    _print_gate_failures(failures)
    raise typer.Exit(4 if failures else 0)


@app.command(epilog="Examples:\n\n"
             "`salcli report out` (writes out/report.html)\n\n"
             "`salcli report out -o out/pages/gallery.html -q`")
def report(
    out: Path = typer.Argument(..., help="The output folder of a salcli explain run."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="The HTML file to write; must lie inside "
                                          "OUT (overlays are linked relatively). [default: OUT/report.html]",
                                          show_default=False),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print nothing but errors."),
) -> None:
    """Write OUT/report.html: a self-contained gallery of the run (settings, failures, one row per image with
    its prediction and each method's overlay, evaluation results when present). No torch, no network.

    Exit codes: 0 written; 2 usage error (no run.json, or an output file outside OUT).
    """
    from . import outputs
    from .errors import UsageError
    from .report import build_report

    dest = output if output is not None else out / "report.html"
    try:
        if not dest.resolve().is_relative_to(out.resolve()) or dest.resolve() == out.resolve():
            raise UsageError(f"the report must be written inside {out} (its images are linked relatively): {dest}")
        html = build_report(out, dest.parent)
        outputs.write_bytes(dest, html.encode("utf-8"))
    except SalcliError as exc:
        raise _fail(exc) from None
    if not quiet:
        _stderr().print(f"wrote {dest}")


R_COLORMAP_OPT, R_ALPHA_OPT, R_OVERLAY_ON_OPT, R_OVERLAY_SIZE_OPT, R_SIGN_OPT, R_SCALE_OPT = _display_opts(
    dict.fromkeys(("colormap", "alpha", "overlay_on", "overlay_size", "sign", "scale"), "the run's"))


@app.command(epilog="Examples:\n\n"
             "`salcli render out` (after `salcli explain imgs -o out --format parquet --no-overlays`)\n\n"
             "`salcli render out -m gradcam --colormap viridis --scale run -o out-viridis`")
def render(
    out: Path = typer.Argument(..., help="The output folder of a finished salcli explain run (any --format)."),
    dest: Optional[Path] = typer.Option(None, "-o", "--out", help="Write DIR/METHOD/KEY.png (and DIR/render.jsonl) "
                                        "instead, leaving OUT as it is. [default: into OUT: OUT/METHOD/KEY.png for "
                                        "files, OUT/overlays/METHOD/KEY.png for parquet and webdataset]",
                                        show_default=False, metavar="DIR"),
    method: Optional[List[str]] = typer.Option(None, "-m", "--method", help="Draw only these methods (repeatable or "
                                               "comma-separated, any case). [default: every method with maps]",
                                               show_default=False),
    colormap: Optional[str] = R_COLORMAP_OPT,
    alpha: Optional[float] = R_ALPHA_OPT,
    overlay_on: Optional[str] = R_OVERLAY_ON_OPT,
    overlay_size: Optional[int] = R_OVERLAY_SIZE_OPT,
    sign: Optional[str] = R_SIGN_OPT,
    scale: Optional[str] = R_SCALE_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object on stdout."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print nothing but errors."),
) -> None:
    """Draw overlays from the stored maps of a finished run, without the model: for a run made with
    --no-overlays, or to draw again with other display options. The picture is read again from each record's
    source. No torch.

    Exit codes: 0 every overlay drawn; 1 some could not be drawn (source gone or changed, map unreadable; listed in
    render.jsonl); 2 usage error (no run.json, a bad option, a method with no maps); 130 interrupted.
    """
    from rich.markup import escape

    from .redraw import RenderOptions, render as run_render

    options = RenderOptions(methods=tuple(method or ()), dest=dest, colormap=colormap, alpha=alpha,
                            overlay_on=overlay_on, overlay_size=overlay_size, sign=sign, scale=scale)
    try:
        summary = run_render(out, options, TerminalReporter(quiet), argv=sys.argv)
    except SalcliError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:
        _stderr().print("salcli: interrupted; the overlays drawn so far are whole and recorded.")
        raise typer.Exit(130) from None
    console = _stderr()
    for err in summary.errors[:5]:
        console.print(f"[red]failed:[/] {escape(str(err['image']))} ({err['method']}): {escape(str(err['error']))}",
                      markup=True)
    if len(summary.errors) > 5:
        console.print(f"[red]failed:[/] {len(summary.errors) - 5} more; see "
                      f"{escape(str(Path(summary.dest) if not summary.in_place else out))}/render.jsonl",
                      markup=True)
    if as_json:
        typer.echo(json.dumps(summary.to_json()))
    elif not quiet:
        c = summary.counts
        console.print(escape(f"{c['ok']} overlay{'s' * (c['ok'] != 1)} drawn, {c['error']} failed in "
                             f"{summary.seconds:.1f} s -> {summary.dest}"), markup=True)
    raise typer.Exit(summary.exit_code)


@app.command(epilog="Examples:\n\n"
             "`salcli sanity sample_images/fashion-mnist -o sanity-out`\n\n"
             "`salcli sanity imgs/ --model net.py:build --weights ckpt.pt -m gradcam "
             "--max-randomization-similarity 0.5 --json`")
@with_gates("sanity")
def sanity(
    inputs: List[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively).",
                                        show_default=False),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP + " [default: builtin:fashion-mnist]",
                                        show_default=False),
    weights: Optional[str] = typer.Option(None, "--weights", help="State dict or DEFAULT."),
    weights_key: Optional[str] = WEIGHTS_KEY_OPT,
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Allow files that run pickled code."),
    config_file: Optional[Path] = CONFIG_OPT,
    resize: Optional[int] = RESIZE_OPT,
    crop: Optional[int] = CROP_OPT,
    mean: Optional[str] = MEAN_OPT,
    std: Optional[str] = STD_OPT,
    channels: Optional[int] = CHANNELS_OPT,
    device: Optional[str] = DEVICE_OPT,
    layer: Optional[str] = typer.Option(None, "--layer", help="Layer of the layer methods (default: found "
                                        "automatically on the original model)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per batch."),
    method: Optional[List[str]] = typer.Option(None, "-m", "--method", help="Method to check, repeatable or "
                                               "comma-separated, any case; all: every method. [default: vanilla, "
                                               "gradcam, guided-backprop, integrated-gradients]",
                                               show_default=False),
    param: Optional[List[str]] = typer.Option(None, "-p", "--param", help="METHOD.KEY=VALUE, repeatable."),
    seed: int = typer.Option(0, "--seed", help="Seed of the re-initialization (and of random methods)."),
    limit: int = typer.Option(16, "--limit", help="Use the first N images in sorted order."),
    max_steps: int = typer.Option(12, "--max-steps", help="Most cascade points evaluated, evenly spaced; the "
                                  "first layer and the full randomization always included."),
    threshold: float = typer.Option(0.5, "--threshold", help="Verdict: pass when the mean Spearman at full "
                                    "randomization is below this."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Write DIR/sanity.json and DIR/sanity.png."),
    gates: dict = None,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print nothing but errors and failed gates."),
) -> None:
    """Model-parameter randomization test (Adebayo et al. 2018): re-initialize the model's layers from the
    logits down, cumulatively, and measure how similar each method's maps stay (Spearman, SSIM). A method
    whose maps survive a random model does not explain the model.

    Exit codes: 0 done and every gate passed; 2 usage error; 3 model could not be loaded; 4 a gate failed.
    """
    try:
        from . import gates as quality
        from .sanity import DEFAULT_METHODS, SanityOptions, run as run_sanity, write_results

        opts = SanityOptions(limit=limit, max_steps=max_steps, threshold=threshold)
        cli = {"inputs": inputs, **_model_overrides(model, weights, weights_key, trust_checkpoint, config_file,
                                                    resize, crop, mean, std, channels),
               "device": device, "layer": layer, "batch_size": batch_size, "seed": seed,
               "methods": method or list(DEFAULT_METHODS), "params": param, "out": out}
        config = build_config(cli)
        with _data_only_stdout():
            result = run_sanity(config, opts, TerminalReporter(quiet))
        written = write_results(out, result) if out is not None else []
        failures = quality.check(result.rows, gates)
    except SalcliError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps({**result.to_json(), "gates_failed": [word(f, FLAGS) for f in failures]}, default=str))
    elif not quiet:
        _print_table(f"salcli sanity: {len(result.images)} image(s), {len(result.cascade)} layers randomized "
                     "from the logits down", result.rows,
                     ["method", "randomization_similarity", "ssim_final", "verdict"])
        if written:
            _stderr().print(f"wrote {', '.join(str(out / w) for w in written)}")
    _print_gate_failures(failures)
    raise typer.Exit(4 if failures else 0)


@app.command(epilog="Examples:\n\n`salcli merge out` (after every shard of an array or a torchrun job has finished)")
def merge(
    out: Path = typer.Argument(..., help="The output folder the shards wrote into."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print nothing but errors."),
) -> None:
    """Stream the shards' journals (OUT/parts/) into OUT/manifest.jsonl and a merged OUT/run.json (counts summed,
    the shards present). Read-only over the parts; run it once every shard has finished.

    Exit codes: 0 merged; 2 no run files, or the shards were run with different settings.
    """
    from .merge import merge as run_merge

    try:
        summary = run_merge(out)
    except SalcliError as exc:
        raise _fail(exc) from None
    if not quiet:
        _stderr().print(f"merged {summary.records} record(s) from {len(summary.shards)} shard(s) into "
                        f"{out / 'manifest.jsonl'} and {out / 'run.json'}")
        if summary.incomplete:
            _stderr().print(f"[yellow]note:[/] shard(s) {', '.join(summary.incomplete)} did not finish; rerun them "
                            "with the same command, then merge again", markup=True)


@app.command(epilog="Examples:\n\n`salcli verify out`\n\n`salcli verify out --files-from list.txt`")
def verify(
    out: Path = typer.Argument(..., help="The output folder of a salcli explain run (sharded or not)."),
    files_from: Optional[Path] = typer.Option(None, "--files-from", help="The expected images, one path per "
                                              "line (default: the run's inputs, listed again)."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print nothing but the problems."),
) -> None:
    """Account for every expected image: one ok record per method, one setting each. Prints one line per
    problem (missing, failed, duplicated across shards, mixed settings, not among the inputs).

    Exit codes: 0 every image accounted for; 1 a problem was found; 2 no run files.
    """
    from rich.markup import escape

    from .merge import verify as run_verify

    try:
        problems = run_verify(out, files_from)
    except SalcliError as exc:
        raise _fail(exc) from None
    for line in problems:
        _stderr().print(f"[bold red]verify:[/] {escape(line)}", markup=True)
    if not problems and not quiet:
        _stderr().print(f"verify: every expected image of {out} is accounted for")
    raise typer.Exit(1 if problems else 0)


@app.command("methods")
def list_methods(as_json: bool = typer.Option(False, "--json", help="Print the registry as JSON.")) -> None:
    """List every registered method with its parameters, defaults, map convention and cost."""
    from .methods import describe

    rows = describe()
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    names = "Names: any case, with or without '-', '_' and spaces (GradCAM = grad-cam = gradcam); -m a,b runs " \
            "several, -m all every one."
    if not console.is_terminal or console.width < 120:  # a pipe, a log or a narrow terminal: a plain list
        import textwrap

        width = console.width if console.is_terminal else None
        typer.echo("\n".join([_methods_list(rows, width), *(textwrap.wrap(names, width) if width else [names])]))
        return
    table = Table(title="salcli methods", show_lines=True)
    table.add_column("method", no_wrap=True)  # the names a user types are never cut
    for col in ("paper", "map convention", "passes per image"):
        table.add_column(col)
    table.add_column("parameters (default)", no_wrap=True)
    for r in rows:
        params = "\n".join(f"{p['name']}={p['default']}" for p in r["params"]) or "-"
        name = "\n".join([r["name"], *(["(layer)"] if r["needs_layer"] else []),
                          *(f"also {a}" for a in r.get("aliases", []))])
        table.add_row(*map(escape, (name, r["paper"], r["convention"], r["passes"], params)))
    console.print(table)
    console.print(escape(names))


def _methods_list(rows: list[dict], width: int | None) -> str:
    """``salcli methods`` as plain text: a block per method, its first line starting with the name; wrapped to
    ``width`` (a terminal's) or not at all (a pipe)."""
    import textwrap

    lines = []
    for r in rows:
        fields = [("map", r["convention"]), ("passes", f"{r['passes']} per image"),
                  ("parameters", ", ".join(f"{p['name']}={p['default']}" for p in r["params"]) or "none")]
        if r["needs_layer"]:
            fields.append(("layer", "needs one: --layer NAME, or found automatically"))
        if r.get("aliases"):
            fields.append(("also", ", ".join(r["aliases"])))
        lines.append(f"{r['name']}  {r['paper']}")
        for label, text in fields:
            line = f"  {label:<11} {text}"
            lines += textwrap.wrap(line, width, subsequent_indent=" " * 14, break_long_words=False,
                                   break_on_hyphens=False) if width else [line]
    return "\n".join(lines)


INTERNAL_ERROR = 70  # EX_SOFTWARE (sysexits.h): an unexpected error, a bug in salcli or in what it called


def run() -> None:
    """The console entry point: no traceback reaches the user. An unexpected exception prints one line naming
    it and the file holding its traceback, and exits 70; ``--debug`` or ``SALCLI_DEBUG=1`` shows the traceback
    instead."""
    import os

    try:
        app()
    except Exception as exc:  # noqa: BLE001 - the last line of defence; every expected error has its own code
        if "--debug" in sys.argv[1:] or os.environ.get("SALCLI_DEBUG", "").strip() not in ("", "0"):
            raise
        sys.exit(_internal_error(exc))


def _internal_error(exc: BaseException) -> int:
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(exc))
    where = "not saved"
    try:
        with tempfile.NamedTemporaryFile("w", prefix="salcli-error-", suffix=".txt", delete=False) as fh:
            fh.write(f"salcli {' '.join(sys.argv[1:])}\n\n{text}")
            where = fh.name
    except OSError:
        pass
    line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    sys.stderr.write(f"salcli: internal error: {type(exc).__name__}{': ' + line if line else ''}\n"
                     f"  the traceback is in {where}; rerun with --debug (or SALCLI_DEBUG=1) to print it, and "
                     f"please report it with that file\n")
    return INTERNAL_ERROR
