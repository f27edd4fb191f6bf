"""The measures registry: every score `salcli evaluate` and `salcli sanity` report, declared once.

A ``Metric`` is one column: its name (in metrics.jsonl, evaluation.json, sanity.json), the table's label, which
direction is better, whether it is compared with the random-map baseline (the ✓/✗), its gate option
(``--min-NAME`` when higher is better, ``--max-NAME`` when lower is), how it is aggregated over images and the
command that reports it. A ``Measure`` computes one or more metrics for a batch of maps (``measure(batch)``:
``{metric: [value or None per image]}``) and declares what it needs: ``mask`` (an object annotation),
``engine`` (recomputing maps with the run's engine; never for the random map). The CLI's gate options, the
evaluate table's columns, the ✓/✗ directions, the gates and the README's table are all generated from here.

Adding a measure is one module in this package (it is found by ``pkgutil``) plus its test. Importing this
package imports neither torch nor NumPy: ``salcli --help`` builds the gate options from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..registry import discover

HIGHER, LOWER = "higher", "lower"


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    help: str
    better: str | None = HIGHER  # HIGHER, LOWER, or None (reported, not ranked)
    vs_random: bool = True  # compared with the random-map baseline (✓/✗)
    gate: bool = True  # has a --min-/--max- gate option
    aggregate: str = "mean"  # "mean" over images, or "count" of true values
    table: bool = True  # a column of the printed table (every metric is in the JSON files)
    command: str = "evaluate"

    @property
    def gate_option(self) -> str | None:
        """The gate's keyword (``min_energy``), or None."""
        if not self.gate or self.better is None:
            return None
        return f"{'min' if self.better == HIGHER else 'max'}_{self.name}"

    @property
    def gate_flag(self) -> str | None:
        return "--" + self.gate_option.replace("_", "-") if self.gate_option else None

    def worse(self, value: float, bar: float) -> bool:
        """True when ``value`` is on the wrong side of ``bar``."""
        return value < bar if self.better == HIGHER else value > bar

    def beats(self, value: float, other: float) -> bool:
        return value > other if self.better == HIGHER else value < other


@dataclass
class Batch:
    """What a measure sees: one method's maps for a batch of images.

    ``x`` (B, C, H, W) normalized inputs on the engine's device; ``maps`` (B, H, W) float32 on the CPU;
    ``target`` (B,); ``keys`` the images' relative paths (random draws are seeded by ``seed`` and the key);
    ``masks``: a bool (H, W) mask at the input resolution per image, or None; ``engine``: the run's
    ``Explainer`` (its ``forward`` runs the model as ``explain`` ran it); ``method``: the method's name, or
    ``random`` for the baseline; ``options``: the command's settings (tolerance, top_k, steps, ...);
    ``curves``: where a measure leaves per-image curves to average (name -> list of (n,) tensors)."""

    keys: list[str]
    x: Any
    maps: Any
    target: Any
    seed: int
    engine: Any
    method: str
    masks: list[Any]
    options: Any
    curves: dict[str, list] = field(default_factory=dict)


class Measure:
    """Base class: set ``metrics`` and ``needs``; implement ``measure``."""

    name: ClassVar[str] = ""
    order: ClassVar[int] = 50  # the measures' columns appear in this order in tables
    metrics: ClassVar[tuple[Metric, ...]] = ()
    needs: ClassVar[frozenset[str]] = frozenset()
    command: ClassVar[str] = "evaluate"
    curves: ClassVar[dict[str, str]] = {}  # curve name -> plot title, for the mean curves it leaves in Batch.curves

    def measure(self, batch: Batch) -> dict[str, list]:
        raise NotImplementedError(f"{type(self).__name__}.measure")


MEASURES: dict[str, type[Measure]] = {}
METRICS: dict[str, Metric] = {}
_OWNER: dict[str, type[Measure]] = {}


def register(cls: type[Measure]) -> type[Measure]:
    """Class decorator; a measure or metric name registered twice is an error."""
    if cls.name in MEASURES:
        raise ValueError(f"measure '{cls.name}' is registered twice")
    for metric in cls.metrics:
        if metric.name in METRICS:
            raise ValueError(f"metric '{metric.name}' is registered twice")
    MEASURES[cls.name] = cls
    for metric in cls.metrics:
        METRICS[metric.name] = metric
        _OWNER[metric.name] = cls
    return cls


def unregister(cls: type[Measure]) -> None:
    MEASURES.pop(cls.name, None)
    for metric in cls.metrics:
        METRICS.pop(metric.name, None)
        _OWNER.pop(metric.name, None)


def metrics(command: str = "evaluate") -> list[Metric]:
    return sorted((m for m in METRICS.values() if m.command == command), key=lambda m: _OWNER[m.name].order)


def gated(command: str) -> list[Metric]:
    """The metrics of ``command`` that have a gate option."""
    return [m for m in metrics(command) if m.gate_option]


def by_gate(option: str) -> Metric:
    return next(m for m in METRICS.values() if m.gate_option == option)


def measures(command: str = "evaluate") -> list[Measure]:
    return [cls() for cls in sorted(MEASURES.values(), key=lambda c: c.order) if cls.command == command]


def curve_titles(command: str = "evaluate") -> dict[str, str]:
    return {name: title for m in measures(command) for name, title in m.curves.items()}


discover(__name__, __path__)
