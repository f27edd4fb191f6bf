"""Gradient-family and path methods against Captum and the axioms (completeness, zero noise = vanilla)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from captum.attr import (Deconvolution, GradientShap, GuidedBackprop, InputXGradient, IntegratedGradients,
                         NoiseTunnel, Saliency)
from conftest import TINY_OPTS, manifest, write_images
from helpers import pearson, seeded_resnet18
from torch import nn

import salcli
from salcli import methods
from salcli.methods.integrated import RULES

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def resnet():
    return seeded_resnet18()


@pytest.fixture
def batch():
    torch.manual_seed(1)
    return torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 3])


@pytest.mark.parametrize("name, reference, reduce", [
    ("input-x-gradient", InputXGradient, lambda a: a.sum(1)),
    ("guided-backprop", GuidedBackprop, lambda a: a.abs().amax(1)),
    ("deconvnet", Deconvolution, lambda a: a.abs().amax(1)),
])
def test_gradient_family_equals_captum(name, reference, reduce, resnet, tiny_model):
    torch.manual_seed(2)
    for model, x in ((tiny_model.eval(), torch.randn(4, 3, 16, 16)), (resnet, torch.randn(2, 3, 48, 48))):
        target = torch.arange(x.shape[0])
        with warnings.catch_warnings():  # Captum warns that it sets hooks on ReLUs
            warnings.simplefilter("ignore")
            expected = reduce(reference(model).attribute(x.clone().requires_grad_(), target=target))
        ours = salcli.explain(model, x, target, method=name)
        torch.testing.assert_close(ours, expected.detach(), atol=1e-5, rtol=0)


def test_guided_backprop_refuses_models_without_relus():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GELU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 2))
    with pytest.raises(RuntimeError, match="ReLU"):
        salcli.explain(model, torch.randn(1, 3, 8, 8), 0, method="guided-backprop")


def test_guided_backprop_handles_functional_relu():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 8 * 8, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).flatten(1))

    torch.manual_seed(0)
    model, x = Functional(), torch.randn(2, 3, 8, 8)
    guided = salcli.explain(model, x, 0, method="guided-backprop")
    vanilla = salcli.explain(model, x, 0, method="vanilla")
    assert not torch.allclose(guided, vanilla)  # the rule was applied to the functional ReLU


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("baseline", ["zero", "black", "blur"])
def test_integrated_gradients_equals_captum(rule, baseline, tiny_model, batch):
    from salcli.methods import baselines

    x, target = batch
    model = tiny_model.eval()
    ctx = methods.Context(keys=["a", "b", "c"], mean=MEAN, std=STD)
    base = baselines.make(baseline, x, ctx)
    m = methods.create("integrated-gradients", {"steps": 24, "rule": rule, "baseline": baseline})
    ours, extras = m.attribute_with_extras(model, x, target, ctx)
    expected = IntegratedGradients(model).attribute(x, baselines=base, target=target, n_steps=24,
                                                   method=rule).sum(1)
    torch.testing.assert_close(ours, expected.float(), atol=1e-4 * float(expected.abs().max()), rtol=1e-4)
    assert extras["ig_steps"] == [24, 24, 24] and len(extras["completeness_gap"]) == 3


def test_black_baseline_is_pixel_zero_before_normalization():
    from salcli.methods import baselines

    ctx = methods.Context(keys=["a"], mean=MEAN, std=STD)
    black = baselines.make("black", torch.randn(1, 3, 4, 4), ctx)
    torch.testing.assert_close(black[0, :, 0, 0], -torch.tensor(MEAN) / torch.tensor(STD))


def test_integrated_gradients_completeness_at_64_steps(tiny_model, batch):
    x, target = batch
    maps = salcli.explain(tiny_model.eval(), x, target, method="integrated-gradients", steps=64, baseline="zero")
    with torch.no_grad():
        delta = (tiny_model(x) - tiny_model(torch.zeros_like(x))).gather(1, target.view(-1, 1)).squeeze(1)
    gap = (maps.sum(dim=(1, 2)) - delta).abs() / delta.abs()
    assert (gap < 0.01).all(), gap


@pytest.fixture
def fashion_batch():
    """The builtin model (trained, strongly non-linear), three noisy 28 px inputs and its predicted classes."""
    from salcli.models import load_model

    model = load_model("builtin:fashion-mnist").module
    torch.manual_seed(3)
    x = torch.randn(3, 1, 28, 28) * 1.5
    return model, x, model(x).argmax(1)


def test_tolerance_driven_ig_meets_its_tolerance(fashion_batch):
    model, x, target = fashion_batch
    ctx = methods.Context(keys=["a", "b", "c"])
    loose = methods.create("integrated-gradients", {"steps": 4, "baseline": "zero"})
    _, before = loose.attribute_with_extras(model, x, target, ctx)
    assert min(before["completeness_gap"]) > 0.01  # 4 steps are not enough here, so the loop has work to do
    tight = methods.create("integrated-gradients", {"steps": 4, "baseline": "zero", "tolerance": 0.005})
    _, after = tight.attribute_with_extras(model, x, target, ctx)
    assert all(g <= 0.005 for g in after["completeness_gap"]), after
    assert min(after["ig_steps"]) > 4 and max(after["ig_steps"]) <= 1024


@pytest.mark.slow  # the reference: Captum's integral at 512 points
def test_adaptive_ig_meets_its_tolerance_and_converges_to_the_integral(fashion_batch):
    model, x, target = fashion_batch
    ctx = methods.Context(keys=["a", "b", "c"])
    m = methods.create("integrated-gradients", {"rule": "adaptive", "baseline": "zero", "tolerance": 0.002})
    ours, extras = m.attribute_with_extras(model, x, target, ctx)
    assert all(g <= 0.002 for g in extras["completeness_gap"]), extras
    assert all(5 < n <= 1024 for n in extras["ig_steps"])
    # the integral itself, by Captum with many Gauss-Legendre points: the adaptive map is close to it pixelwise
    reference = IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=target,
                                                    n_steps=512, internal_batch_size=512).sum(1)
    err = (ours - reference).abs().sum(dim=(1, 2)) / reference.abs().sum(dim=(1, 2))
    assert (err < 0.05).all(), err


def test_adaptive_ig_uses_exactly_its_budget_and_is_exact_on_a_linear_model(batch):
    x, target = batch
    torch.manual_seed(2)
    linear_model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4)).eval()
    m = methods.create("integrated-gradients", {"rule": "adaptive", "steps": 9, "baseline": "zero"})
    ours, extras = m.attribute_with_extras(linear_model, x, target, methods.Context(keys=["a", "b", "c"]))
    assert extras["ig_steps"] == [9, 9, 9]
    weights = linear_model[-1].weight.view(-1, *x.shape[1:])[target]  # f = w · x + b: IG = w ⊙ x exactly
    torch.testing.assert_close(ours, (weights * x).sum(1), atol=1e-5, rtol=1e-5)
    assert max(extras["completeness_gap"]) < 1e-5
    from salcli.errors import UsageError

    with pytest.raises(UsageError, match="at least 5"):
        methods.create("integrated-gradients", {"rule": "adaptive", "steps": 3})


def test_ig_gap_is_in_the_manifest(cli, images_dir, tmp_path):
    out = tmp_path / "o"
    cli("explain", images_dir, "-o", out, *TINY_OPTS, "-m", "integrated-gradients", "-p",
        "integrated-gradients.tolerance=0.01")
    for r in manifest(out):
        assert r["completeness_gap"] <= 0.01 and r["ig_steps"] >= 50


def test_smoothgrad_with_zero_noise_equals_vanilla(tiny_model, batch):
    x, target = batch
    torch.testing.assert_close(salcli.explain(tiny_model, x, target, method="smoothgrad", noise=0.0, samples=3),
                               salcli.explain(tiny_model, x, target, method="vanilla"), atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("variant, nt_type, absolute", [("plain", "smoothgrad", True),
                                                        ("square", "smoothgrad_sq", True),
                                                        ("vargrad", "vargrad", False)])
def test_smoothgrad_agrees_with_captum_noise_tunnel_in_expectation(variant, nt_type, absolute, tiny_model):
    # Both average n independent noisy gradients; with n = 2000 the Monte-Carlo error of each pixel's mean is
    # ~2% of its spread, so the two maps correlate far above 0.98 unless they estimate different quantities.
    torch.manual_seed(4)
    x = torch.randn(1, 3, 16, 16)
    target = torch.tensor([2])
    sigma = 0.15 * float(x.max() - x.min())
    params = {"samples": 2000, variant: True} if variant != "plain" else {"samples": 2000}
    ours = salcli.explain(tiny_model.eval(), x, target, method="smoothgrad", **params)
    ref = NoiseTunnel(Saliency(tiny_model)).attribute(x, nt_type=nt_type, nt_samples=2000, stdevs=sigma,
                                                      target=target, abs=absolute, nt_samples_batch_size=500)
    assert pearson(ours, ref.amax(1)) > 0.98


def test_gradient_shap_agrees_with_captum_in_expectation(tiny_model):
    # Same estimator (random baseline, random alpha), 4000 samples each: correlation far above 0.95 unless the
    # quantity differs (for example a missing (x - baseline) factor gives ~0.5 here).
    torch.manual_seed(5)
    x, target = torch.randn(1, 3, 16, 16), torch.tensor([1])
    refs = torch.rand(64, 3, 16, 16)
    ctx = methods.Context(keys=["img"], references=refs)
    m = methods.create("gradient-shap", {"samples": 4000})
    ours = m.attribute(tiny_model.eval(), x, target, ctx)
    ref = GradientShap(tiny_model).attribute(x, baselines=refs, n_samples=4000, target=target).sum(1)
    assert pearson(ours, ref) > 0.95


def test_gradient_shap_is_complete_in_expectation(tiny_model):
    torch.manual_seed(6)
    x, target = torch.randn(1, 3, 16, 16), torch.tensor([0])
    refs = torch.zeros(1, 3, 16, 16)
    ctx = methods.Context(keys=["img"], references=refs)
    maps = methods.create("gradient-shap", {"samples": 3000}).attribute(tiny_model.eval(), x, target, ctx)
    with torch.no_grad():
        delta = float(tiny_model(x)[0, 0] - tiny_model(refs)[0, 0])
    assert abs(float(maps.sum()) - delta) < 0.03 * abs(delta) + 1e-4  # a 1-D integral by 3000 MC samples


@pytest.mark.parametrize("name, params", [("smoothgrad", {"samples": 6}), ("gradient-shap", {"samples": 6}),
                                          ("integrated-gradients", {"steps": 6, "baseline": "uniform"})])
def test_random_methods_are_seeded_per_image(name, params, tiny_model):
    torch.manual_seed(7)
    x, target = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    keys = ["a.png", "b.png", "c.png", "d.png"]
    m = methods.create(name, params)
    whole = m.attribute(tiny_model.eval(), x, target, methods.Context(keys=keys, seed=1, chunk=5))
    single = torch.cat([m.attribute(tiny_model, x[i:i + 1], target[i:i + 1],
                                    methods.Context(keys=[keys[i]], seed=1, chunk=1000)) for i in (3, 1, 0, 2)])
    torch.testing.assert_close(single, whole[[3, 1, 0, 2]], atol=1e-6, rtol=1e-5)
    other = m.attribute(tiny_model, x, target, methods.Context(keys=keys, seed=2))
    assert not torch.allclose(other, whole)


def test_gradient_shap_references_folder_through_the_cli(cli, images_dir, tmp_path):
    refs = tmp_path / "refs"
    write_images(refs, n=3, seed=9)
    out = tmp_path / "o"
    cli("explain", images_dir, "-o", out, *TINY_OPTS, "-m", "gradient-shap", "-p", "gradient-shap.samples=8",
        "-p", f"gradient-shap.references={refs}")
    cli("explain", images_dir, "-o", tmp_path / "noise", *TINY_OPTS, "-m", "gradient-shap", "-p",
        "gradient-shap.samples=8")
    a = np.load(out / "gradient-shap" / "img00.png.npy")
    b = np.load(tmp_path / "noise" / "gradient-shap" / "img00.png.npy")
    assert a.shape == (16, 16) and not np.allclose(a, b)
    assert "no such folder" in cli("explain", images_dir, "-o", tmp_path / "x", *TINY_OPTS, "-m",
                                   "gradient-shap", "-p", f"gradient-shap.references={tmp_path / 'none'}",
                                   expect=2).stderr
    (tmp_path / "empty").mkdir()
    assert "no readable images" in cli("explain", images_dir, "-o", tmp_path / "x", *TINY_OPTS, "-m",
                                       "gradient-shap", "-p", f"gradient-shap.references={tmp_path / 'empty'}",
                                       expect=2).stderr
