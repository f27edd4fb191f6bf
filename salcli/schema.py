"""The types and ranges of a preset (``--config FILE.toml``), checked by pydantic before any value is used: a
wrong type, a NaN or an out-of-range number is a usage error that names the key, never a traceback.

Strict: TOML's own types only (a string is not a number, a bool is not an int), except that an int is taken
where a float is expected (``alpha = 1``). ``[methods.NAME]`` tables are checked by the method's own parameter
types when the run is configured (``methods.create``); this module checks everything else.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import UsageError

MAX_SIDE = 4096  # pixels: an input side beyond this would not fit a model in memory (and is surely a typo)
INTERPOLATION = Literal["bilinear", "bicubic", "nearest"]

# Normalization constants for inputs scaled to [0, 1]: within these bounds (x - mean) / std stays finite in
# float32 (a std of 1e-300 or a mean of 1e300 made every input inf, every score NaN, and the manifest unwritable).
Finite = Annotated[float, Field(ge=-1e6, le=1e6, allow_inf_nan=False)]
Positive = Annotated[float, Field(ge=1e-6, le=1e6, allow_inf_nan=False)]
Side = Annotated[int, Field(ge=1, le=MAX_SIDE)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class PreprocessTable(_Strict):
    resize: Side | None = None
    crop: Side | None = None
    mean: Union[list[Finite], Finite, None] = None
    std: Union[list[Positive], Positive, None] = None
    channels: Literal[1, 3] | None = None
    interpolation: INTERPOLATION | None = None


class Preset(_Strict):
    description: str | None = None
    model: str | None = None
    weights: str | None = None
    weights_key: str | None = None
    trust_checkpoint: bool | None = None
    labels: Union[str, list[str], None] = None
    methods: list[str] | None = None
    params: dict[str, dict[str, Any]] | None = None
    target: Union[str, Annotated[int, Field(ge=0)], None] = None
    layer: str | None = None
    device: str | None = None
    batch_size: Union[Literal["auto"], Annotated[int, Field(ge=1)], None] = None
    chunk: Union[Literal["auto"], Annotated[int, Field(ge=1)], None] = None
    workers: Annotated[int, Field(ge=0)] | None = None
    precision: Literal["fp32", "bf16"] | None = None
    optimize: bool | None = None
    max_failures: Union[Annotated[int, Field(ge=0)], str, None] = None
    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None
    colormap: str | None = None
    alpha: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    preprocess: PreprocessTable | None = None
    overlay_on: Literal["original", "input"] | None = None
    overlay_size: Annotated[int, Field(ge=16, le=MAX_SIDE)] | None = None
    sign: Literal["all", "positive", "negative", "absolute"] | None = None
    scale: Union[str, Annotated[float, Field(gt=0, allow_inf_nan=False)], None] = None
    format: str | None = None
    overlays: bool | None = None
    map_dtype: Literal["float32", "float16"] | None = None
    layer_maps: Literal["input", "native"] | None = None


KEYS = tuple(name for name in Preset.model_fields if name != "params")

MAX_BATCH = 65_536  # most images per batch or model inputs per pass


class RunValues(BaseModel):
    """What the command line and a preset together give, once parsed: checked the same way whichever gave it."""

    model_config = ConfigDict(extra="ignore")
    preprocess: PreprocessTable
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    batch_size: Union[Literal["auto"], Annotated[int, Field(ge=1, le=MAX_BATCH)]] = "auto"
    chunk: Union[Literal["auto"], Annotated[int, Field(ge=1, le=MAX_BATCH)]] = "auto"
    workers: Annotated[int, Field(ge=0, le=256)] | None = None
    alpha: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.5
    overlay_size: Annotated[int, Field(ge=16, le=MAX_SIDE)] = 512


def check_values(values: dict[str, Any]) -> None:
    """Raise UsageError naming the option (``setting``) of the first value out of type or range."""
    from .errors import setting

    data = {k: v for k, v in values.items() if k in RunValues.model_fields and v is not None}
    data["preprocess"] = {k: list(v) if isinstance(v, tuple) else v for k, v in values.get("preprocess", {}).items()}
    try:
        RunValues.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        loc = [str(p) for p in error["loc"] if not _is_type_tag(str(p))]
        name = loc[1] if loc[:1] == ["preprocess"] and len(loc) > 1 else loc[0] if loc else "?"
        where = setting(name) + (f" (value {int(loc[2]) + 1})" if len(loc) > 2 and loc[2].isdigit() else "")
        raise UsageError(f"{where}: {_reason(error)} (got {error.get('input')!r})") from None


def check_preset(data: dict[str, Any], where: str) -> None:
    """Raise UsageError naming the first key of ``data`` (a preset read from ``where``) whose value has the
    wrong type or is out of range."""
    try:
        Preset.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        loc = [str(part) for part in error["loc"]]
        # a Union reports each alternative; the key is what the user needs, the first message says enough
        loc = [part for part in loc if not _is_type_tag(part)]
        key = ".".join(loc) if loc else "?"
        if key.startswith("params."):
            key = "methods." + key[len("params."):]
        value = error.get("input")
        raise UsageError(f"'{key}' in {where}: {_reason(error)} (got {value!r})") from None


def _is_type_tag(part: str) -> bool:
    """pydantic's names of a Union's branches in an error location (``list[...]``, ``int``, ``literal[...]``)."""
    return part in ("str", "int", "float", "bool") or "[" in part or part.startswith(("function-", "constrained"))


def _reason(error: dict[str, Any]) -> str:
    kind = error.get("type", "")
    if kind == "finite_number":
        return "must be a finite number (NaN and infinity are refused)"
    message = str(error.get("msg", "invalid value"))
    return message[0].lower() + message[1:]
