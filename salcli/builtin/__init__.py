"""Models that ship inside salcli, weights included (safetensors next to this file).

``builtin:fashion-mnist`` is a small CNN trained by ``scripts/train_fashion_mnist.py`` on Fashion-MNIST
(Zalando, MIT license). Its preprocessing and class names travel with it, so it needs no preset.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent

FASHION_MNIST_LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# Mean and std of the Fashion-MNIST training set, pixel values in [0, 1].
FASHION_MNIST_PREPROCESS = {"resize": 28, "crop": 28, "mean": (0.2860,), "std": (0.3530,), "channels": 1}


class FashionCNN(nn.Module):
    """Two conv blocks (28 -> 14 -> 7) and a small classifier; ReLUs are modules, never in-place."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.3),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


BUILTINS = {
    "fashion-mnist": {
        "factory": FashionCNN,
        "weights": HERE / "fashion_mnist.safetensors",
        "labels": FASHION_MNIST_LABELS,
        "preprocess": FASHION_MNIST_PREPROCESS,
    },
}
