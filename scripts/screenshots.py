"""Make the README's pictures from real `salcli` runs on the repository's sample images (nothing is downloaded).

    .venv/bin/python scripts/screenshots.py          # docs/overlay_original.png, docs/signed_ig.png, docs/report.png
    .venv/bin/python scripts/screenshots.py --only report

- docs/overlay_original.png: a photo (sample_photos/rocket.jpg, 640 x 427) explained with ImageNet's geometry
  (resize 256, center crop 224) twice: --overlay-on input and --overlay-on original (the default). No published
  classifier ships with the repository, so the model is a fixed "edge energy" network written here, no random
  weights (logit 0 = the mean squared Sobel response of the picture); its vanilla gradient lies on the edges, so
  the picture shows at a glance that the map lands back where it belongs and that the cut-away border is hatched.
- docs/signed_ig.png: integrated gradients of the builtin Fashion-MNIST model on three samples, as salcli draws
  them by default (--sign all: blue < 0 < red, with the legend) and by magnitude (--sign absolute).
- docs/report.png: the gallery of `salcli report` for a small run, drawn from the report's own HTML (its table,
  texts and images) with Pillow: no headless browser is available here, so this is a static rendering of the
  page's content, not a browser screenshot.

Every picture is kept under 300 KB (palette-quantized when needed). ``--only contact`` also runs
scripts/contact_sheet.py (docs/contact_sheet.png).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SAMPLES = ROOT / "sample_images"
LIMIT = 300_000  # bytes per picture

EDGE_MODEL = '''
import torch
from torch import nn


class EdgeEnergy(nn.Module):
    """logit 0: the mean squared Sobel response (x and y, summed over RGB); logit 1: its negative."""

    def __init__(self):
        super().__init__()
        k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        self.sobel = nn.Conv2d(3, 2, 3, padding=1, bias=False)
        with torch.no_grad():
            self.sobel.weight.copy_(torch.stack([k, k.T])[:, None].repeat(1, 3, 1, 1) / 3.0)

    def forward(self, x):
        energy = self.sobel(x).pow(2).mean(dim=(1, 2, 3))[:, None]
        return torch.cat([energy, -energy], dim=1)


def build():
    return EdgeEnergy().eval()
'''


def salcli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "salcli", *map(str, args), "-q"], check=True, cwd=ROOT)


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def save(image: Image.Image, path: Path) -> None:
    """PNG, palette-quantized (256 colours) when that is what keeps it under LIMIT."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)
    if path.stat().st_size > LIMIT:
        image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    size = path.stat().st_size
    if size > LIMIT:
        raise SystemExit(f"{path} is {size:,} bytes, over {LIMIT:,}")
    print(f"wrote {path.relative_to(ROOT)} ({image.width} x {image.height}, {size // 1024} KB)")


def titled(panels: list[tuple[str, Image.Image]], gap: int = 12, size: int = 15) -> Image.Image:
    """Panels side by side, each with its title above, on white."""
    head = size + 12
    width = sum(p.width for _, p in panels) + gap * (len(panels) + 1)
    height = head + max(p.height for _, p in panels) + gap
    sheet = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(sheet)
    x = gap
    for title, panel in panels:
        pen.text((x, 6), title, fill="black", font=font(size))
        sheet.paste(panel, (x, head))
        x += panel.width + gap
    return sheet


