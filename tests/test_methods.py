"""Methods against independent references (Captum), the registry contract, and no mutation of the model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from captum.attr import Saliency
from conftest import PHOTOS, SAMPLES, TINY_OPTS, manifest
from helpers import assert_no_hooks, seeded_resnet18, torchvision_weights

import salcli
from salcli import images, methods
from salcli.config import Preprocess
from salcli.errors import UsageError


def captum_vanilla(model, x, target):
    return Saliency(model).attribute(x.clone().requires_grad_(), target=target, abs=True).amax(dim=1)


def test_vanilla_equals_captum_saliency_on_a_tiny_cnn(tiny_model):
    torch.manual_seed(1)
    x = torch.randn(5, 3, 16, 16)
    target = torch.tensor([0, 1, 2, 3, 0])
    ours = salcli.explain(tiny_model.eval(), x, target, method="vanilla")
    assert ours.shape == (5, 16, 16) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, captum_vanilla(tiny_model, x, target), atol=1e-5, rtol=0)


def test_vanilla_equals_captum_on_resnet18_loaded_through_weights(cli, tmp_path):
    net = seeded_resnet18()
    photos = PHOTOS
    out = tmp_path / "o"
    cli("explain", photos, "-o", out, *torchvision_weights(tmp_path, "resnet18", net), "--resize", "64", "--crop", "64")
    pre = Preprocess(resize=64, crop=64, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    for rec in manifest(out):
        x = torch.from_numpy(images.normalize(images.prepare(images.decode(photos / rec["image"]), pre), pre))[None]
        target = torch.tensor([rec["target"]])
        assert rec["pred"] == int(net(x).argmax())
        expected = captum_vanilla(net, x, target)[0].numpy()
        np.testing.assert_allclose(np.load(out / rec["npy"]), expected, atol=1e-5, rtol=0)


def test_batch_size_does_not_change_the_maps(cli, tmp_path):
    folder = SAMPLES / "fashion-mnist"
    cli("explain", folder, "-o", tmp_path / "b1", "--batch-size", "1")
    cli("explain", folder, "-o", tmp_path / "b5", "--batch-size", "5", "--workers", "2")
    one, five = manifest(tmp_path / "b1"), manifest(tmp_path / "b5")
    assert [(r["image"], r["pred"]) for r in one] == [(r["image"], r["pred"]) for r in five]
    for a, b in zip(one, five):
        m1, m5 = np.load(tmp_path / "b1" / a["npy"]), np.load(tmp_path / "b5" / b["npy"])
        # identical up to float32 rounding of batched kernels (see README, "Reproducibility")
        np.testing.assert_allclose(m1, m5, rtol=0, atol=1e-6 * max(float(m1.max()), 1e-12) + 1e-9)


@pytest.mark.parametrize("name", methods.names())
def test_every_method_keeps_the_callers_model_untouched(name, tiny_model):
    model = tiny_model.train()  # a caller's model in train mode must stay in train mode
    flags = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 3, 16, 16)
    out = salcli.explain(model, x, 1, method=name)
    assert out.shape == (3, 16, 16) and torch.isfinite(out).all()
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert_no_hooks(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


def test_registry_rejects_duplicates_and_unknown_params():
    with pytest.raises(ValueError, match="twice"):
        methods.register("vanilla")(type("Again", (methods.Method,), {}))
    with pytest.raises(UsageError, match="unknown parameter"):
        methods.create("vanilla", {"samples": "3"})
    for name in methods.names():
        cls = methods.get(name)
        assert dataclasses.is_dataclass(cls.Params) and cls.convention and cls.paper and cls.family


def test_seeds_depend_only_on_seed_and_key():
    a = methods.Context(keys=["x.png", "y.png"], seed=3)
    b = methods.Context(keys=["y.png"], seed=3)
    assert torch.equal(a.generator(1).initial_seed() * torch.ones(1), b.generator(0).initial_seed() * torch.ones(1))
    assert a.generator(0).initial_seed() != a.generator(1).initial_seed()
    assert methods.image_seed(3, "x.png") != methods.image_seed(4, "x.png")
