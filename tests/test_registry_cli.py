"""Generated from the registry: every method runs through the CLI, with the automatic layer choice, on the
builtin model and on torchvision resnet18, efficientnet_b0, vit_b_16 and swin_t (random weights)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import PHOTOS, SAMPLES, manifest
from helpers import torchvision_weights

from salcli.methods import names

# Parameters that make each method cheap enough to run on five models in a test; the methods' defaults are
# pinned elsewhere (agreement with Captum and pytorch-grad-cam).
CHEAP = {
    "smoothgrad": ["samples=2"], "integrated-gradients": ["steps=2"], "gradient-shap": ["samples=2"],
    "scorecam": ["channels=4"], "occlusion": ["window=0.5"], "rise": ["masks=4"], "lime": ["samples=8", "grid=2"],
    "kernel-shap": ["samples=8", "grid=2"],
}
NEEDS_RELU = {"guided-backprop", "deconvnet", "guided-gradcam"}
# model -> (input size, whether its activations are ReLUs)
MODELS = {"resnet18": (64, True), "efficientnet_b0": (64, False), "vit_b_16": (224, False), "swin_t": (64, False)}
SLOW = {"vit_b_16", "swin_t"}  # about 20 s and 2.5 s on two CPU cores; the other two take under 1.5 s


def method_args() -> list[str]:
    args = []
    for name in names():
        args += ["-m", name]
        for kv in CHEAP.get(name, []):
            args += ["-p", f"{name}.{kv}"]
    return args


def check(out, relu: bool, size: int) -> None:
    records = {r["method"]: r for r in manifest(out)}
    assert set(records) == set(names())
    for name, r in records.items():
        if name in NEEDS_RELU and not relu:
            assert r["status"] == "error" and "ReLU" in r["error"], r
            continue
        assert r["status"] == "ok", r
        saliency = np.load(out / r["npy"])
        assert saliency.shape == (size, size) and saliency.dtype == np.float32 and np.isfinite(saliency).all()
        assert (out / r["overlay"]).exists()


def test_every_method_on_the_builtin_model(cli, tmp_path):
    out = tmp_path / "o"
    cli("explain", SAMPLES / "fashion-mnist" / "Sneaker", "-o", out, *method_args())
    assert len(manifest(out)) == 3 * len(names())
    check_one = {r["method"] for r in manifest(out) if r["image"].endswith("t10k-00009.png")}
    assert check_one == set(names())


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a in SLOW else a for a in MODELS])
def test_every_method_on_torchvision_models(arch, cli, tmp_path):
    size, relu = MODELS[arch]
    out = tmp_path / "o"
    cli("explain", PHOTOS / "chelsea.jpg", "-o", out, *torchvision_weights(tmp_path, arch),
        "--resize", str(size), "--crop", str(size), *method_args(), expect=0 if relu else 1)
    check(out, relu, size)
