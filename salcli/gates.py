"""Quality gates: thresholds on evaluate/sanity results that turn into exit code 4. Pure.

Every metric with a direction has a gate (``measures``): ``--min-NAME`` when higher is better, ``--max-NAME``
when lower is; ``bars`` maps the gate's keyword (``min_energy``) to its bar, or None when not asked for.
"""

from __future__ import annotations

from typing import Any

from . import measures
from .errors import setting


def check(rows: list[dict[str, Any]], bars: dict[str, float | None]) -> list[str]:
    """One line per failed gate, naming the metric, the method, the value and the bar (the gate's option as
    ``errors.setting``, for the caller to word).

    A gate whose metric was not measured for a method (for example no masks were given) fails too: a CI job
    that asks for a bar must not pass silently because nothing was measured.
    """
    failures = []
    for option, bar in bars.items():
        if bar is None:
            continue
        metric = measures.by_gate(option)
        for row in rows:
            if row.get("method") == "random":
                continue
            value = row.get(metric.name)
            if value is None:
                failures.append(f"{setting(metric.gate_option)}: {metric.name} of {row['method']} was not measured (bar {bar})")
            elif metric.worse(value, bar):
                word = "below" if metric.better == measures.HIGHER else "above"
                failures.append(f"{setting(metric.gate_option)}: {metric.name} of {row['method']} is {value:.4f}, {word} "
                                f"the bar {bar}")
    return failures
