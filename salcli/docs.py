"""Generate the README's method table from the registry.

    python -m salcli.docs            # print the table
    python -m salcli.docs --write    # replace the table between the markers in README.md
"""

from __future__ import annotations

import sys
from pathlib import Path

BEGIN, END = "<!-- methods:begin -->", "<!-- methods:end -->"


def method_table() -> str:
    from .methods import describe

    lines = ["| method | paper | map convention (`.npy`) | passes per image | parameters (default) |",
             "|---|---|---|---|---|"]
    for r in describe():
        params = ", ".join(f"`{p['name']}={p['default']}`" for p in r["params"]) or "none"
        layer = " (layer)" if r["needs_layer"] else ""
        lines.append(f"| `{r['name']}`{layer} | {r['paper']} | {r['convention']} | {r['passes']} | {params} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    table = method_table()
    if "--write" not in argv:
        print(table)
        return
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    readme.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


if __name__ == "__main__":
    main(sys.argv[1:])
