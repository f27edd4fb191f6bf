"""Run configuration: a frozen ``RunConfig`` built from a TOML preset plus command-line overrides.

No torch here: ``cli.py`` imports this module to validate options before anything heavy is loaded.
"""

from __future__ import annotations

import errno
import os
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, published as tomli
    import tomli as tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import UsageError, did_you_mean, setting

PREPROCESS_KEYS = ("resize", "crop", "mean", "std", "channels", "interpolation")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"


@dataclass(frozen=True)
class Preprocess:
    """Image -> tensor: resize the short side to ``resize``, center-crop ``crop``, scale to [0, 1],
    then ``(x - mean) / std`` per channel, with ``channels`` 1 (luma) or 3 (RGB). Resizing is antialiased."""

    resize: int = 224
    crop: int = 224
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    channels: int = 3
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise UsageError(f"preprocess.interpolation must be one of {', '.join(INTERPOLATIONS)}")
        if self.channels not in (1, 3):
            raise UsageError(f"{setting('channels')} must be 1 or 3, not {self.channels}")
        if self.resize < 1 or self.crop < 1:
            raise UsageError(f"{setting('resize')} and {setting('crop')} must be positive pixel counts")
        if self.crop > self.resize:
            raise UsageError(f"{setting('crop')} {self.crop} is larger than {setting('resize')} {self.resize}; "
                             "the crop is taken from the resized image")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.channels):
                raise UsageError(f"{setting(name)} has {len(values)} values but the model takes {self.channels} "
                                 f"channel(s); give 1 or {self.channels} comma-separated numbers")
        if any(s <= 0 for s in self.std):
            raise UsageError(f"{setting('std')} values must be positive")
        for name in ("mean", "std"):  # one value per channel from here on
            values = tuple(float(v) for v in getattr(self, name))
            object.__setattr__(self, name, values * self.channels if len(values) == 1 else values)



