"""One engine under every command: the Python API gives the CLI's maps, evaluate's draws depend only on the seed
and the image, and every command resolves its settings the same way.

Each test here was written against a divergence found in the code before the engine existed (issue 10) and
failed there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLES, manifest, write_images

import salcli
from salcli import images, methods
from salcli.errors import UsageError
from salcli.models import load_model, resolve_preset

FOUR = ["Bag/t10k-00030.png", "Coat/t10k-00006.png", "Sandal/t10k-00011.png", "Trouser/t10k-00002.png"]
LIGHT = {"integrated-gradients.steps": 16, "smoothgrad.samples": 8, "gradient-shap.samples": 8,
         "rise.masks": 64, "lime.samples": 64, "kernel-shap.samples": 64}


@pytest.fixture(scope="module")
def four(tmp_path_factory) -> Path:
    """Four Fashion-MNIST samples, laid out as Class/file.png (the masks' layout)."""
    root = tmp_path_factory.mktemp("four") / "imgs"
    for rel in FOUR:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLES / "fashion-mnist" / rel, root / rel)
    return root


def builtin_inputs(folder: Path):
    """The builtin model as the Python API gets it, and the CLI's normalized inputs with their keys."""
    from salcli.config import RunConfig

    pre, _, _ = resolve_preset(RunConfig())
    items = images.discover([folder])
    x = torch.from_numpy(np.stack([images.normalize(images.prepare(images.decode(i.path), pre), pre)
                                   for i in items]))
    return load_model("builtin:fashion-mnist").module, x, [i.key for i in items], pre


@pytest.fixture(scope="module")
def cli_run(four, tmp_path_factory):
    from typer.testing import CliRunner

    from salcli.cli import app

    out = tmp_path_factory.mktemp("cli") / "out"
    args = ["explain", str(four), "-o", str(out), "--no-optimize", "-q", "--seed", "3"]
    for name in methods.names():
        args += ["-m", name]
    for key, value in LIGHT.items():
        args += ["-p", f"{key}={value}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    return out


def cli_maps(out: Path, method: str, keys: list[str]) -> np.ndarray:
    return np.stack([np.load(out / method / f"{k}.npy") for k in keys])


@pytest.mark.parametrize("name", methods.names())
def test_the_api_gives_the_cli_map_for_every_method(name, four, cli_run):
    model, x, keys, pre = builtin_inputs(four)
    params = {k.split(".", 1)[1]: v for k, v in LIGHT.items() if k.startswith(name + ".")}
    ours = salcli.explain(model, x, method=name, keys=keys, seed=3, mean=pre.mean, std=pre.std, **params)
    ref = cli_maps(cli_run, name, keys)
    scale = float(np.abs(ref).max()) or 1.0
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-5 * scale, err_msg=name)


def test_api_integrated_gradients_black_baseline_is_black_pixels(four, cli_run):
    """The defect: without the preprocessing's mean/std the API's 'black' baseline was the dataset mean."""
    model, x, keys, pre = builtin_inputs(four)
    ours = salcli.explain(model, x, method="integrated-gradients", keys=keys, mean=pre.mean, std=pre.std, steps=16)
    score = model(x).gather(1, model(x).argmax(1, keepdim=True)).squeeze(1)
    black = torch.full_like(x[:1], 0.0).sub(torch.tensor(pre.mean).view(1, -1, 1, 1)).div(
        torch.tensor(pre.std).view(1, -1, 1, 1))
    at_black = model(black.expand_as(x)).gather(1, model(x).argmax(1, keepdim=True)).squeeze(1)
    # completeness against f(x) - f(black pixels), not against f(x) - f(dataset mean)
    gap = (ours.sum(dim=(1, 2)) - (score - at_black)).abs() / (score - at_black).abs()
    assert float(gap.max()) < 0.05


def test_api_gradient_shap_uses_references_and_refuses_a_missing_folder(four, tmp_path):
    from typer.testing import CliRunner

    from salcli.cli import app

    refs = tmp_path / "refs"
    write_images(refs, n=3, size=28)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["explain", str(four), "-o", str(out), "--no-optimize", "-q",
                                      "-m", "gradient-shap", "-p", f"gradient-shap.references={refs}",
                                      "-p", "gradient-shap.samples=8"])
    assert result.exit_code == 0, result.stderr
    model, x, keys, pre = builtin_inputs(four)
    ours = salcli.explain(model, x, method="gradient-shap", keys=keys, mean=pre.mean, std=pre.std,
                          references=str(refs), samples=8)
    ref = cli_maps(out, "gradient-shap", keys)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-5 * float(np.abs(ref).max()))
    noise = salcli.explain(model, x, method="gradient-shap", keys=keys, mean=pre.mean, std=pre.std, samples=8)
    assert not np.allclose(noise.numpy(), ref)  # the references were used, not the default noise baseline
    with pytest.raises(UsageError, match="references"):
        salcli.explain(model, x, method="gradient-shap", references=str(tmp_path / "missing"))


def test_api_takes_a_chosen_layer(four, tmp_path):
    from typer.testing import CliRunner

    from salcli.cli import app

    model, x, keys, pre = builtin_inputs(four)
    layer = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d))  # the first conv
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["explain", str(four), "-o", str(out), "--no-optimize", "-q",
                                      "-m", "gradcam", "--layer", layer])
    assert result.exit_code == 0, result.stderr
    ours = salcli.explain(model, x, method="gradcam", keys=keys, mean=pre.mean, std=pre.std, layer=layer)
    ref = cli_maps(out, "gradcam", keys)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-5 * float(np.abs(ref).max()))
    default = salcli.explain(model, x, method="gradcam", keys=keys, mean=pre.mean, std=pre.std)
    assert not np.allclose(default.numpy(), ref)  # the chosen layer mattered


