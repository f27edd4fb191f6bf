"""Render a contact sheet from a real `salcli explain` run: one row per method, one column per sample image.

    .venv/bin/python scripts/contact_sheet.py                      # writes docs/contact_sheet.png
    .venv/bin/python scripts/contact_sheet.py --out sheet.png -m vanilla -m gradcam --images 4

Uses the builtin Fashion-MNIST model and one image per class from sample_images/fashion-mnist. Methods are rows
(so the sheet stays about 800 px wide, the README's width, and every label is readable there); the first row is
the original picture. Each row's label carries a small legend: neg (blue) 0 pos (red) for signed maps (drawn as
salcli draws them by default), low - high in the --colormap for maps >= 0. Each tile has its own scale (--scale image).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
FONT = 15  # px: column and row labels (about 14 px once the sheet is shown 800 px wide)
SMALL = 12  # px: the legend words under a row label
GAP = 6
PAD = 8


@dataclass
class Sheet:
    """Where everything goes: ``texts`` (text, font size, box), ``tiles`` (row, column, box), ``bars`` (row, box);
    boxes are (x0, y0, x1, y1), x1 and y1 excluded. Row 0 is the original picture."""

    size: tuple[int, int]
    texts: list[tuple[str, int, tuple[int, int, int, int]]] = field(default_factory=list)
    tiles: list[tuple[int, int, tuple[int, int, int, int]]] = field(default_factory=list)
    bars: list[tuple[int, tuple[int, int, int, int]]] = field(default_factory=list)


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def text_box(text: str, size: int, at: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box the ink of ``text`` drawn at ``at`` (its anchor, top-left) covers."""
    x0, y0, x1, y1 = font(size).getbbox(text)
    return (at[0] + x0, at[1] + y0, at[0] + x1, at[1] + y1)


def fit(text: str, size: int, width: int) -> str:
    """``text`` cut with an ellipsis until it is at most ``width`` px wide."""
    while len(text) > 2 and font(size).getlength(text) > width:
        text = text[:-2].rstrip() + "…" if not text.endswith("…") else text[:-2] + "…"
    return text


def legend_words(signed: bool) -> tuple[str, str, str]:
    return ("neg", "0", "pos") if signed else ("low", "", "high")


def layout(rows: list[str], columns: list[str], signed: list[bool], cell: int = 112) -> Sheet:
    """Place the column headers (the sample classes), the row labels (``rows``: "original", then the methods) with
    their legends (``signed``, one per row; the original row has none), and the tiles. Nothing overlaps: every text
    is measured, and cut to its cell when too wide."""
    label_w = max(150, max(int(font(FONT).getlength(r)) for r in rows) + 2 * PAD)
    head_h = FONT + 2 * PAD
    step = cell + GAP
    sheet = Sheet((label_w + len(columns) * step + PAD, head_h + len(rows) * step + PAD))
    for c, name in enumerate(columns):
        text = fit(name, FONT, cell - 4)
        width = font(FONT).getlength(text)
        x = label_w + c * step + int((cell - width) // 2)
        sheet.texts.append((text, FONT, text_box(text, FONT, (x, PAD))))
    for r, name in enumerate(rows):
        y = head_h + r * step
        sheet.texts.append((name, FONT, text_box(name, FONT, (PAD, y + 4))))
        for c in range(len(columns)):
            x = label_w + c * step
            sheet.tiles.append((r, c, (x, y, x + cell, y + cell)))
        if r == 0:
            continue  # the original picture has no colours to explain
        bar_w = min(label_w - 2 * PAD, 110)
        by = y + 4 + FONT + 8
        sheet.bars.append((r, (PAD, by, PAD + bar_w, by + 9)))
        left, middle, right = legend_words(signed[r])
        ty = by + 9 + 3
        sheet.texts.append((left, SMALL, text_box(left, SMALL, (PAD, ty))))
        if middle:
            mx = PAD + bar_w // 2 - int(font(SMALL).getlength(middle) // 2)
            sheet.texts.append((middle, SMALL, text_box(middle, SMALL, (mx, ty))))
        rx = PAD + bar_w - int(font(SMALL).getlength(right))
        sheet.texts.append((right, SMALL, text_box(right, SMALL, (rx, ty))))
    return sheet


def draw(sheet: Sheet, tiles: dict[tuple[int, int], np.ndarray], bars: dict[int, np.ndarray]) -> Image.Image:
    image = Image.new("RGB", sheet.size, "white")
    pen = ImageDraw.Draw(image)
    for text, size, box in sheet.texts:
        x0, y0, _, _ = font(size).getbbox(text)
        pen.text((box[0] - x0, box[1] - y0), text, fill="black", font=font(size))
    for r, c, box in sheet.tiles:
        if (r, c) in tiles:
            tile = Image.fromarray(tiles[(r, c)])
            if tile.size != (box[2] - box[0], box[3] - box[1]):
                tile = tile.resize((box[2] - box[0], box[3] - box[1]), Image.NEAREST)
            image.paste(tile, box[:2])
    for r, box in sheet.bars:
        ramp = bars[r][np.linspace(0, 255, box[2] - box[0]).round().astype(int)]
        image.paste(Image.fromarray(np.repeat(ramp[None], box[3] - box[1], axis=0)), box[:2])
        pen.rectangle((box[0] - 1, box[1] - 1, box[2], box[3]), outline=(150, 150, 150))
    return image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "contact_sheet.png")
    ap.add_argument("-m", "--method", action="append", help="methods (default: every registered method)")
    ap.add_argument("--images", type=int, default=5, help="how many sample classes (columns)")
    ap.add_argument("--cell", type=int, default=112, help="tile size in pixels")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from salcli import overlay, render
    from salcli.images import decode
    from salcli.methods import get, names

    chosen = args.method or names()
    classes = sorted((ROOT / "sample_images" / "fashion-mnist").iterdir())[: args.images]
    picks = [sorted(c.iterdir())[0] for c in classes]
    display = overlay.Display()
    signed = [False] + [overlay.mode_of(get(m), display) == "all" for m in chosen]
    sheet = layout(["original", *chosen], [p.parent.name for p in picks], signed, args.cell)
    tiles: dict[tuple[int, int], np.ndarray] = {}
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
        resize = __import__("json").loads((out / "run.json").read_text())["preprocess"]["resize"]
        for col, p in enumerate(picks):
            im = decode(p)
            picture = np.asarray(im)[:, :, None] if im.mode == "L" else np.asarray(im)
            tiles[(0, col)] = np.repeat(picture, 3, axis=2) if picture.shape[2] == 1 else picture
            for row, m in enumerate(chosen, 1):
                npy = out / m / p.parent.name / f"{p.name}.npy"
                if npy.exists():
                    saliency = np.load(npy)
                    tiles[(row, col)] = render.overlay_on_original(
                        picture, im.size, saliency, resize, display.colormap, display.alpha,
                        mode=overlay.mode_of(get(m), display, saliency), legend=False, max_side=args.cell,
                        min_side=args.cell)
    bars = {r: render.colormap_lut(render.DIVERGING if signed[r] else display.colormap) for r in range(1, len(signed))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    draw(sheet, tiles, bars).save(args.out, optimize=True)
    print(f"wrote {args.out} ({len(picks)} images x {len(chosen)} methods, {sheet.size[0]} x {sheet.size[1]} px)")


if __name__ == "__main__":
    main()
