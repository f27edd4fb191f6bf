"""The CAM family and layer lookup: agreement with pytorch-grad-cam, automatic layer choice, backward to the
layer only, and no trace left on the model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from helpers import assert_no_hooks, pearson, seeded, seeded_resnet18
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUModel
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction

import salcli
from salcli import methods
from salcli.errors import UsageError
from salcli.layers import LayerSpec, capture, resolve_layer


class SignFixedEigenCAM(EigenCAM):
    """pytorch-grad-cam's EigenCAM keeps whatever sign its SVD returns; salcli fixes it as their Seg-Eigen-CAM
    helper does (flip when |min| > |max|), so compare with that helper on their activations."""

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth):
        return get_2d_projection_with_sign_correction(activations)


REFERENCES = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "xgradcam": XGradCAM, "layercam": LayerCAM,
              "hirescam": HiResCAM, "scorecam": ScoreCAM, "eigencam": SignFixedEigenCAM}
CAM_METHODS = [*REFERENCES, "guided-gradcam"]


def small_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=2,
                                               hidden_dim=32, mlp_dim=64).eval()
    with torch.no_grad():  # torchvision zero-initializes the head: every map would be 0
        vit.heads.head.weight.normal_(0, 0.5)
    return vit


def vit_tokens_to_map(t: torch.Tensor) -> torch.Tensor:  # pytorch-grad-cam's reshape_transform, 4 x 4 patches
    return t[:, 1:].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def models():
    return {"resnet18": (seeded_resnet18(), "layer4", None), "vit": (small_vit(), None, vit_tokens_to_map)}


def theirs(cls, model, layer, x, target, reshape=None) -> np.ndarray:
    with cls(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        out = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in target])
    for p in model.parameters():  # pytorch-grad-cam backpropagates into every weight
        p.grad = None
    return out


@pytest.mark.parametrize("name", list(REFERENCES))
@pytest.mark.parametrize("arch", ["resnet18", "vit"])
def test_maps_match_pytorch_grad_cam(name, arch, models):
    model, _, reshape = models[arch]
    layer = model.layer4 if arch == "resnet18" else model.encoder.layers[-1].ln_1
    n, size, spec = 2, 64, None  # automatic layer: the same one
    if (name, arch) == ("scorecam", "resnet18"):  # one masked forward per channel: 256 at layer3, not 512
        n, size, layer = 1, 32, model.layer3
        spec = resolve_layer(model, "layer3", torch.zeros(1, 3, size, size))
    torch.manual_seed(1)
    x = torch.randn(n, 3, size, size)
    target = torch.tensor([3, 7][:n])
    ours = methods.create(name).attribute(model, x, target, methods.Context(keys=list("ab")[:n], layer=spec))
    assert ours.shape == (n, size, size) and ours.dtype == torch.float32 and (ours >= 0).all()
    ref = theirs(REFERENCES[name], model, layer, x, target, reshape)
    for i in range(n):
        assert pearson(ours[i], ref[i]) >= 0.999, (name, arch, i)


def test_an_explicit_layer_matches_pytorch_grad_cam_and_differs_from_the_default(models):
    model = models["resnet18"][0]
    torch.manual_seed(2)
    x = torch.randn(2, 3, 64, 64)
    target = torch.tensor([5, 9])
    spec = resolve_layer(model, "layer3", x[:1])
    ours = methods.create("gradcam").attribute(model, x, target, methods.Context(keys=["a", "b"], layer=spec))
    ref = theirs(GradCAM, model, model.layer3, x, target)
    assert all(pearson(ours[i], ref[i]) >= 0.999 for i in range(2))
    default = salcli.explain(model, x, target, method="gradcam")
    assert pearson(ours[0], default[0]) < 0.99


def test_guided_gradcam_is_gradcam_times_guided_backprop(models):
    model = models["resnet18"][0]
    torch.manual_seed(3)
    x = torch.randn(2, 3, 64, 64)
    target = torch.tensor([1, 2])
    ours = salcli.explain(model, x, target, method="guided-gradcam")
    guided = salcli.explain(model, x, target, method="guided-backprop")
    torch.testing.assert_close(ours, salcli.explain(model, x, target, method="gradcam") * guided,
                               rtol=1e-5, atol=1e-8)
    for i in range(2):  # pytorch-grad-cam's guided backprop: image by image, on a copy (it swaps ReLU modules)
        gb = GuidedBackpropReLUModel(copy.deepcopy(model))(x[i:i + 1].clone(), int(target[i]))
        np.testing.assert_allclose(guided[i].numpy(), np.abs(gb).max(axis=2), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("arch, size, expected, kind", [
    ("resnet18", 64, "layer4", "conv"),
    ("efficientnet_b0", 64, "features.8", "conv"),
    ("convnext_tiny", 64, "features.7", "conv"),
    ("swin_t", 64, "features.7", "nhwc"),
    ("vit_b_16", 224, "encoder.layers.encoder_layer_11.ln_1", "tokens"),
])
def test_the_automatic_layer_is_the_one_the_cam_literature_uses(arch, size, expected, kind):
    model = seeded(arch)
    spec = resolve_layer(model, None, torch.randn(1, 3, size, size))
    assert (spec.name, spec.kind) == (expected, kind)
    assert spec.module is model.get_submodule(expected)
    if kind == "tokens":
        assert (spec.prefix, spec.grid) == (1, (14, 14))


def test_the_automatic_layer_of_small_cnns(tiny_model):
    from salcli.builtin import FashionCNN

    assert resolve_layer(tiny_model, None, torch.randn(1, 3, 16, 16)).name == "features.6"  # last ReLU
    assert resolve_layer(FashionCNN(), None, torch.randn(1, 1, 28, 28)).name == "features.13"  # 7 x 7 pool


def test_layer_names_errors_and_indexing(models):
    model = models["resnet18"][0]
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(UsageError, match=r"unknown layer 'layer5'\. Did you mean 'layer4'\?.*Candidates.*layer4"):
        resolve_layer(model, "layer5", x)
    with pytest.raises(UsageError, match="outputs shape"):
        resolve_layer(model, "fc", x)
    assert resolve_layer(model, "layer4[-1]", x).name == "layer4.1"
    assert resolve_layer(model, "layer4.0.conv1", x).module is model.layer4[0].conv1


def test_to_map_lays_out_tokens_and_channels_last():
    tokens = torch.arange(2 * 13 * 5, dtype=torch.float32).view(2, 13, 5)  # 1 class token + 3 x 4 patches
    spec = LayerSpec("t", torch.nn.Identity(), "tokens", prefix=1, grid=(3, 4))
    m = spec.to_map(tokens)
    assert m.shape == (2, 5, 3, 4)
    assert torch.equal(m[1, :, 2, 1], tokens[1, 1 + 2 * 4 + 1])
    square = LayerSpec("t", torch.nn.Identity(), "tokens", prefix=4)
    assert square.to_map(torch.zeros(1, 4 + 16, 8)).shape == (1, 8, 4, 4)
    nhwc = torch.randn(2, 3, 4, 6)
    assert torch.equal(LayerSpec("s", torch.nn.Identity(), "nhwc").to_map(nhwc), nhwc.permute(0, 3, 1, 2))


def test_the_backward_pass_stops_at_the_layer(models):
    model = models["resnet18"][0]
    calls = {"layer1": 0, "fc": 0}
    handles = [getattr(model, n).register_full_backward_hook(
        lambda m, gi, go, n=n: calls.__setitem__(n, calls[n] + 1)) for n in calls]
    try:
        out = salcli.explain(model, torch.randn(2, 3, 64, 64), 0, method="gradcam")
    finally:
        for h in handles:
            h.remove()
    assert out.abs().sum() > 0
    assert calls == {"layer1": 0, "fc": 1}  # the backward ran through the head, never below layer4
    assert all(p.grad is None for p in model.parameters())


def test_a_frozen_model_gives_the_same_maps(models):
    model = models["resnet18"][0]
    x = torch.randn(2, 3, 64, 64)
    before = salcli.explain(model, x, 4, method="layercam")
    model.requires_grad_(False)
    try:
        frozen = salcli.explain(model, x, 4, method="layercam")
    finally:
        model.requires_grad_(True)
    torch.testing.assert_close(frozen, before)


def test_capture_keeps_the_layer_output_despite_in_place_ops_after_it(models):
    model = models["resnet18"][0]
    bn2 = model.layer3[1].bn2  # followed by `out += identity` and an in-place ReLU
    seen = []
    handle = bn2.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    try:
        with capture(LayerSpec("layer3.1.bn2", bn2)) as cap:
            logits = model(torch.randn(1, 3, 64, 64))
        (grad,) = torch.autograd.grad(logits[0, 0], cap.output)
    finally:
        handle.remove()
    assert torch.equal(cap.output.detach(), seen[-1]) and (seen[-1] < 0).any()
    assert grad.shape == cap.output.shape
    assert_no_hooks(bn2)


@pytest.mark.parametrize("name", CAM_METHODS)
def test_the_model_keeps_no_trace(name):
    model = seeded_resnet18().train()  # BatchNorm statistics would move in a stray train-mode forward pass
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 64, 64)
    salcli.explain(model, x, 1, method=name, **({"channels": 8} if name == "scorecam" else {}))
    assert model.training and all(p.grad is None for p in model.parameters())
    assert_no_hooks(model)
    assert all(torch.equal(p, state[k]) for k, p in model.named_parameters())
    model.load_state_dict(state)  # the method's own train-mode forward moved the BatchNorm statistics
    rng = torch.get_rng_state()
    resolve_layer(model, None, x[:1])  # the lookup pass itself leaves buffers and the RNG as they were
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_scorecam_batches_across_images_and_caps_channels(tiny_model):
    model = tiny_model.eval()
    torch.manual_seed(4)
    x = torch.randn(3, 3, 16, 16)
    target = torch.tensor([0, 1, 2])
    method = methods.create("scorecam")
    one = [method.attribute(model, x[i:i + 1], target[i:i + 1], methods.Context(keys=["k"], chunk=64))
           for i in range(3)]
    mixed = method.attribute(model, x, target, methods.Context(keys=list("abc"), chunk=7))
    torch.testing.assert_close(mixed, torch.cat(one), rtol=1e-5, atol=1e-7)
    capped = methods.create("scorecam", {"channels": "4"})
    assert capped.passes().startswith("1 + min(K, 4)")
    assert capped.attribute(model, x, target, methods.Context(keys=list("abc"))).shape == (3, 16, 16)
    with pytest.raises(UsageError, match="channels"):
        methods.create("scorecam", {"channels": "-1"})


def test_every_cam_method_declares_its_layer_and_cost():
    for name in CAM_METHODS:
        cls = methods.get(name)
        assert cls.needs_layer and cls.family == "cam" and cls.paper and cls.convention
        assert "forward" in cls().passes()


def test_gradcam_values_are_raw_not_rescaled(tiny_model):
    model = tiny_model.eval()
    torch.manual_seed(5)
    x = torch.randn(2, 3, 16, 16)
    target = torch.tensor([1, 3])
    acts = model.features(x)  # features.6, the automatic layer: (2, 16, 8, 8)
    logits = model.fc(model.pool(acts).flatten(1))
    (grads,) = torch.autograd.grad(logits[[0, 1], target].sum(), acts)
    cam = (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(dim=1).clamp(min=0).detach()
    expected = torch.nn.functional.interpolate(cam[:, None], size=(16, 16), mode="bilinear")[:, 0]
    torch.testing.assert_close(salcli.explain(model, x, target, method="gradcam"), expected)
