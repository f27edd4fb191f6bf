"""What a person reads and types: help texts, messages, tables at 80 columns and in a pipe, method names as the
peers spell them, the one-line summary, presets found by name in an installed package."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SAMPLES, TINY, TINY_OPTS, manifest, write_images
from typer.main import get_command

from salcli import methods
from salcli.config import build_config, find_config, presets
from salcli.errors import UsageError

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def option_help(command: str, name: str) -> str:
    from salcli.cli import app

    return next(p.help for p in get_command(app).commands[command].params if p.name == name)


# 13. Help and tables

def test_explain_help_shows_the_output_layout(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    text = cli("explain", "--help").stdout
    assert "OUT/METHOD/IMAGE.npy" in text and "OUT//" not in text


def test_chunk_help_agrees_with_the_engine():
    text = option_help("explain", "chunk")
    assert "1.2 million" in text and "256" in text and "32" not in text


def test_dash_h_is_help_and_completion_is_on(cli):
    from salcli.cli import app

    assert "explain" in cli("-h").stdout
    assert "--out" in cli("explain", "-h").stdout
    assert {"--install-completion", "--show-completion"} <= {o for p in get_command(app).params for o in p.opts}


def test_user_text_is_printed_as_typed_not_as_markup(cli, tmp_path):
    """Rich reads [b], [red] or [methods.NAME] as markup: a file, a folder or a message holding one lost it."""
    folder = tmp_path / "imgs"
    write_images(folder, n=1)
    (folder / "bad[b].png").write_bytes(b"not an image")
    out = tmp_path / "out[red]"
    err = cli("explain", folder, "-o", out, *TINY_OPTS, expect=1).stderr
    assert "bad[b].png" in err and "out[red]" in err
    preset = tmp_path / "p.toml"
    preset.write_text("modle = 'x'\n")
    assert "[methods.NAME]" in cli("explain", folder, "-o", tmp_path / "o", "--config", preset, expect=2).stderr


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_messages_agree_in_number_and_article(cli, tmp_path, tiny_model):
    with pytest.raises(UsageError, match="takes an int; got 'x'"):
        methods.create("smoothgrad", {"samples": "x"})
    scripted = tmp_path / "tiny.ts"
    torch.jit.script(tiny_model).save(str(scripted))
    write_images(tmp_path / "imgs", n=1)
    err = cli("explain", tmp_path / "imgs", "-o", tmp_path / "o", "--model", scripted, "--resize", "16",
              "--crop", "16", "-m", "gradcam", expect=2).stderr
    assert "gradcam needs a layer hook" in err


def _names_whole(text: str) -> list[str]:
    """The registered names that do not appear whole in ``text``."""
    return [n for n in methods.names() if not re.search(rf"(^|\s){re.escape(n)}(\s|$)", text, re.M)]


@pytest.mark.parametrize("columns", ["80", "100"])
def test_methods_on_a_narrow_terminal_show_every_name_whole(cli, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", columns)
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich takes the output for a terminal
    text = ANSI.sub("", cli("methods").stdout)
    assert _names_whole(text) == [] and "…" not in text
    assert max(len(line) for line in text.splitlines()) <= int(columns)


def test_methods_in_a_pipe_is_a_plain_list(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    text = cli("methods").stdout
    assert _names_whole(text) == [] and "…" not in text and "│" not in text
    heads = [line.split()[0] for line in text.splitlines() if line and not line[0].isspace()]
    assert heads[:len(methods.names())] == methods.names()  # each block starts with the name to type
    assert "Saliency" in text  # the aliases are listed
    rows = {r["name"]: r for r in json.loads(cli("methods", "--json").stdout)}
    assert rows["vanilla"]["aliases"] == ["Saliency", "VanillaGradient"] and rows["gradcam"]["aliases"] == []


@pytest.mark.parametrize("terminal", [True, False])
def test_evaluate_table_never_cuts_a_method_name(capsys, monkeypatch, terminal):
    from salcli.cli import _print_table

    monkeypatch.setenv("COLUMNS", "80")
    if terminal:
        monkeypatch.setenv("FORCE_COLOR", "1")
    columns = ["method", "images", "pointing_game", "energy", "iou", "deletion_auc", "deletion_road_auc",
               "insertion_auc", "stability_noise", "stability_shift"]
    rows = [{"method": name, "images": 65, **{c: 0.123456 for c in columns[2:]}}
            for name in ("integrated-gradients", "guided-gradcam", "random")]
    _print_table("salcli evaluate out", rows, columns)
    text = ANSI.sub("", capsys.readouterr().err)
    for name in ("integrated-gradients", "guided-gradcam"):
        assert re.search(rf"\s{re.escape(name)}\s", text), text
    assert "…" not in text


# 14. Method names as the peers spell them

@pytest.mark.parametrize("typed, name", [
    ("GradCAM", "gradcam"), ("grad-cam", "gradcam"), ("Grad_CAM", "gradcam"), ("grad cam", "gradcam"),
    ("IntegratedGradients", "integrated-gradients"), ("IG", "integrated-gradients"),
    ("integrated_gradients", "integrated-gradients"), ("Saliency", "vanilla"),
    ("InputXGradient", "input-x-gradient"), ("GuidedBackprop", "guided-backprop"), ("Deconvolution", "deconvnet"),
    ("Occlusion", "occlusion"), ("GradientShap", "gradient-shap"), ("Lime", "lime"), ("KernelShap", "kernel-shap"),
    ("NoiseTunnel", "smoothgrad"), ("SmoothGrad", "smoothgrad"), ("GradCAMPlusPlus", "gradcam++"),
    ("XGradCAM", "xgradcam"), ("LayerCAM", "layercam"), ("HiResCAM", "hirescam"), ("ScoreCAM", "scorecam"),
    ("EigenCAM", "eigencam"), ("GuidedGradCam", "guided-gradcam"), ("RISE", "rise"), ("gradcam++", "gradcam++"),
])
def test_method_names_as_the_peers_spell_them(typed, name):
    assert methods.canonical(typed) == name and methods.get(typed).name == name
    assert methods.create(typed).name == name


def test_python_api_takes_the_same_names(tiny_model):
    import salcli

    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(salcli.explain(tiny_model, x, method="GradCAM"), salcli.explain(tiny_model, x, method="gradcam"))
    assert torch.equal(salcli.explain(tiny_model, x, method="IG", steps=4),
                       salcli.explain(tiny_model, x, method="integrated-gradients", steps=4))


def test_aliases_are_consistent():
    keys = [methods.name_key(n) for n in methods.names()]
    assert len(set(keys)) == len(keys) and "all" not in keys  # no two names (nor `all`) collide
    for alias, target in methods.ALIASES.items():
        assert target in methods.REGISTRY and methods.name_key(alias) not in keys, alias
    with pytest.raises(UsageError, match="Did you mean 'gradcam'"):
        methods.canonical("GradCm")


def test_method_lists_aliases_and_all_in_the_config():
    c = build_config({"methods": ["GradCAM,Saliency", "grad_cam", "IG"], "params": ["ig.steps=4", "IG.rule=left"]})
    assert c.methods == ("gradcam", "vanilla", "integrated-gradients")
    assert c.params == {"integrated-gradients": {"steps": "4", "rule": "left"}}
    assert build_config({"methods": ["all"]}).methods == tuple(methods.names())
    assert build_config({"methods": ["vanilla", "ALL"]}).methods == tuple(methods.names())
    with pytest.raises(UsageError, match="method names"):
        build_config({"methods": [","]})


def test_preset_method_names_and_tables_are_canonical(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('method = ["GradCAM", "Integrated-Gradients"]\n[methods.IntegratedGradients]\nsteps = 4\n')
    c = build_config({"config_file": preset})
    assert c.methods == ("gradcam", "integrated-gradients") and c.params == {"integrated-gradients": {"steps": 4}}


def test_cli_stores_canonical_names(cli, images_dir, tmp_path):
    out = tmp_path / "o"
    cli("explain", images_dir, "-o", out, *TINY_OPTS, "-m", "GradCAM,Saliency", "-m", "IG", "-p", "ig.steps=2")
    assert {r["method"] for r in manifest(out)} == {"gradcam", "vanilla", "integrated-gradients"}
    folders = {p.name for p in out.iterdir() if p.is_dir()}
    assert {"gradcam", "vanilla", "integrated-gradients"} <= folders and not folders & {"GradCAM", "Saliency", "IG"}
    settings = json.loads((out / "run.json").read_text())["settings"]
    assert settings["methods"] == ["gradcam", "vanilla", "integrated-gradients"]
    assert settings["params"] == {"integrated-gradients": {"steps": "2"}}
    rows = json.loads(cli("evaluate", out, "-m", "Grad-CAM", "--no-stability", "--steps", "4", "--json").stdout)
    assert {r["method"] for r in rows["methods"]} == {"gradcam", "random"}


def test_all_runs_every_method_in_registry_order(cli, tmp_path):
    write_images(tmp_path / "imgs", n=1)
    cheap = ["smoothgrad.samples=2", "integrated-gradients.steps=2", "gradient-shap.samples=2",
             "scorecam.channels=2", "occlusion.window=0.5", "rise.masks=4", "lime.samples=8", "lime.grid=2",
             "kernel-shap.samples=8", "kernel-shap.grid=2"]
    out = tmp_path / "o"
    cli("explain", tmp_path / "imgs", "-o", out, *TINY_OPTS, "-m", "all", *[a for kv in cheap for a in ("-p", kv)])
    assert json.loads((out / "run.json").read_text())["settings"]["methods"] == methods.names()
    assert {r["method"] for r in manifest(out)} == set(methods.names())


def test_target_and_layer_typos_get_suggestions(cli, images_dir, tmp_path):
    err = cli("explain", SAMPLES / "fashion-mnist" / "Bag", "-o", tmp_path / "t", "--target", "Sneakers",
              expect=2).stderr
    assert "Did you mean 'Sneaker'?" in err
    err = cli("explain", images_dir, "-o", tmp_path / "l", *TINY_OPTS, "-m", "gradcam", "--layer", "featurs.4",
              expect=2).stderr
    assert "unknown layer 'featurs.4'" in err and "Did you mean 'features.4'?" in err


# 15. The one-line summary

def test_summary_counts_images_and_maps_apart(cli, images_dir, tmp_path):
    err = cli("explain", images_dir, "-o", tmp_path / "o", *TINY_OPTS, "-m", "vanilla,gradcam").stderr
    assert re.search(r"^6 images x 2 methods: 12 maps written, 0 skipped, 0 failed in [\d.]+ s on cpu -> ", err, re.M)
    one = tmp_path / "one"
    write_images(one, n=1)
    err = cli("explain", one, "-o", tmp_path / "p", *TINY_OPTS).stderr
    assert re.search(r"^1 image x 1 method: 1 map written, 0 skipped, 0 failed in ", err, re.M)


def test_summary_names_what_failed(cli, images_dir, tmp_path):
    for i in range(7):
        (images_dir / f"broken{i}.png").write_bytes(b"not an image")
    out = tmp_path / "o"
    result = cli("explain", images_dir, "-o", out, *TINY_OPTS, "-m", "vanilla,gradcam", expect=1)
    err = result.stderr
    assert re.search(r"^13 images x 2 methods: 12 maps written, 0 skipped, 14 failed in ", err, re.M)
    assert "broken0.png (vanilla)" in err and f"see {out / 'manifest.jsonl'}" in err
    assert err.count("broken") < 14  # the first few, not a wall of lines
    summary = json.loads(cli("explain", images_dir, "-o", out, *TINY_OPTS, "-m", "vanilla,gradcam", "--json",
                             expect=1).stdout)
    old = {"out", "counts", "images", "seconds", "device", "errors", "max_failures", "exit_code"}
    assert old <= set(summary) and summary["methods"] == ["vanilla", "gradcam"]
    assert summary["counts"]["error"] == 14 and len(summary["errors"]) == 14


# 16. Presets ship with the package

def test_config_by_name_finds_the_shipped_preset():
    assert {"resnet50", "fashion-mnist", "vit_b_16"} <= set(presets())
    assert find_config("resnet50") == find_config("resnet50.toml") == presets()["resnet50"]
    assert build_config({"config_file": "resnet50"}).model == "torchvision:resnet50"
    assert build_config({"config_file": ROOT / "configs" / "resnet50.toml"}).model == "torchvision:resnet50"
    with pytest.raises(UsageError, match="Did you mean 'resnet50'.*resnet18, resnet50"):
        find_config("resnet5")


def test_unknown_config_name_is_a_usage_error_listing_the_presets(cli, images_dir, tmp_path):
    err = cli("explain", images_dir, "-o", tmp_path / "o", "--config", "nosuch", expect=2).stderr
    assert "config file not found: nosuch" in err and "fashion-mnist" in err and "resnet50" in err


def test_pyproject_lists_every_package():
    import tomllib

    from setuptools import find_packages

    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert sorted(listed) == sorted(find_packages(str(ROOT), include=["salcli*"]) + ["salcli.configs"])


def test_installed_package_finds_presets_by_name(tmp_path):
    """Build the wheel as pip would, unpack it as pip would, and find a preset by name from there."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "salcli", src / "salcli", ignore=ignore)
    shutil.copytree(ROOT / "configs", src / "configs", ignore=ignore)
    build = subprocess.run([sys.executable, "-c", "from setuptools import build_meta as b; "
                            f"print(b.build_wheel({str(tmp_path / 'dist')!r}))"],
                           cwd=src, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    wheel = tmp_path / "dist" / build.stdout.split()[-1]
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        shipped = {n for n in archive.namelist() if n.startswith("salcli/configs/")}
        archive.extractall(site)
    assert shipped == {f"salcli/configs/{p.name}" for p in (ROOT / "configs").glob("*.toml")}
    code = ("import importlib.resources as r, salcli\n"
            "from salcli.config import find_config, read_toml\n"
            f"assert salcli.__file__.startswith({str(site)!r}), salcli.__file__\n"
            "found = find_config('resnet50')\n"
            "assert found == r.files('salcli').joinpath('configs', 'resnet50.toml'), found\n"
            "print(read_toml(found)['model'])\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "torchvision:resnet50"