def stacked(rows: list[Image.Image], gap: int = 4) -> Image.Image:
    width = max(r.width for r in rows)
    sheet = Image.new("RGB", (width, sum(r.height for r in rows) + gap * (len(rows) - 1)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + gap
    return sheet


# ---------------------------------------------------------------------------------------------- the pictures
def overlay_original(tmp: Path) -> None:
    (tmp / "edges.py").write_text(EDGE_MODEL)
    (tmp / "labels.txt").write_text("edge energy\nno edges\n")
    photo = SAMPLES.parent / "sample_photos" / "rocket.jpg"
    common = ["--model", f"{tmp / 'edges.py'}:build", "--labels", tmp / "labels.txt", "--resize", "256", "--crop",
              "224", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "-m", "vanilla"]
    for on in ("input", "original"):
        salcli("explain", photo, "-o", tmp / on, "--overlay-on", on, "--overlay-size", "512", *common)
    crop = Image.open(tmp / "input" / "vanilla" / "rocket.jpg.png").convert("RGB")
    full = Image.open(tmp / "original" / "vanilla" / "rocket.jpg.png").convert("RGB")
    save(titled([("--overlay-on input: the 224 px crop", crop),
                 ("--overlay-on original (default): 640 x 427, cut-away border hatched", full)]),
         DOCS / "overlay_original.png")


def signed_ig(tmp: Path) -> None:
    picks = [SAMPLES / "fashion-mnist" / c for c in ("Sneaker", "Trouser", "Bag")]
    inputs = tmp / "fm"
    for folder in picks:
        first = sorted(folder.iterdir())[0]
        (inputs / folder.name).mkdir(parents=True)
        (inputs / folder.name / first.name).symlink_to(first)
    rows = []
    for sign, title in (("all", "--sign all (default): blue < 0 < red"),
                        ("absolute", "--sign absolute: by magnitude")):
        out = tmp / f"ig-{sign}"
        salcli("explain", inputs, "-o", out, "-m", "integrated-gradients", "--sign", sign)
        overlays = [Image.open(p).convert("RGB") for p in sorted((out / "integrated-gradients").rglob("*.png"))]
        rows.append(titled([(title if i == 0 else "", im) for i, im in enumerate(overlays)], gap=8))
    save(stacked(rows), DOCS / "signed_ig.png")


class Gallery(HTMLParser):
    """The report's title, the line under it, and its gallery table: header texts, then rows of cells, each cell
    a list of ("text", str) and ("img", src) in order."""

    def __init__(self) -> None:
        super().__init__()
        self.title, self.nav, self.head = "", [], []
        self.rows: list[list[list[tuple[str, str]]]] = []
        self._in, self._cell, self._tag = None, None, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._tag.append(tag)
        if tag == "table" and "gallery" in (attrs.get("class") or ""):
            self._in = "table"
        elif tag == "p" and attrs.get("class") == "nav":
            self._in = "nav"
        elif self._in == "table" and tag == "tr":
            self.rows.append([])
        elif self._in == "table" and tag == "td":
            self._cell = []
            self.rows[-1].append(self._cell)
        elif self._in == "table" and tag == "img" and self._cell is not None:
            self._cell.append(("img", attrs["src"]))
        elif self._in == "nav" and tag == "br":
            self.nav.append("")

    def handle_endtag(self, tag):
        if self._tag:
            self._tag.pop()
        if tag == "table" and self._in == "table":
            self._in = None
        elif tag == "p" and self._in == "nav":
            self._in = None
        elif tag == "td":
            self._cell = None

    def handle_data(self, data):
        tag = self._tag[-1] if self._tag else ""
        if tag == "h1":
            self.title += data
        elif self._in == "nav":
            if not self.nav:
                self.nav.append("")
            self.nav[-1] += data
        elif self._in == "table" and tag == "th":
            self.head.append(data)
        elif self._in == "table" and self._cell is not None and data.strip():
            self._cell.append(("text", data.strip()))


def report(tmp: Path) -> None:
    inputs = tmp / "rep"
    for name in ("Ankle boot", "Bag", "Dress"):
        first = sorted((SAMPLES / "fashion-mnist" / name).iterdir())[0]
        (inputs / name).mkdir(parents=True)
        (inputs / name / first.name).symlink_to(first)
    out = tmp / "rep-out"
    salcli("explain", inputs, "-o", out, "-m", "vanilla", "-m", "gradcam", "-m", "integrated-gradients")
    salcli("report", out)
    page = Gallery()
    page.feed((out / "report.html").read_text(encoding="utf-8"))
    thumb, text_w, pad = 240, 190, 6
    columns = [text_w] + [thumb] * (len(page.head) - 1)
    small, body, big = font(12), font(14), font(20)
    cells = []
    for row in page.rows[1:]:  # the first <tr> is the header
        drawn = []
        for c, cell in enumerate(row):
            drawn.append([(kind, value if kind == "text" else _thumb(out / unquote(value), thumb))
                          for kind, value in cell])
        cells.append(drawn)
    heights = []
    for row in cells:
        h = 0
        for cell in row:
            h = max(h, sum(v.height + 2 if k == "img" else 18 for k, v in cell))
        heights.append(h + 2 * pad)
    top = 90
    width = sum(columns) + pad * 2 * len(columns) + 2 * pad
    height = top + 28 + sum(heights) + pad
    sheet = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(sheet)
    pen.text((pad * 2, 12), page.title, fill="#222", font=big)
    for i, line in enumerate(page.nav):
        pen.text((pad * 2, 44 + 18 * i), line.strip(), fill="#1a4fb5" if i else "#222", font=body)
    x0s = [pad]
    for w in columns[:-1]:
        x0s.append(x0s[-1] + w + 2 * pad)
    y = top
    pen.rectangle((pad, y, width - pad, y + 28), fill="#f2f2f2", outline="#ccc")
    for x, name in zip(x0s, page.head):
        pen.text((x + pad, y + 6), name, fill="#222", font=body)
    y += 28
    for row, h in zip(cells, heights):
        pen.rectangle((pad, y, width - pad, y + h), outline="#ccc")
        for x, w, cell in zip(x0s, columns, row):
            pen.line((x, y, x, y + h), fill="#ccc")
            cy = y + pad
            for kind, value in cell:
                if kind == "img":
                    sheet.paste(value, (x + pad, cy))
                    cy += value.height + 2
                else:
                    pen.text((x + pad, cy), _cut(value, body if len(cell) < 6 else small, w), fill="#222",
                             font=body if len(cell) < 6 else small)
                    cy += 18
        y += h
    save(sheet, DOCS / "report.png")


def _thumb(path: Path, width: int) -> Image.Image:
    im = Image.open(path).convert("RGB")
    height = round(im.height * width / im.width)
    return im.resize((width, height), Image.NEAREST if im.width < width else Image.LANCZOS)


def _cut(text: str, f, width: int) -> str:
    while len(text) > 3 and f.getlength(text) > width:
        text = text[:-2] + "…"
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("overlay", "signed", "report", "contact"), action="append",
                    help="make only these (repeatable); default: all")
    args = ap.parse_args()
    chosen = set(args.only or ("overlay", "signed", "report"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "overlay" in chosen:
            overlay_original(tmp)
        if "signed" in chosen:
            signed_ig(tmp)
        if "report" in chosen:
            report(tmp)
    if "contact" in chosen:
        subprocess.run([sys.executable, str(ROOT / "scripts" / "contact_sheet.py"), "--images", "5"], check=True)


if __name__ == "__main__":
    main()
