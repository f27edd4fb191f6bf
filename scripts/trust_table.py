"""Measure the README's "Can I trust these maps?" table on the builtin model and the sample images.

    .venv/bin/python scripts/trust_table.py            # prints the table (about 6 minutes on 2 CPU cores)
    .venv/bin/python scripts/trust_table.py --write    # and puts it into README.md between its markers

It runs the three public commands and nothing else:
  salcli explain  sample_images/fashion-mnist -o WORK/run  -m <every method>
  salcli evaluate WORK/run --masks sample_masks/fashion-mnist --json
  salcli sanity   sample_images/fashion-mnist -o WORK/sanity -m <every method> --json   (first 16 images)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- trust:begin -->", "<!-- trust:end -->"
COLUMNS = (("pointing_game", "pointing game"), ("energy", "energy"), ("deletion_auc", "deletion AUC, zero ↓"),
           ("deletion_road_auc", "deletion AUC, ROAD ↓"), ("insertion_auc", "insertion AUC, blur ↑"))


def salcli(*args: str) -> dict:
    cmd = [sys.executable, "-m", "salcli", *args]
    print("+ salcli " + " ".join(args[:6]) + (" ..." if len(args) > 6 else ""), file=sys.stderr)
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode not in (0, 4):
        sys.exit(f"salcli {args[0]} exited {done.returncode}")
    return json.loads(done.stdout) if done.stdout.strip() else {}


def cell(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    mark = row.get("beats_random", {}).get(key)
    return f"{value:.3f}" + ("" if mark is None else " ✓" if mark else " ✗")


def table(evaluation: dict, sanity: dict) -> str:
    verdicts = {r["method"]: r for r in sanity["methods"]}
    head = ["method", *(title for _, title in COLUMNS), "stability (fragile of 30)", "sanity: final Spearman"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = sorted(evaluation["methods"], key=lambda r: (r["method"] != "random", r["method"]))
    for row in rows:
        stab = "-" if row.get("stability") is None else f"{row['stability']:.2f} ({row.get('fragile', 0)})"
        san = verdicts.get(row["method"])
        sanity_cell = "-" if san is None or san["randomization_similarity"] is None else \
            f"{san['randomization_similarity']:.2f} {san['verdict']}"
        name = "random map (baseline)" if row["method"] == "random" else f"`{row['method']}`"
        lines.append("| " + " | ".join([name, *(cell(row, k) for k, _ in COLUMNS), stab, sanity_cell]) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="replace the table in README.md")
    ap.add_argument("--workdir", type=Path, help="keep the run here (default: a temporary folder)")
    args = ap.parse_args()
    methods = [m["name"] for m in salcli("methods", "--json")]
    chosen = [a for m in methods for a in ("-m", m)]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        samples = str(ROOT / "sample_images" / "fashion-mnist")
        salcli("explain", samples, "-o", str(work / "run"), *chosen, "--overwrite", "-q")
        masks = str(ROOT / "sample_masks" / "fashion-mnist")
        evaluation = salcli("evaluate", str(work / "run"), "--masks", masks, "--json", "-q")
        sanity = salcli("sanity", samples, "-o", str(work / "sanity"), *chosen, "--json", "-q")
    text = table(evaluation, sanity)
    print(text)
    if args.write:
        readme = ROOT / "README.md"
        before, rest = readme.read_text().split(BEGIN)
        _, after = rest.split(END)
        readme.write_text(f"{before}{BEGIN}\n{text}\n{END}{after}")


if __name__ == "__main__":
    main()