@dataclass(frozen=True)
class RunConfig:
    """Everything a run depends on. ``preprocess`` and ``labels`` hold only what the user set; the model's
    own preset fills the rest (see ``models.resolve_preset``)."""

    inputs: tuple[Path, ...] = ()
    out: Path | None = None
    model: str = "builtin:fashion-mnist"
    weights: str | None = None
    weights_key: str | None = None  # the entry of a checkpoint dict holding the state dict (default: found)
    prune: bool = False  # remove the outputs and records of images no longer among the inputs
    trust_checkpoint: bool = False
    preprocess: dict[str, Any] = field(default_factory=dict)
    labels: tuple[str, ...] | str | None = None
    methods: tuple[str, ...] = ("vanilla",)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    target: str = "pred"
    layer: str | None = None
    device: str = "auto"
    batch_size: int | str = "auto"
    chunk: int | str = "auto"
    precision: str = "fp32"
    optimize: bool = True
    workers: int | None = None
    seed: int = 0
    colormap: str = "jet"
    alpha: float = 0.5
    overlay_on: str = "original"  # draw overlays on the original picture, or on the model's input ("input")
    overlay_size: int = 512  # most pixels on an overlay's long side
    sign: str = "all"  # how signed maps are drawn: all, positive, negative, absolute
    scale: str = "image"  # image, run, or a fixed value that saturates the colours
    format: str = "files"  # the output sink (outputs/sinks/): files, parquet or webdataset
    overlays: bool = True  # draw and store an overlay per map (--no-overlays: maps only)
    map_dtype: str = "float32"  # how maps are stored: float32, or float16 (half the bytes; read back as float32)
    layer_maps: str = "input"  # the CAM family's maps stored at the input's size, or at the layer's ("native");
    # unset on the command line: native with a packed --format, input with files
    overwrite: bool = False
    shard: tuple[int, int] | None = None
    shard_source: str | None = None  # where ``shard`` came from, in words (see ``parse_shard``)
    no_shard: bool = False  # ignore torchrun's and Slurm's variables: one process takes every image
    max_failures: str = "0"  # failed (image, method) records allowed before exit 1: a count, or "P%" of them
    files_from: Path | None = None  # a list of inputs, one per line ('-': stdin), instead of INPUT...
    root: Path | None = None  # keys are relative to this folder (default: the deepest folder holding every input)
    json: bool = False
    quiet: bool = False
    config_file: Path | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["inputs"] = [str(p) for p in self.inputs]
        d["out"] = str(self.out) if self.out else None
        d["config_file"] = str(self.config_file) if self.config_file else None
        d["files_from"] = str(self.files_from) if self.files_from else None
        d["root"] = str(self.root) if self.root else None
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RunConfig":
        """The inverse of ``to_json`` (run.json's ``settings``): data in, no command-line parsing. Keys this
        version does not know are ignored; missing keys keep their defaults."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        for key in ("inputs", "methods"):
            if key in values:
                values[key] = tuple(Path(p) for p in values[key]) if key == "inputs" else tuple(values[key])
        for key in ("out", "config_file", "files_from", "root"):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        if isinstance(values.get("labels"), list):
            values["labels"] = tuple(values["labels"])
        if values.get("shard") is not None:
            values["shard"] = tuple(values["shard"])
        pre = dict(values.get("preprocess") or {})
        for key in ("mean", "std"):
            if key in pre:
                pre[key] = tuple(float(v) for v in pre[key])
        values["preprocess"] = pre
        values["params"] = {m: dict(t) for m, t in (values.get("params") or {}).items()}
        return cls(**values)




def presets() -> dict[str, Path]:
    """The presets that ship with salcli, by name (the file's stem), for ``--config resnet50``. Installed, they
    are the package's ``salcli/configs/`` (pyproject.toml maps the repository's ``configs/`` there); in a source
    checkout or an editable install, ``configs/`` beside the package."""
    here = Path(__file__).resolve().parent
    for folder in (here / "configs", here.parent / "configs"):
        if folder.is_dir():
            return {p.stem: p for p in sorted(folder.glob("*.toml"))}
    return {}


def find_config(value: str | Path) -> Path:
    """``--config``: a TOML file, or the name of a preset that ships with salcli (``resnet50`` or
    ``resnet50.toml``); a file of that name wins. Neither is a usage error listing the presets."""
    path = Path(value)
    _check_name(path, "config_file")
    if path.exists():
        return path
    shipped = presets()
    name = path.name[:-len(".toml")] if path.name.endswith(".toml") else path.name
    if str(path) == path.name and name in shipped:  # a bare name, not a path
        return shipped[name]
    hint = (f" Did you mean '{name}' (a preset that ships with salcli)?" if name in shipped
            else did_you_mean(name, shipped))
    raise UsageError(f"config file not found: {value}.{hint} {setting('config_file')} takes a TOML file or the name "
                     f"of a preset that ships with salcli: {', '.join(shipped) or 'none found'}")


def read_toml(path: Path) -> dict[str, Any]:
    """Read and check a preset; relative paths inside it are relative to the preset's folder."""
    if path.exists() and not path.is_file():  # a folder, or a FIFO that would block the read
        raise UsageError(f"config file {path}: not a regular file; {setting('config_file')} takes a TOML file or a "
                         "preset's name")
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError: an integer of more than 4300 digits; RecursionError: arrays nested thousands deep
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    method_tables = data.pop("methods", None)
    if isinstance(method_tables, dict):  # [methods.NAME] tables
        data["params"] = method_tables
    elif method_tables is not None:
        data["methods"] = method_tables
    if "method" in data:  # `method = [...]` lists methods beside [methods.NAME] parameter tables
        chosen = data.pop("method")
        data["methods"] = [chosen] if isinstance(chosen, str) else chosen
    from .schema import KEYS, check_preset

    for key in data:
        if key != "params" and key not in KEYS:
            raise UsageError(f"unknown key '{key}' in {path}.{did_you_mean(key, KEYS)} "
                             f"Valid keys: {', '.join(sorted(KEYS))}, [methods.NAME] tables")
    pre = data.get("preprocess", {})
    for key in pre if isinstance(pre, dict) else ():
        if key not in PREPROCESS_KEYS:
            raise UsageError(f"unknown key 'preprocess.{key}' in {path}; valid: {', '.join(PREPROCESS_KEYS)}")
    check_preset(data, str(path))
    try:
        for key in ("weights", "labels"):
            value = data.get(key)
            if isinstance(value, str) and _looks_like_path(value):
                data[key] = str((path.parent / value).resolve())
        model = data.get("model")
        if isinstance(model, str) and ".py:" in model:
            file_part, func = model.rsplit(":", 1)
            data["model"] = f"{(path.parent / file_part).resolve()}:{func}"
    except (RuntimeError, OSError, ValueError) as exc:  # a link to itself (RuntimeError before 3.13), a NUL byte
        raise UsageError(f"a path in {path} cannot be resolved: {exc}") from None
    return data


