"""Render a contact sheet: one row per sample image, one column per method, from a real `salcli explain` run.

    .venv/bin/python scripts/contact_sheet.py                      # writes docs/contact_sheet.png
    .venv/bin/python scripts/contact_sheet.py --out sheet.png -m vanilla -m gradcam --images 4

Uses the builtin Fashion-MNIST model and one image per class from sample_images/fashion-mnist.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "contact_sheet.png")
    ap.add_argument("-m", "--method", action="append", help="methods (default: every registered method)")
    ap.add_argument("--images", type=int, default=6, help="how many sample classes (rows)")
    ap.add_argument("--cell", type=int, default=112, help="cell size in pixels")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from salcli.methods import names

    chosen = args.method or names()
    classes = sorted((ROOT / "sample_images" / "fashion-mnist").iterdir())[: args.images]
    picks = [sorted(c.iterdir())[0] for c in classes]
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "in"
        for p in picks:
            (inputs / p.parent.name).mkdir(parents=True)
            (inputs / p.parent.name / p.name).symlink_to(p)
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "salcli", "explain", str(inputs), "-o", str(out), "-q"]
        for m in chosen:
            cmd += ["-m", m]
        subprocess.run(cmd, check=True)
        font = ImageFont.load_default(size=13)
        head, side = 22, 130
        sheet = Image.new("RGB", (side + args.cell * len(chosen), head + args.cell * len(picks)), "white")
        draw = ImageDraw.Draw(sheet)
        for col, m in enumerate(chosen):
            draw.text((side + col * args.cell + 4, 4), m, fill="black", font=font)
        for row, p in enumerate(picks):
            draw.text((4, head + row * args.cell + args.cell // 2 - 7), p.parent.name, fill="black", font=font)
            for col, m in enumerate(chosen):
                overlay = out / m / p.parent.name / f"{p.name}.png"
                if overlay.exists():
                    tile = Image.open(overlay).convert("RGB")
                    tile = tile.crop((0, 0, tile.width, tile.width))  # the picture, without the caption
                    tile = tile.resize((args.cell, args.cell), Image.LANCZOS)
                    sheet.paste(tile, (side + col * args.cell, head + row * args.cell))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out} ({len(picks)} images x {len(chosen)} methods)")


if __name__ == "__main__":
    main()
