"""Write sample_images/fashion-mnist/<class>/t10k-<index>.png: the first 3 test images of each class, and
their object masks at sample_masks/fashion-mnist/<class>/t10k-<index>.png (the garment is the
non-black foreground: pixel value > 0 is white).

Folder names are the class names with '/' replaced by '-' ("T-shirt/top" -> "T-shirt-top"), so the folder
says the true label. Data: Debian's dataset-fashion-mnist (MIT license). Deterministic.

    .venv/bin/python scripts/make_samples.py
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from salcli.builtin import FASHION_MNIST_LABELS
from train_fashion_mnist import DATA, read_idx

ROOT = Path(__file__).resolve().parents[1] / "sample_images" / "fashion-mnist"
MASKS = ROOT.parents[1] / "sample_masks" / "fashion-mnist"
PER_CLASS = 3


def folder_name(label: str) -> str:
    return label.replace("/", "-")


def main() -> None:
    images = read_idx(DATA / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(DATA / "t10k-labels-idx1-ubyte.gz")
    for cls, name in enumerate(FASHION_MNIST_LABELS):
        picked = [i for i, y in enumerate(labels) if y == cls][:PER_CLASS]
        folder = ROOT / folder_name(name)
        folder.mkdir(parents=True, exist_ok=True)
        (MASKS / folder_name(name)).mkdir(parents=True, exist_ok=True)
        for i in picked:
            Image.fromarray(images[i], "L").save(folder / f"t10k-{i:05d}.png", optimize=True)
            mask = ((images[i] > 0) * 255).astype("uint8")
            Image.fromarray(mask, "L").save(MASKS / folder_name(name) / f"t10k-{i:05d}.png", optimize=True)
    print(f"wrote {PER_CLASS * len(FASHION_MNIST_LABELS)} images under {ROOT} and their masks under {MASKS}")


if __name__ == "__main__":
    main()