def _looks_like_path(value: str) -> bool:
    return value != "DEFAULT" and value != "imagenet" and ("/" in value or "." in value)


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{option} takes comma-separated numbers such as 0.485,0.456,0.406; got '{text}'") from None
    return values


def parse_param(text: str) -> tuple[str, str, str]:
    """'smoothgrad.samples=50' -> ('smoothgrad', 'samples', '50')."""
    head, sep, value = text.partition("=")
    method, dot, key = head.rpartition(".")
    if not sep or not dot or not method or not key:
        raise UsageError(f"-p takes METHOD.KEY=VALUE, for example smoothgrad.samples=25; got '{text}'")
    return method.strip(), key.strip(), value.strip()


def parse_methods(values: Any, everything: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """Method names as typed (``-m``, repeatable, or a preset's list) -> registered names, in order, without
    repeats. A value may be a comma-separated list; a name may be spelt in any case, with or without '-', '_'
    and spaces, or as an alias (``GradCAM``, ``grad-cam``, ``Saliency``); ``all`` stands for every registered
    method in registry order (or for ``everything`` when given). Imports the method registry (torch)."""
    from . import methods as registry

    found: list[str] = []
    saw_all = False
    for value in ([values] if isinstance(values, str) else values):
        for part in str(value).split(","):
            part = part.strip()
            if part.lower() == "all":
                saw_all = True
                found += registry.names() if everything is None else list(everything)
            elif part:
                found.append(registry.canonical(part))
    if not found and not saw_all:
        raise UsageError(f"{setting('methods')} takes method names, such as vanilla or gradcam,smoothgrad; got "
                         f"{', '.join(map(repr, [values] if isinstance(values, str) else values))}")
    return tuple(dict.fromkeys(found))


def canonical_params(params: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{method as typed: {key: value}}`` -> keyed by registered names; tables naming the same method under
    two spellings are merged, the later winning."""
    if not params:
        return params
    from . import methods as registry

    merged: dict[str, dict[str, Any]] = {}
    for method, table in params.items():
        merged.setdefault(registry.canonical(method), {}).update(table)
    return merged


@dataclass(frozen=True)
class Shard:
    """The slice of the inputs this process takes: ``index`` of ``count`` (from 0), and ``source``, where it
    came from in words ("given", "torchrun RANK=1 WORLD_SIZE=4", ...), for the line printed on stderr."""

    index: int
    count: int
    source: str

    @property
    def pair(self) -> tuple[int, int]:
        return (self.index, self.count)


# Every environment variable ``parse_shard`` reads (tests clear them; the CLI may list them in a message).
SHARD_ENV = ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_ARRAY_TASK_ID",
             "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_STEP", "SLURM_ARRAY_TASK_COUNT")


def parse_shard(text: str | None, env: Any = None, *, no_shard: bool = False) -> Shard | None:
    """The shard this process takes, or None for every image.

    ``text`` (``I/N``, I from 0) wins; ``no_shard`` turns detection off. Otherwise the launcher's variables:
    torchrun's ``RANK``/``WORLD_SIZE`` (when WORLD_SIZE > 1), else an ``srun`` step's ``SLURM_PROCID`` of
    ``SLURM_STEP_NUM_TASKS`` (when > 1; ``SLURM_NTASKS`` alone is the allocation's size, also set in a batch
    script that runs once, so it is not read), combined with a Slurm array's position when both are set
    (array task a of A, process p of P -> shard a*P + p of A*P). An array's position is
    ``(TASK_ID - TASK_MIN) // TASK_STEP`` of ``(TASK_MAX - TASK_MIN) // TASK_STEP + 1``, checked against
    ``TASK_COUNT``. What the environment cannot answer raises ``UsageError`` instead of guessing: an id list
    that is not evenly spaced, and a one-task array (a rerun of one task of a larger array looks the same as
    an array of one, and taking every image would redo the other tasks' work)."""
    env = os.environ if env is None else env
    if text is not None:
        if no_shard:
            raise UsageError(f"{setting('shard')} and {setting('no_shard')} contradict each other; give one")
        index, count = _shard_pair(text)
        return Shard(index, count, "given")
    if no_shard:
        return None
    outer = _slurm_array(env)
    inner = _torchrun(env) or _srun(env)
    if outer is None and inner is None:
        return None
    if outer is None or inner is None:
        return outer or inner
    return Shard(outer.index * inner.count + inner.index, outer.count * inner.count,
                 f"{outer.source}, {inner.source}")


def _shard_pair(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UsageError(f"{setting('shard')} takes I/N, such as 0/4 (I counts from 0); got '{text}'") from None
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"{setting('shard')} {text}: I must be in 0..N-1 and N at least 1")
    return i, n


def _env_int(env: Any, name: str) -> int | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"the environment variable {name}={value!r} is not a whole number; fix it, or pass "
                         f"{setting('shard')} I/N or {setting('no_shard')}") from None


def _ranked(env: Any, rank_var: str, size_var: str, launcher: str) -> Shard | None:
    """A process's rank among a launcher's processes (only when there is more than one)."""
    rank, size = _env_int(env, rank_var), _env_int(env, size_var)
    if rank is None or size is None or size <= 1:
        return None
    if not 0 <= rank < size:
        raise UsageError(f"{rank_var}={rank} is outside 0..{size_var}-1 ({size}); pass {setting('shard')} "
                         "I/N to choose the slice")
    return Shard(rank, size, f"{launcher} {rank_var}={rank} {size_var}={size}")


def _torchrun(env: Any) -> Shard | None:
    return _ranked(env, "RANK", "WORLD_SIZE", "torchrun")


def _srun(env: Any) -> Shard | None:
    return _ranked(env, "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "srun")


def _slurm_array(env: Any) -> Shard | None:
    task = _env_int(env, "SLURM_ARRAY_TASK_ID")
    if task is None:
        return None
    low, high = _env_int(env, "SLURM_ARRAY_TASK_MIN"), _env_int(env, "SLURM_ARRAY_TASK_MAX")
    count, step = _env_int(env, "SLURM_ARRAY_TASK_COUNT"), _env_int(env, "SLURM_ARRAY_TASK_STEP") or 1
    explicit = f"pass {setting('shard')} I/N (this task's position I, from 0, among the array's N tasks)"
    if low is None or high is None or step < 1 or not low <= task <= high:
        raise UsageError(f"Slurm array task {task}: SLURM_ARRAY_TASK_MIN/MAX/STEP are missing or inconsistent, "
                         f"so this task's slice is unknown; {explicit}")
    if low == high:
        raise UsageError(f"this is a one-task Slurm array (task {task}). If it reruns one task of a larger array, "
                         f"{explicit}: a rerun of task 3 of --array=0-15 takes 3/16. To explain every image in "
                         f"this one task, pass {setting('no_shard')}")
    span = (high - low) // step + 1
    if (count is None or count == span) and (task - low) % step == 0:
        return Shard((task - low) // step, span, f"Slurm array task {task} of ids {low}-{high}"
                     + (f" step {step}" if step > 1 else ""))
    if count is not None and count > 1 and (high - low) % (count - 1) == 0:
        # SLURM_ARRAY_TASK_COUNT ids from MIN to MAX: consistent with one evenly spaced list. If the real list
        # is not that one, at least one of its tasks fails here, so a gap never goes unreported.
        spacing = (high - low) // (count - 1)
        if (task - low) % spacing == 0:
            return Shard((task - low) // spacing, count,
                         f"Slurm array task {task} of {count} ids {low}-{high} spaced {spacing}")
    raise UsageError(f"Slurm array task {task} is one of {count} ids between {low} and {high} that are not "
                     f"evenly spaced, and Slurm does not say their order; {explicit}")


def parse_max_failures(value: str | int) -> str:
    """``N`` (failed records allowed) or ``P%`` (percent of the run's records); checked, kept as text."""
    text = str(value).strip()
    number = text[:-1] if text.endswith("%") else text
    try:
        ok = float(number) >= 0 and (text.endswith("%") or float(number).is_integer())
    except ValueError:
        ok = False
    if not ok or (text.endswith("%") and float(number) > 100):
        raise UsageError(f"{setting('max_failures')} takes a count such as 10 or a percentage such as 5%; got '{text}'")
    return text


def failures_allowed(max_failures: str, records: int) -> float:
    """How many failed records ``max_failures`` allows out of ``records``."""
    if max_failures.endswith("%"):
        return float(max_failures[:-1]) / 100.0 * records
    return float(max_failures)


def parse_batch_size(value: str | int, option: str = setting("batch_size")) -> int | str:
    text = str(value)
    if isinstance(value, int) or (text.isascii() and text.isdigit()):  # not '²': isdigit() but not int()
        number = int(value) if isinstance(value, int) or len(text) <= 20 else 2**64  # int() reads 4300 digits
        if number < 1:
            raise UsageError(f"{option} must be at least 1 (or 'auto')")
        return number
    if value == "auto":
        return "auto"
    raise UsageError(f"{option} takes a positive number or 'auto'; got '{value}'")


def check_device(device: str) -> str:
    base, _, index = device.partition(":")
    if base not in ("auto", "cpu", "cuda", "mps") or (index and (base != "cuda" or not index.isascii()
                                                               or not index.isdigit())):  # not "cuda:²"
        raise UsageError(f"{setting('device')} takes {DEVICE_HELP}; got '{device}'")
    return device


MAP_DTYPES = ("float32", "float16")
LAYER_MAPS = ("input", "native")  # engine.LAYER_MAPS (config imports no torch)


def check_output(values: dict[str, Any]) -> None:
    """``--format`` (a registered sink, whose libraries are installed), ``--map-dtype`` and ``--layer-maps``
    (unset: ``native`` with a packed format, ``input`` with files); usage errors."""
    from .outputs import sinks  # numpy and the sink modules, no torch

    sinks.get(str(values.get("format", "files"))).require()  # unknown: a usage error listing the formats
    if values.get("map_dtype", "float32") not in MAP_DTYPES:
        raise UsageError(f"{setting('map_dtype')} takes {' or '.join(MAP_DTYPES)}; got '{values['map_dtype']}'")
    if values.get("layer_maps") is None:
        values["layer_maps"] = "input" if values.get("format", "files") == "files" else "native"
    if values["layer_maps"] not in LAYER_MAPS:
        raise UsageError(f"{setting('layer_maps')} takes {' or '.join(LAYER_MAPS)}; got '{values['layer_maps']}'")


OVERLAY_ON = ("original", "input")
SIGN_MODES = ("all", "positive", "negative", "absolute")  # maps.SIGN_MODES (config imports no torch)
SCALES = ("image", "run")


def check_display(on: str, size: Any, sign: str, scale: Any) -> str:
    """Check ``--overlay-on``, ``--overlay-size``, ``--sign`` and ``--scale``; returns the scale as text."""
    if on not in OVERLAY_ON:
        raise UsageError(f"{setting('overlay_on')} takes {' or '.join(OVERLAY_ON)}; got '{on}'")
    if isinstance(size, bool) or not isinstance(size, int) or size < 16:
        raise UsageError(f"{setting('overlay_size')} takes a pixel count of at least 16; got '{size}'")
    if sign not in SIGN_MODES:
        raise UsageError(f"{setting('sign')} takes one of {', '.join(SIGN_MODES)}; got '{sign}'")
    text = str(scale).strip()
    if text in SCALES:
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value != float("inf")):
        raise UsageError(f"{setting('scale')} takes image, run or a positive number (the map value that saturates "
                         f"the colours); got '{text}'")
    return text


def build_config(cli: dict[str, Any]) -> RunConfig:
    """Merge a preset (``cli['config_file']``) with the command-line values that were given (not None)."""
    return build_overrides(cli)[0]


def build_overrides(cli: dict[str, Any]) -> tuple[RunConfig, frozenset[str]]:
    """Like ``build_config``, and the names of the fields that the preset or the command line set (for commands
    that lay options over a finished run's settings: ``evaluate``)."""
    values: dict[str, Any] = {}
    preset_params: dict[str, dict[str, Any]] = {}
    config_file = cli.get("config_file")
    if config_file is not None:
        cli["config_file"] = config_file = find_config(config_file)  # a file, or a preset's name (resnet50)
        preset = read_toml(config_file)
        preset.pop("description", None)
        preset_params = preset.pop("params", {})
        for key, table in preset_params.items():
            if not isinstance(table, dict):
                raise UsageError(f"[methods.{key}] in {config_file} must be a table of parameters")
        if "labels" in preset and isinstance(preset["labels"], list):
            preset["labels"] = tuple(str(v) for v in preset["labels"])
        if "methods" in preset:
            preset["methods"] = tuple(preset["methods"])
        if "target" in preset:
            preset["target"] = str(preset["target"])
        values.update(preset)
    cli_pre = {k: cli.pop(k) for k in PREPROCESS_KEYS if cli.get(k) is not None}
    values["preprocess"] = {**values.get("preprocess", {}), **cli_pre}
    for key in ("mean", "std"):
        if isinstance(values["preprocess"].get(key), str):
            values["preprocess"][key] = parse_floats(values["preprocess"][key], setting(key))
        elif key in values["preprocess"]:
            value = values["preprocess"][key]  # a preset's list, or one number for every channel
            values["preprocess"][key] = tuple(map(float, value if isinstance(value, (list, tuple)) else [value]))

    params = {m: dict(t) for m, t in preset_params.items()}
    typed_params = []  # methods given -p on the command line: each must be selected (a preset may hold more)
    for text in cli.pop("params", None) or ():
        method, key, value = parse_param(text)
        params.setdefault(method, {})[key] = value
        typed_params.append((method, text))
    values["params"] = canonical_params(params)  # -p GradCAM.x and [methods.grad-cam] mean gradcam

    for key, value in cli.items():
        if value is None or key in ("params",):
            continue
        if key == "methods" and not value:
            continue
        values[key] = value
    given = frozenset(k for k in values if k not in ("preprocess", "params")) | (
        {"preprocess"} if values["preprocess"] else set()) | ({"params"} if values["params"] else set())
    if "methods" in values:
        values["methods"] = parse_methods(values["methods"])  # comma lists, aliases, all; in order, no repeats
    if "labels" in values and isinstance(values["labels"], Path):
        values["labels"] = str(values["labels"])
    _check_params_selected(typed_params, values.get("methods", RunConfig.methods))
    values["batch_size"] = parse_batch_size(values.get("batch_size", "auto"))
    values["max_failures"] = parse_max_failures(values.get("max_failures", "0"))
    values["chunk"] = parse_batch_size(values.get("chunk", "auto"), setting("chunk"))
    values["device"] = check_device(values.get("device", "auto"))
    check_output(values)
    if values.get("precision", "fp32") not in ("fp32", "bf16"):
        raise UsageError(f"{setting('precision')} takes fp32 or bf16; got '{values['precision']}'")
    if "shard" in cli or "no_shard" in cli:  # commands without a --shard option (evaluate, sanity) never shard
        found = parse_shard(values.get("shard"), no_shard=bool(values.get("no_shard")))
        values["shard"], values["shard_source"] = (found.pair, found.source) if found else (None, None)
    else:
        values.pop("shard", None)
    if values.get("files_from") is not None:
        values["files_from"] = Path(values["files_from"])
    if "inputs" in values:
        values["inputs"] = tuple(Path(p) for p in values["inputs"])
    if values.get("out") is not None:
        values["out"] = Path(values["out"])
    for key in ("out", "labels", "weights", "root", "files_from"):
        if isinstance(values.get(key), (str, Path)):
            _check_name(values[key], key)
    for table in values["params"].values():
        if isinstance(table.get("references"), str):
            _check_name(table["references"], "params")
    if values.get("out") is not None:
        _check_out(values["out"])
    try:
        _absolute_paths(values)
    except (RuntimeError, OSError, ValueError) as exc:  # a link to itself (RuntimeError before 3.13), a NUL byte
        raise UsageError(f"a path cannot be resolved: {exc}") from None
    from .schema import check_values

    check_values(values)  # types, ranges and finiteness, whether the command line or the preset gave them
    if not 0.0 <= float(values.get("alpha", 0.5)) <= 1.0:
        raise UsageError(f"{setting('alpha')} must be between 0 and 1")
    values["scale"] = check_display(values.get("overlay_on", "original"), values.get("overlay_size", 512),
                                    values.get("sign", "all"), values.get("scale", "image"))
    if values["scale"] == "run" and values.get("format", "files") != "files":
        raise UsageError(f"{setting('scale')} run draws every overlay again at the end, which a packed "
                         f"{setting('format')} ({values['format']}) cannot rewrite; use {setting('scale')} image, or a "
                         f"fixed {setting('scale')} VALUE")
    if values["scale"] == "run" and values.get("shard") is not None:
        raise UsageError(f"{setting('scale')} run needs every image in one process, and {setting('shard')} gives "
                         f"this one a slice; use {setting('scale')} image, or a fixed {setting('scale')} VALUE "
                         "(the same in every shard)")
    if values.get("workers") is not None and values["workers"] < 0:
        raise UsageError(f"{setting('workers')} must be 0 or more")
    return RunConfig(**values), given


NAMED_PREFIXES = ("builtin:", "torchvision:", "timm:")  # model specs that name no file


def absolute_spec(spec: str) -> str:
    """A model spec with the file or folder it names made absolute (``net.py:build``, ``hf:./dir``, ``m.pt``),
    so that a run's settings mean the same from any working directory; named specs are kept."""
    if spec.startswith(NAMED_PREFIXES):
        return spec
    if spec.startswith("hf:"):
        folder = Path(spec[3:]).expanduser()
        return f"hf:{folder.resolve()}" if folder.is_dir() else spec
    if ":" in spec and not Path(spec).exists():
        target, func = spec.rsplit(":", 1)
        return f"{Path(target).expanduser().resolve()}:{func}" if target.endswith(".py") else spec
    return str(Path(spec).expanduser().resolve()) if Path(spec).expanduser().exists() else spec


def _absolute_paths(values: dict[str, Any]) -> None:
    """Every path a run depends on, made absolute in place (``evaluate OUT`` reloads them from run.json, maybe
    from another folder; the command as typed stays in run.json's ``argv``)."""
    if isinstance(values.get("model"), str):
        values["model"] = absolute_spec(values["model"])
    weights = values.get("weights")
    if isinstance(weights, (str, Path)) and str(weights) != "DEFAULT":
        values["weights"] = str(Path(weights).expanduser().resolve())
    labels = values.get("labels")
    if isinstance(labels, (str, Path)) and str(labels) != "imagenet":
        values["labels"] = str(Path(labels).expanduser().resolve())
    for key in ("config_file", "root"):
        if values.get(key) is not None:
            values[key] = Path(values[key]).expanduser().resolve()
    if values.get("files_from") is not None and str(values["files_from"]) != "-":
        values["files_from"] = Path(values["files_from"]).expanduser().resolve()
    for table in values.get("params", {}).values():
        if isinstance(table.get("references"), str) and table["references"]:
            table["references"] = str(Path(table["references"]).expanduser().resolve())


def _check_name(path: str | Path, name: str) -> None:
    """A path longer than the system takes (a name over 255 bytes, say) is a usage error naming the setting:
    pathlib's exists(), is_file() and is_dir() raise OSError on it instead of answering False."""
    try:
        os.lstat(path)
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            text = str(path)
            raise UsageError(f"{setting(name)} {text[:40]}...: the name is too long for this system "
                             f"({len(text)} characters)") from None
    except ValueError:  # a NUL byte: refused where the path is resolved
        pass


def _check_out(out: Path) -> None:
    """OUT (explain's, or sanity's -o) must be a folder that exists or that mkdir can create: not a file, no
    broken or looping symbolic link on the way (FileExistsError), no file above it (NotADirectoryError)."""
    for part in (out, *out.parents):
        if part.is_symlink() and not part.exists():
            raise UsageError(f"{setting('out')} {out}: {part} is a symbolic link to nothing (broken, or a loop); "
                             "give a folder")
        if part.exists():
            if not part.is_dir():
                where = "" if part == out else f"{part} is "
                raise UsageError(f"{setting('out')} {out}: {where}a file, not a folder; give a folder (it is created "
                                 "when missing)")
            return


def _check_params_selected(typed: list[tuple[str, str]], chosen) -> None:
    """A ``-p METHOD.KEY=VALUE`` for a method that does not run would be ignored: a usage error instead."""
    from . import methods as registry

    if not typed:
        return
    selected = {registry.get(m).name for m in chosen if m != "all"} if "all" not in chosen else None
    for method, text in typed:
        if selected is not None and registry.get(method).name not in selected:
            raise UsageError(f"{setting('params')} {text}: {method} is not among the chosen methods "
                             f"({', '.join(chosen)}); add {setting('methods')} {method} or drop the parameter")


def with_(config: RunConfig, **changes: Any) -> RunConfig:
    return replace(config, **changes)
