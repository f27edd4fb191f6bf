"""Quality gates: thresholds on evaluate/sanity results that turn into exit code 4. Pure."""

from __future__ import annotations

from typing import Any

# option name -> (metric column, True if the value must be at least the bar, False if at most)
GATES = {
    "min_pointing_game": ("pointing_game", True),
    "min_energy": ("energy", True),
    "max_deletion_auc": ("deletion_auc", False),
    "min_insertion_auc": ("insertion_auc", True),
    "min_stability": ("stability", True),
    "max_randomization_similarity": ("randomization_similarity", False),
}


def check(rows: list[dict[str, Any]], bars: dict[str, float | None]) -> list[str]:
    """One line per failed gate, naming the metric, the method, the value and the bar.

    A gate whose metric was not measured for a method (for example no masks were given) fails too: a CI job
    that asks for a bar must not pass silently because nothing was measured.
    """
    failures = []
    for option, bar in bars.items():
        if bar is None:
            continue
        column, at_least = GATES[option]
        flag = "--" + option.replace("_", "-")
        for row in rows:
            if row.get("method") == "random":
                continue
            value = row.get(column)
            if value is None:
                failures.append(f"{flag}: {column} of {row['method']} was not measured (bar {bar})")
            elif (value < bar) if at_least else (value > bar):
                word = "below" if at_least else "above"
                failures.append(f"{flag}: {column} of {row['method']} is {value:.4f}, {word} the bar {bar}")
    return failures
