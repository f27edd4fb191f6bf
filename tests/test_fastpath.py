"""Fast paths are correct paths: BatchNorm folding, channels_last, bf16 autocast and the out-of-memory back-off
give the maps of the plain model (within float rounding, or a stated rank correlation for bf16)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from conftest import PHOTOS, SAMPLES, TINY_OPTS, manifest
from helpers import seeded_resnet18, torchvision_weights, trained_like
from torch import nn

import salcli
from salcli import fastpath


@pytest.fixture(scope="module")
def resnet():
    return seeded_resnet18(trained=True)


def test_folding_resnet18_keeps_logits_and_input_gradients(resnet):
    x = torch.randn(2, 3, 64, 64)
    folded, n = fastpath.fold_batchnorm(resnet, x[:1])
    assert n == 20  # the stem, two per basic block, three downsample branches
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in resnet.modules())  # the original is untouched
    with torch.no_grad():
        torch.testing.assert_close(folded(x), resnet(x), atol=1e-4, rtol=1e-4)
    target = torch.tensor([1, 2])
    plain, fast = salcli.explain(resnet, x, target), salcli.explain(folded, x, target)
    torch.testing.assert_close(fast, plain, atol=1e-5 * float(plain.max()), rtol=0)


def test_a_conv_output_used_twice_is_not_folded():
    class Reuse(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            y = self.conv(x)
            return self.fc((self.bn(y) + y).mean(dim=(2, 3)))  # y is needed unnormalized too

    torch.manual_seed(0)
    model = trained_like(Reuse())
    folded, n = fastpath.fold_batchnorm(model, torch.randn(1, 3, 8, 8))
    assert folded is model and n == 0


def test_the_cam_layer_is_kept(resnet):
    _, n = fastpath.fold_batchnorm(resnet, torch.randn(1, 3, 64, 64), keep={"layer4.1.conv2"})
    assert n == 19


def test_a_model_in_training_mode_is_not_folded(resnet):
    model = torchvision.models.resnet18().train()
    assert fastpath.fold_batchnorm(model, torch.randn(2, 3, 32, 32))[1] == 0


# Pixelwise bars: the single-pass gradient maps move by float rounding only. Guided backprop clamps the gradient
# at every ReLU, so a 1-ulp change of a near-zero gradient switches its path: 1e-3 of its maximum. Methods that
# evaluate the model at many points (IG's path from a black image, SmoothGrad's noisy copies, CAM's
# cancelling channel sums) meet ReLU boundaries where any rounding change (folding, another memory layout,
# another kernel, another device) flips a gate: they are held to 0.5% relative L2 (measured: at most 0.14%).
PIXEL_BAR = {"vanilla": 1e-5, "input-x-gradient": 1e-5, "guided-backprop": 1e-3}
L2_BAR = 5e-3


@pytest.mark.parametrize("model, inputs", [pytest.param("resnet18", PHOTOS, marks=pytest.mark.slow),
                                           ("builtin", SAMPLES / "fashion-mnist" / "Coat")])
def test_optimized_run_equals_plain_run(cli, tmp_path, model, inputs):
    """--optimize (folding + channels_last) against --no-optimize, through the CLI: on resnet18 as initialized
    (channels_last; its folds are near-identities) and on the trained builtin model (real folds).

    Not on ``resnet`` above: with its random BatchNorm statistics some pre-activations of the photos sit within
    float rounding of 0, and a ReLU gate that flips moves even the vanilla map by 2.7% of its maximum, whatever
    changes the rounding (a batch of 2 instead of 1 does the same). That is a property of the model's
    gradient, not of the fast path."""
    chosen = ["vanilla", "input-x-gradient", "guided-backprop", "gradcam", "integrated-gradients", "smoothgrad"]
    common = ["-p", "integrated-gradients.steps=16", "-p", "smoothgrad.samples=8",
              *[a for m in chosen for a in ("-m", m)]]
    if model == "resnet18":
        common += [*torchvision_weights(tmp_path, "resnet18"), "--resize", "64", "--crop", "64"]
    cli("explain", inputs, "-o", tmp_path / "fast", *common)
    cli("explain", inputs, "-o", tmp_path / "plain", "--no-optimize", *common)
    applied = json.loads((tmp_path / "fast" / "run.json").read_text())["optimizations"]
    assert applied[-1] == "channels_last" and applied[0].startswith("batchnorm folded into")
    assert json.loads((tmp_path / "plain" / "run.json").read_text())["optimizations"] == []
    for rec in manifest(tmp_path / "plain"):
        plain = np.load(tmp_path / "plain" / rec["npy"]).astype(np.float64)
        fast = np.load(tmp_path / "fast" / rec["npy"]).astype(np.float64)
        if rec["method"] in PIXEL_BAR:
            bar = PIXEL_BAR[rec["method"]] * np.abs(plain).max()
            np.testing.assert_allclose(fast, plain, atol=bar, rtol=0, err_msg=rec["npy"])
        else:
            assert np.linalg.norm(fast - plain) <= L2_BAR * max(np.linalg.norm(plain), 1e-30), rec["npy"]


def test_bf16_maps_keep_their_rank_order(resnet):
    x = torch.randn(2, 3, 64, 64)
    target = torch.tensor([0, 1])
    plain = salcli.explain(resnet, x, target, method="gradcam")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = salcli.explain(resnet, x, target, method="gradcam")
    for a, b in zip(plain, half):
        ra, rb = a.flatten().argsort().argsort().float(), b.float().flatten().argsort().argsort().float()
        assert float(torch.corrcoef(torch.stack([ra, rb]))[0, 1]) > 0.9  # the bar BENCHMARKS.md states


def test_precision_is_checked_and_recorded(cli, images_dir, tmp_path):
    assert "bf16" in cli("explain", images_dir, "-o", tmp_path / "o", "--precision", "fp16", expect=2).stderr
    cli("explain", images_dir, "-o", tmp_path / "o", *TINY_OPTS, "--precision", "bf16")
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["precision"] == "bf16" and "autocast bf16" in run["optimizations"]


class OOM:
    """Raises CUDA's out-of-memory error when a pass gets more than ``limit`` inputs."""

    def __init__(self, limit: int) -> None:
        self.limit, self.raised = limit, 0

    def check(self, n: int) -> None:
        if n > self.limit:
            self.raised += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")