def test_road_deletion_per_image_does_not_depend_on_the_batch_size(four, tmp_path, cli):
    out = tmp_path / "out"
    cli("explain", four, "-o", out, "-q")
    rows = {}
    for bs in (1, 3):
        cli("evaluate", out, "--batch-size", bs, "--steps", 6, "--no-stability", "-q")
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        rows[bs] = {(r["image"], r["method"]): r["deletion_road_auc"] for r in lines}
    assert rows[1].keys() == rows[3].keys() and len(rows[1]) == 8
    for key, value in rows[1].items():
        assert value == pytest.approx(rows[3][key], abs=1e-6), key


def test_library_errors_name_settings_and_the_cli_words_them_as_flags(cli, four):
    from salcli.errors import UsageError, setting, word
    from salcli.resolve import resolve_target

    with pytest.raises(UsageError) as caught:
        resolve_target("99", None, 10)
    assert "target= 99 is out of range" in str(caught.value) and "--" not in str(caught.value)
    assert caught.value.render({}).startswith("--target 99 is out of range")
    assert word(f"use {setting('config_file')}", {"config_file": "--config"}) == "use --config"
    assert "--target 99 is out of range" in cli("explain", four, "-o", four.parent / "o", "--target", 99,
                                                expect=2).stderr


def test_cli_flags_appear_only_in_cli_py():
    """Library code names settings with errors.setting; only cli.py knows how the command line spells them."""
    import re

    root = Path(salcli.__file__).parent
    for path in root.rglob("*.py"):
        if path.name == "cli.py":
            continue
        code = re.sub(r'"""(.|\n)*?"""', "", path.read_text())  # docstrings may describe the CLI
        code = "\n".join(line.split("#")[0] for line in code.splitlines())
        for flag in ("--layer", "--target", "--weights", "--trust-checkpoint", "--labels"):
            assert flag not in code, f"{flag} in {path.relative_to(root)}"


def test_evaluate_resolves_the_run_into_the_engine_that_wrote_its_maps(four, tmp_path, cli):
    """The defect: evaluate rebuilt the model by hand (plain, not folded), without the run's references and chunk,
    from run.json turned back into command-line strings. Now the run's settings are data and the engine it
    resolves recomputes the very maps the run wrote."""
    from salcli import outputs
    from salcli.evaluation import config_from_run
    from salcli.resolve import resolve

    refs = tmp_path / "refs"
    write_images(refs, n=3, size=28)
    out = tmp_path / "out"
    cli("explain", four, "-o", out, "-q", "-m", "gradient-shap", "-m", "integrated-gradients", "-m", "gradcam",
        "-p", f"gradient-shap.references={refs}", "-p", "gradient-shap.samples=6", "-p",
        "integrated-gradients.steps=12", "--chunk", 7, "--seed", 5)
    run = outputs.read_run_json(out)
    config = config_from_run(run)
    assert config.chunk == 7 and config.seed == 5 and config.params["gradient-shap"]["references"] == str(refs)
    resolved = resolve(config)
    assert resolved.explainer.fast.notes == run["optimizations"]  # the model as the run ran it
    records = [r for r in manifest(out) if r["method"] == "gradient-shap"]
    keys = [r["image"] for r in records]
    x = torch.from_numpy(np.stack([images.normalize(images.prepare(images.decode(Path(r["source"])),
                                                                   resolved.preprocess), resolved.preprocess)
                                   for r in records]))
    result = resolved.explainer(x, keys, torch.tensor([r["target"] for r in records]))
    for name in ("gradient-shap", "integrated-gradients", "gradcam"):
        stored = np.stack([np.load(out / name / f"{k}.npy") for k in keys])
        np.testing.assert_allclose(result.maps[name].numpy(), stored, rtol=0, atol=1e-6 * np.abs(stored).max())


def test_run_settings_round_trip_as_data(tmp_path):
    from salcli.config import RunConfig, build_config

    config = build_config({"inputs": [tmp_path], "out": tmp_path / "o", "mean": "0.5,0.4,0.3", "std": "0.2",
                           "resize": 64, "methods": ["gradcam", "vanilla"], "params": ["gradcam.x=1"],
                           "labels": ("a", "b"), "shard": "1/3", "chunk": "5", "target": "b"})
    assert RunConfig.from_json(json.loads(json.dumps(config.to_json()))) == config


def test_a_failing_method_is_reported_and_the_others_still_run(tiny_model):
    from salcli.engine import Explainer
    from salcli.methods.base import Method

    class Broken(Method):
        name = "broken"

        def attribute(self, model, x, target, ctx):
            raise ValueError("nope")

    engine = Explainer(tiny_model.eval(), [Broken(), "vanilla"], mean=(0.5,), std=(0.25,))
    x = torch.randn(3, 3, 16, 16)
    result = engine(x, ["a", "b", "c"], pending={"broken": [0, 1, 2], "vanilla": [2]})
    assert isinstance(result.failures["broken"], ValueError) and "broken" not in result.maps
    assert result.rows["vanilla"] == [2] and result.maps["vanilla"].shape == (1, 16, 16)
    whole = engine(x[2:], ["c"]).maps["vanilla"]
    torch.testing.assert_close(result.maps["vanilla"], whole)  # a subset gives the same map as the image alone
    assert result.facts()[0].keys() >= {"pred", "prob", "target", "score"}
