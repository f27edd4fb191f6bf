"""Generate the README's method, model-source and metric tables from their registries.

    python -m salcli.docs            # print the tables
    python -m salcli.docs --write    # replace each table between its markers in README.md (where present)
"""

from __future__ import annotations

import sys
from pathlib import Path

BEGIN, END = "<!-- methods:begin -->", "<!-- methods:end -->"
SOURCES_BEGIN, SOURCES_END = "<!-- sources:begin -->", "<!-- sources:end -->"
METRICS_BEGIN, METRICS_END = "<!-- metrics:begin -->", "<!-- metrics:end -->"


def method_table() -> str:
    from .methods import describe

    lines = ["| method | paper | map convention (`.npy`) | passes per image | parameters (default) |",
             "|---|---|---|---|---|"]
    for r in describe():
        params = ", ".join(f"`{p['name']}={p['default']}`" for p in r["params"]) or "none"
        layer = " (layer)" if r["needs_layer"] else ""
        lines.append(f"| `{r['name']}`{layer} | {r['paper']} | {r['convention']} | {r['passes']} | {params} |")
    return "\n".join(lines)


def source_table() -> str:
    """One row per model source, in the order salcli asks them: its name and what ``--model`` takes."""
    from .sources import describe

    lines = ["| source | `--model` takes |", "|---|---|"]
    lines += [f"| `{r['name']}` | {r['help']} |" for r in describe()]
    return "\n".join(lines)


def metric_table() -> str:
    """One row per metric of `evaluate` and `sanity`: what it measures, which way is better, its gate."""
    from . import measures

    lines = ["| metric | command | measures | better | vs random map | gate |", "|---|---|---|---|---|---|"]
    for command in ("evaluate", "sanity"):
        for m in measures.metrics(command):
            better = {"higher": "higher ↑", "lower": "lower ↓"}.get(m.better or "", "-")
            total = " (count of images)" if m.aggregate == "count" else ""
            lines.append(f"| `{m.name}` | {command} | {m.help}{total} | {better} | {'✓/✗' if m.vs_random else '-'} "
                         f"| {f'`{m.gate_flag}`' if m.gate_flag else '-'} |")
    return "\n".join(lines)


def between(text: str, begin: str, end: str) -> str | None:
    """The text between the markers, without the newlines next to them; None when a marker is missing."""
    if begin not in text or end not in text:
        return None
    return text.partition(begin)[2].partition(end)[0].strip("\n")


def replace(text: str, begin: str, end: str, table: str) -> str:
    """``text`` with ``table`` between the markers; unchanged when a marker is missing."""
    if between(text, begin, end) is None:
        return text
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    return f"{head}{begin}\n{table}\n{end}{tail}"


def main(argv: list[str]) -> None:
    tables = [(BEGIN, END, method_table()), (SOURCES_BEGIN, SOURCES_END, source_table()),
              (METRICS_BEGIN, METRICS_END, metric_table())]
    if "--write" not in argv:
        print("\n\n".join(table for _, _, table in tables))
        return
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text()
    for begin, end, table in tables:
        text = replace(text, begin, end, table)
    readme.write_text(text)


if __name__ == "__main__":
    main(sys.argv[1:])