@pytest.mark.parametrize("method", ["vanilla", "smoothgrad"])
def test_out_of_memory_backs_off_without_losing_images(cli, images_dir, tmp_path, monkeypatch, method):
    opts = [*TINY_OPTS, "-m", method, *(["-p", "smoothgrad.samples=8"] if method == "smoothgrad" else []),
            "--batch-size", "6", "--chunk", "16"]
    cli("explain", images_dir, "-o", tmp_path / "ref", *opts)
    oom = OOM(limit=2)
    original = torch.nn.Module.__call__

    def guarded(self, *args, **kwargs):
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4 and self.__class__.__name__ == "TinyCNN":
            oom.check(args[0].shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__call__", guarded)
    cli("explain", images_dir, "-o", tmp_path / "oom", *opts)
    monkeypatch.undo()
    assert oom.raised > 0
    run = json.loads((tmp_path / "oom" / "run.json").read_text())
    assert run["oom_backoffs"] > 0 and run["counts"]["ok"] == 6
    for rec in manifest(tmp_path / "ref"):
        np.testing.assert_allclose(np.load(tmp_path / "oom" / rec["npy"]), np.load(tmp_path / "ref" / rec["npy"]),
                                   atol=1e-6, rtol=1e-5)


def test_other_errors_are_not_taken_for_out_of_memory():
    assert fastpath.is_oom(torch.cuda.OutOfMemoryError("x"))
    assert fastpath.is_oom(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert not fastpath.is_oom(RuntimeError("size mismatch"))
    assert not fastpath.is_oom(ValueError("out of memory"))


def test_automatic_sizes_follow_the_device_and_the_input_size():
    from salcli.config import Preprocess
    from salcli.engine import auto_chunk
    from salcli.pipeline import auto_workers
    from salcli.resolve import auto_batch

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    photo, small = Preprocess(), Preprocess(resize=28, crop=28, channels=1, mean=(0.0,), std=(1.0,))
    assert auto_batch(photo, cpu) == 8 and auto_batch(small, cpu) == 64 and auto_batch(photo, cuda) == 64
    assert auto_chunk(8, photo, cpu) == 8 and auto_chunk(64, small, cpu) == 1024 and auto_chunk(64, photo, cuda) == 256
    # the CPU decodes in the main process (its cores run the model); a GPU gets decoding workers; one batch none
    assert auto_workers(1000, 8, cpu) == 0 and auto_workers(8, 8, cuda) == 0
    assert 1 <= auto_workers(1000, 64, cuda) <= 4
