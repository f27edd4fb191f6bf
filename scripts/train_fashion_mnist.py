"""Train salcli's builtin model on Fashion-MNIST and write its weights as safetensors.

Data: Debian's ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``; MIT license).
Deterministic: fixed seed, one thread order, no data-dependent nondeterminism on the CPU.

    .venv/bin/python scripts/train_fashion_mnist.py            # writes salcli/builtin/fashion_mnist.safetensors
    .venv/bin/python scripts/train_fashion_mnist.py --permute-labels --out /tmp/random_labels.safetensors

``--permute-labels`` trains on randomly permuted labels (the data-randomization sanity test).
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from salcli.builtin import FASHION_MNIST_PREPROCESS, FashionCNN

DATA = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "salcli" / "builtin" / "fashion_mnist.safetensors"


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (images: (N, 28, 28) uint8; labels: (N,) uint8)."""
    raw = gzip.open(path, "rb").read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(split: str, data: Path = DATA) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(data / f"{split}-images-idx3-ubyte.gz")
    labels = read_idx(data / f"{split}-labels-idx1-ubyte.gz")
    x = torch.from_numpy(images.copy()).float().div_(255).unsqueeze(1)
    mean, std = FASHION_MNIST_PREPROCESS["mean"][0], FASHION_MNIST_PREPROCESS["std"][0]
    return (x - mean) / std, torch.from_numpy(labels.astype(np.int64))


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return (pred == y).float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--permute-labels", action="store_true")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    x_train, y_train = load_split("train", args.data)
    x_test, y_test = load_split("t10k", args.data)
    g = torch.Generator().manual_seed(args.seed)
    if args.permute_labels:
        y_train = y_train[torch.randperm(len(y_train), generator=g)]

    model = FashionCNN()
    steps = args.epochs * ((len(x_train) + args.batch_size - 1) // args.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=g)
        for i in range(0, len(order), args.batch_size):
            idx = order[i:i + args.batch_size]
            xb = x_train[idx]
            # light augmentation: random horizontal flips (garments are roughly mirror-symmetric)
            flip = torch.rand(len(idx), generator=g) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), y_train[idx])
            loss.backward()
            opt.step()
            sched.step()
        acc = evaluate(model, x_test, y_test)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.3f}  test accuracy {acc:.4f}  "
              f"({time.perf_counter() - start:.0f} s)", flush=True)

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out), metadata={"test_accuracy": f"{acc:.4f}", "epochs": str(args.epochs),
                                               "seed": str(args.seed), "permuted_labels": str(args.permute_labels)})
    print(f"wrote {args.out} (test accuracy {acc:.4f})")


if __name__ == "__main__":
    main()
