"""`salcli sanity`: the cascading model-parameter randomization test (Adebayo et al. 2018)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, SAMPLES, TINY_OPTS
from torch import nn

from salcli import images, models, sanity
from salcli.config import build_config
from salcli.engine import Explainer

FASHION = SAMPLES / "fashion-mnist"
# The first test image of six classes, so the measures do not rest on one kind of object.
SIX = [sorted((FASHION / c).iterdir())[0] for c in ("Ankle boot", "Bag", "Coat", "Dress", "Pullover", "Sandal")]


# ---------------------------------------------------------------------------------------------- the cascade
def test_cascade_is_forward_order_reversed_and_last_layer_first(tiny_model):
    x = torch.zeros(1, 3, 16, 16)
    assert sanity.parametrized_layers(tiny_model, x) == ["features.0", "features.2", "features.5", "fc"]
    result = sanity.randomization_test(Explainer(tiny_model, ["vanilla"]), torch.randn(2, 3, 16, 16), ["a", "b"])
    assert result.cascade == ["fc", "features.5", "features.2", "features.0"]
    curve = result.rows[0]["curve"]
    assert [c["depth"] for c in curve] == [0, 1, 2, 3, 4]
    assert [c["randomized"] for c in curve[:3]] == [[], ["fc"], ["fc", "features.5"]]
    assert curve[0]["spearman_mean"] == pytest.approx(1.0)


def test_max_steps_keeps_the_first_layer_and_the_full_randomization(tiny_model):
    assert sanity.cascade_points(10, 12) == list(range(1, 11))
    points = sanity.cascade_points(50, 12)
    assert len(points) == 12 and points[0] == 1 and points[-1] == 50 and points == sorted(set(points))
    result = sanity.randomization_test(Explainer(tiny_model, ["vanilla"]), torch.randn(2, 3, 16, 16), ["a", "b"],
                                       max_steps=2)
    assert result.depths == [0, 1, 4]
    assert result.rows[0]["curve"][-1]["randomized"] == result.cascade


def test_randomize_is_seeded_keeps_the_scale_and_covers_norm_layers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))
    net(torch.zeros(1, 3, 6, 6))
    net.eval()
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.1, 0.1)
    assert sanity.parametrized_layers(net, torch.zeros(1, 3, 6, 6)) == ["0", "1", "4"]
    a, b, c = copy.deepcopy(net), copy.deepcopy(net), copy.deepcopy(net)
    sanity.randomize_(a[1], "1", seed=0)
    sanity.randomize_(b[1], "1", seed=0)
    sanity.randomize_(c[1], "1", seed=1)
    assert torch.equal(a[1].weight, b[1].weight) and not torch.equal(a[1].weight, c[1].weight)
    assert not torch.equal(a[1].weight, net[1].weight) and not torch.equal(a[1].bias, net[1].bias)
    assert torch.equal(a[1].running_mean, net[1].running_mean)  # statistics of the data are kept
    assert torch.equal(a[0].weight, net[0].weight)  # only the named layer changes
    zero = nn.Linear(4, 4)
    nn.init.zeros_(zero.bias)
    sanity.randomize_(zero, "zero", seed=0)
    assert not zero.bias.any()  # an all-zero tensor has scale 0: it stays 0, like a re-initialized bias
    big = nn.Linear(64, 64)
    before = big.weight.detach().clone()
    sanity.randomize_(big, "big", seed=0)
    assert float(big.weight.detach().std()) == pytest.approx(float(before.std()), rel=0.05)
    assert abs(float(big.weight.detach().mean())) < 0.1 * float(before.std())


def test_signed_maps_are_compared_on_absolute_values():
    m = np.random.default_rng(0).normal(size=(12, 12))
    assert sanity.compare(m, -m) == pytest.approx((1.0, 1.0))


# ---------------------------------------------------------------------------------------------- the builtin model
@pytest.fixture(scope="module")
def builtin_run():
    """The test on the builtin Fashion-MNIST CNN, six images of six classes, seed 0."""
    config = build_config({"inputs": SIX, "methods": ["vanilla", "gradcam", "guided-backprop"], "device": "cpu"})
    pre, _, _ = models.resolve_preset(config)
    model = models.load_model(config.model).module
    x = torch.stack([torch.from_numpy(images.normalize(images.prepare(images.decode(p), pre), pre)) for p in SIX])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    engine = Explainer(model, config.methods, preprocess=pre, seed=0)
    result = sanity.randomization_test(engine, x, [p.name for p in SIX])
    return {"model": model, "state": state, "flags": flags, "result": result,
            "rows": {r["method"]: r for r in result.rows}}


def test_the_loaded_model_is_not_changed(builtin_run):
    model = builtin_run["model"]
    after = model.state_dict()
    assert after.keys() == builtin_run["state"].keys()
    assert all(torch.equal(after[k], v) for k, v in builtin_run["state"].items())
    assert [p.requires_grad for p in model.parameters()] == builtin_run["flags"]
    assert all(p.grad is None for p in model.parameters())
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks
    assert not model.training


def test_builtin_cascade_covers_every_layer_with_parameters(builtin_run):
    result = builtin_run["result"]
    # 4 convs, 4 BatchNorms, 2 linear layers; the logits first.
    assert result.cascade == ["classifier.5", "classifier.2", "features.11", "features.10", "features.8",
                              "features.7", "features.4", "features.3", "features.1", "features.0"]
    assert result.depths == list(range(11))


def test_gradient_and_gradcam_lose_their_similarity(builtin_run):
    """Measured (seed 0, these six images): final mean Spearman vanilla 0.03, gradcam -0.13; SSIM 0.04, 0.25.
    Seeds 1-3 give 0.03-0.05 and -0.04-0.03."""
    rows = builtin_run["rows"]
    for name in ("vanilla", "gradcam"):
        assert rows[name]["randomization_similarity"] < 0.25, rows[name]
        assert rows[name]["verdict"] == "pass"
        assert rows[name]["ssim_final"] < 0.4
    # They drop at once: randomizing the two classifier layers already leaves little (measured 0.24, -0.08).
    assert rows["vanilla"]["curve"][2]["spearman_mean"] < 0.4
    assert rows["gradcam"]["curve"][2]["spearman_mean"] < 0.25
    # One Grad-CAM map is all zero on the original model (its ReLU removed everything): left out, counted.
    assert rows["gradcam"]["images"] + rows["gradcam"]["constant_maps"] == 6


def test_guided_backprop_keeps_more_of_its_similarity(builtin_run):
    """The paper's finding: guided backprop is nearly invariant to the top layers. Measured (seed 0): after
    the classifier (2 layers) 0.81 against vanilla's 0.24; after the last conv block (4 layers) 0.70 against
    0.09; final 0.29 against 0.03. On this small model the full randomization does bring it below 0.5 (seeds
    0-3: 0.06-0.29), so its verdict is pass; the gap is in the cascade, which the curve shows."""
    rows = builtin_run["rows"]
    gbp, van = rows["guided-backprop"]["curve"], rows["vanilla"]["curve"]
    for depth in (1, 2, 4):
        assert gbp[depth]["spearman_mean"] > 0.6, (depth, gbp[depth])
        assert gbp[depth]["spearman_mean"] > van[depth]["spearman_mean"] + 0.4
    assert rows["guided-backprop"]["randomization_similarity"] > rows["vanilla"]["randomization_similarity"] + 0.15
    assert rows["guided-backprop"]["ssim_final"] > rows["vanilla"]["ssim_final"]
    mean_curve = lambda c: np.mean([p["spearman_mean"] for p in c[1:]])  # noqa: E731
    assert mean_curve(gbp) > mean_curve(van) + 0.3


# ---------------------------------------------------------------------------------------------- the command
def test_cli_table_json_and_nothing_written_without_out(cli, images_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    result = cli("sanity", images_dir, *TINY_OPTS, "-m", "vanilla", "-m", "gradcam", "--limit", "3", "--json")
    doc = json.loads(result.stdout)
    assert [r["method"] for r in doc["methods"]] == ["vanilla", "gradcam"]
    assert len(doc["images"]) == 3 and doc["cascade"][0] == "fc" and doc["gates_failed"] == []
    for row in doc["methods"]:
        assert {"randomization_similarity", "ssim_final", "verdict", "curve"} <= set(row)
        assert row["verdict"] in ("pass", "fail", "n/a")
    assert sorted(tmp_path.rglob("*")) == before
    table = cli("sanity", images_dir, *TINY_OPTS, "-m", "vanilla", "--limit", "2").stderr
    assert "vanilla" in table and "verdict" in table


def test_cli_out_writes_json_and_plot(cli, images_dir):
    out = images_dir / "s"  # inside the input folder: its own plot must not become an input next time
    for _ in range(2):
        cli("sanity", images_dir, *TINY_OPTS, "-m", "vanilla", "--max-steps", "2", "--seed", "3",
            "--threshold", "0.9", "-o", out, "-q")
    assert sorted(p.name for p in out.iterdir()) == ["sanity.json", "sanity.png"]
    doc = json.loads((out / "sanity.json").read_text())
    assert doc["seed"] == 3 and doc["threshold"] == 0.9 and doc["schema_version"] == 1
    assert len(doc["images"]) == 6 and not any(k.startswith("s/") for k in doc["images"])
    curve = doc["methods"][0]["curve"]
    assert [c["depth"] for c in curve] == [0, 1, 4]
    assert {"randomized", "spearman_mean", "spearman_std", "ssim_mean", "ssim_std"} <= set(curve[1])
    assert (out / "sanity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_gate_exits_4(cli, images_dir):
    result = cli("sanity", images_dir, *TINY_OPTS, "-m", "vanilla", "--limit", "2",
                 "--max-randomization-similarity", "-1", expect=4)
    assert "--max-randomization-similarity" in result.stderr and "vanilla" in result.stderr
    cli("sanity", images_dir, *TINY_OPTS, "-m", "vanilla", "--limit", "2", "--max-randomization-similarity", "1",
        expect=0)


@pytest.mark.parametrize("args, needle", [
    (["-m", "gradcm"], "did you mean 'gradcam'"),
    (["-p", "vanilla.steps=3"], "unknown parameter"),
    (["--max-steps", "1"], "--max-steps"),
    (["--limit", "0"], "--limit"),
    (["--threshold", "2"], "--threshold"),
])
def test_cli_usage_errors_exit_2(cli, images_dir, args, needle):
    result = cli("sanity", images_dir, *TINY_OPTS, *args, expect=2)
    assert needle.lower() in result.stderr.lower()


def test_cli_model_error_exits_3(cli, images_dir, tmp_path):
    cli("sanity", images_dir, "--model", str(tmp_path / "missing.py") + ":build", expect=3)


def test_sanity_help_does_not_import_torch():
    code = ("import sys\nfrom salcli.cli import app\n"
            "try:\n    app(['sanity', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=ROOT)
