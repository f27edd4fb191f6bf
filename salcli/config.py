"""Run configuration: a frozen ``RunConfig`` built from a TOML preset plus command-line overrides.

No torch here: ``cli.py`` imports this module to validate options before anything heavy is loaded.
"""

from __future__ import annotations

import os
import tomllib
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
    overwrite: bool = False
    shard: tuple[int, int] | None = None
    json: bool = False
    quiet: bool = False
    config_file: Path | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["inputs"] = [str(p) for p in self.inputs]
        d["out"] = str(self.out) if self.out else None
        d["config_file"] = str(self.config_file) if self.config_file else None
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
        for key in ("out", "config_file"):
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


# Keys a TOML preset may set at its top level, with the type each must have.
TOML_KEYS: dict[str, type | tuple[type, ...]] = {
    "model": str, "weights": str, "trust_checkpoint": bool, "labels": (str, list), "methods": list,
    "method": (str, list),
    "target": (str, int), "layer": str, "device": str, "batch_size": (int, str), "chunk": (int, str),
    "workers": int, "precision": str, "optimize": bool,
    "seed": int, "colormap": str, "alpha": (int, float), "preprocess": dict, "description": str,
}


def read_toml(path: Path) -> dict[str, Any]:
    """Read and check a preset; relative paths inside it are relative to the preset's folder."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    method_tables = data.pop("methods", None)
    if isinstance(method_tables, dict):  # [methods.NAME] tables
        data["params"] = method_tables
    elif method_tables is not None:
        data["methods"] = method_tables
    if "method" in data:  # `method = [...]` lists methods beside [methods.NAME] parameter tables
        chosen = data.pop("method")
        data["methods"] = [chosen] if isinstance(chosen, str) else chosen
    for key, value in data.items():
        if key == "params":
            continue
        if key not in TOML_KEYS:
            raise UsageError(f"unknown key '{key}' in {path}.{did_you_mean(key, TOML_KEYS)} "
                             f"Valid keys: {', '.join(sorted(TOML_KEYS))}, [methods.NAME] tables")
        if not isinstance(value, TOML_KEYS[key]):
            raise UsageError(f"'{key}' in {path} has the wrong type ({type(value).__name__})")
    pre = data.get("preprocess", {})
    for key in pre:
        if key not in PREPROCESS_KEYS:
            raise UsageError(f"unknown key 'preprocess.{key}' in {path}; valid: {', '.join(PREPROCESS_KEYS)}")
    for key in ("weights", "labels"):
        value = data.get(key)
        if isinstance(value, str) and _looks_like_path(value):
            data[key] = str((path.parent / value).resolve())
    model = data.get("model")
    if isinstance(model, str) and ".py:" in model:
        file_part, func = model.rsplit(":", 1)
        data["model"] = f"{(path.parent / file_part).resolve()}:{func}"
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


def parse_shard(text: str | None, env: dict[str, str] | None = None) -> tuple[int, int] | None:
    """``--shard I/N`` (I counted from 0), else torchrun's RANK/WORLD_SIZE, else a Slurm array."""
    env = os.environ if env is None else env
    if text is None:
        if "WORLD_SIZE" in env and "RANK" in env and int(env["WORLD_SIZE"]) > 1:
            text = f"{env['RANK']}/{env['WORLD_SIZE']}"
        elif "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
            first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
            text = f"{int(env['SLURM_ARRAY_TASK_ID']) - first}/{env['SLURM_ARRAY_TASK_COUNT']}"
        else:
            return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UsageError(f"{setting('shard')} takes I/N, such as 0/4 (I counts from 0); got '{text}'") from None
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"{setting('shard')} {text}: I must be in 0..N-1 and N at least 1")
    return (i, n)


def parse_batch_size(value: str | int, option: str = setting("batch_size")) -> int | str:
    if isinstance(value, int) or str(value).isdigit():
        if int(value) < 1:
            raise UsageError(f"{option} must be at least 1 (or 'auto')")
        return int(value)
    if value == "auto":
        return "auto"
    raise UsageError(f"{option} takes a positive number or 'auto'; got '{value}'")


def check_device(device: str) -> str:
    base, _, index = device.partition(":")
    if base not in ("auto", "cpu", "cuda", "mps") or (index and (base != "cuda" or not index.isdigit())):
        raise UsageError(f"{setting('device')} takes {DEVICE_HELP}; got '{device}'")
    return device


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
        preset = read_toml(Path(config_file))
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
            values["preprocess"][key] = tuple(float(v) for v in values["preprocess"][key])

    params = {m: dict(t) for m, t in preset_params.items()}
    for text in cli.pop("params", None) or ():
        method, key, value = parse_param(text)
        params.setdefault(method, {})[key] = value
    values["params"] = params

    for key, value in cli.items():
        if value is None or key in ("params",):
            continue
        if key == "methods" and not value:
            continue
        values[key] = value
    given = frozenset(k for k in values if k not in ("preprocess", "params")) | (
        {"preprocess"} if values["preprocess"] else set()) | ({"params"} if values["params"] else set())
    if "methods" in values:
        values["methods"] = tuple(dict.fromkeys(values["methods"]))  # keep order, drop repeats
    if "labels" in values and isinstance(values["labels"], Path):
        values["labels"] = str(values["labels"])
    values["batch_size"] = parse_batch_size(values.get("batch_size", "auto"))
    values["chunk"] = parse_batch_size(values.get("chunk", "auto"), setting("chunk"))
    values["device"] = check_device(values.get("device", "auto"))
    if values.get("precision", "fp32") not in ("fp32", "bf16"):
        raise UsageError(f"{setting('precision')} takes fp32 or bf16; got '{values['precision']}'")
    values["shard"] = parse_shard(values.get("shard"))
    if "inputs" in values:
        values["inputs"] = tuple(Path(p) for p in values["inputs"])
    if values.get("out") is not None:
        values["out"] = Path(values["out"])
    if not 0.0 <= float(values.get("alpha", 0.5)) <= 1.0:
        raise UsageError(f"{setting('alpha')} must be between 0 and 1")
    if values.get("workers") is not None and values["workers"] < 0:
        raise UsageError(f"{setting('workers')} must be 0 or more")
    return RunConfig(**values), given


def with_(config: RunConfig, **changes: Any) -> RunConfig:
    return replace(config, **changes)
