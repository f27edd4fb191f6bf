"""The CLI contract: commands, option families, output layout, manifest fields, exit codes, README."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TINY_OPTS, manifest
from PIL import Image

MANIFEST_FIELDS = {"image", "method", "status", "error", "npy", "overlay", "pred", "pred_label", "prob",
                   "target", "target_label", "score"}


def test_version_and_help(cli):
    assert cli("--version").stdout.strip().startswith("salcli ")
    assert "explain" in cli("--help").stdout
    text = cli("explain", "--help").stdout
    for option in ("--out", "--model", "--weights", "--trust-checkpoint", "--method", "--param", "--shard"):
        assert option in text


@pytest.mark.parametrize("args", [["--help"], ["explain", "--help"], ["methods", "--help"]])
def test_help_does_not_import_torch(args):
    code = ("import sys\nfrom salcli.cli import app\n"
            f"try:\n    app({args!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=ROOT)


def test_output_layout_manifest_and_run_json(cli, images_dir, tmp_path):
    out = tmp_path / "out"
    cli("explain", images_dir, "-o", out, *TINY_OPTS)
    records = manifest(out)
    assert [r["image"] for r in records] == [f"img{i:02d}.png" for i in range(6)]
    for r in records:
        assert MANIFEST_FIELDS <= set(r)
        assert r["status"] == "ok" and r["error"] is None and r["method"] == "vanilla"
        assert r["npy"] == f"vanilla/{r['image']}.npy" and r["overlay"] == f"vanilla/{r['image']}.png"
        saliency = np.load(out / r["npy"])
        assert saliency.shape == (16, 16) and saliency.dtype == np.float32 and (saliency >= 0).all()
        assert Image.open(out / r["overlay"]).format == "PNG"
        assert 0 <= r["pred"] < 4 and r["target"] == r["pred"] and 0 < r["prob"] <= 1
        assert r["pred_label"] is None  # the tiny model has no labels
    run = json.loads((out / "run.json").read_text())
    assert run["schema_version"] == 1 and run["seed"] == 0 and run["device"] == "cpu"
    assert run["counts"] == {"ok": 6, "error": 0, "skipped": 0}
    assert any(k.endswith("tiny.py") for k in run["model"]["sha256"])
    assert {"torch", "torchvision", "python"} <= set(run["versions"])
    assert run["preprocess"]["crop"] == 16 and run["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".part")]
    assert not leftovers


def test_json_summary_and_quiet(cli, images_dir, tmp_path):
    result = cli("explain", images_dir, "-o", tmp_path / "o", *TINY_OPTS, "--json", "-q")
    summary = json.loads(result.stdout)
    assert summary["counts"]["ok"] == 6 and summary["exit_code"] == 0 and summary["images"] == 6
    assert result.stderr == ""
    quiet = cli("explain", images_dir, "-o", tmp_path / "q", *TINY_OPTS, "-q")
    assert quiet.stdout == "" and quiet.stderr == ""


def test_resume_skips_and_overwrite_redoes(cli, images_dir, tmp_path):
    out = tmp_path / "out"
    cli("explain", images_dir, "-o", out, *TINY_OPTS)
    first = {r["image"]: r for r in manifest(out)}
    stamp = (out / "vanilla" / "img00.png.npy").stat().st_mtime_ns
    summary = json.loads(cli("explain", images_dir, "-o", out, *TINY_OPTS, "--json").stdout)
    assert summary["counts"] == {"ok": 0, "error": 0, "skipped": 6}
    again = {r["image"]: r for r in manifest(out)}
    assert all(r["status"] == "skipped" and r["pred"] == first[k]["pred"] for k, r in again.items())
    assert (out / "vanilla" / "img00.png.npy").stat().st_mtime_ns == stamp
    # a different setting is not "the same settings": it is recomputed
    summary = json.loads(cli("explain", images_dir, "-o", out, *TINY_OPTS, "--target", "1", "--json").stdout)
    assert summary["counts"]["ok"] == 6
    summary = json.loads(cli("explain", images_dir, "-o", out, *TINY_OPTS, "--target", "1", "--overwrite",
                             "--json").stdout)
    assert summary["counts"]["ok"] == 6
    # a deleted output is redone on resume
    (out / "vanilla" / "img03.png.png").unlink()
    summary = json.loads(cli("explain", images_dir, "-o", out, *TINY_OPTS, "--target", "1", "--json").stdout)
    assert summary["counts"] == {"ok": 1, "error": 0, "skipped": 5}


def test_outputs_never_searched_as_inputs(cli, images_dir):
    out = images_dir / "out"  # the output folder inside the input folder
    cli("explain", images_dir, "-o", out, *TINY_OPTS)
    summary = json.loads(cli("explain", images_dir, "-o", out, *TINY_OPTS, "--json").stdout)
    assert summary["images"] == 6


def test_target_index_and_label(cli, tmp_path):
    folder = ROOT / "sample_images" / "fashion-mnist" / "Trouser"
    out = tmp_path / "o"
    cli("explain", folder, "-o", out, "--target", "Bag")
    assert {(r["target"], r["target_label"]) for r in manifest(out)} == {(8, "Bag")}
    cli("explain", folder, "-o", tmp_path / "i", "--target", "3")
    assert {r["target_label"] for r in manifest(tmp_path / "i")} == {"Dress"}
    assert {r["pred_label"] for r in manifest(tmp_path / "i")} == {"Trouser"}
    err = cli("explain", folder, "-o", tmp_path / "x", "--target", "Trousers", expect=2).stderr
    assert "Trouser" in err and not (tmp_path / "x").exists()
    cli("explain", folder, "-o", tmp_path / "y", "--target", "10", expect=2)


def test_colormap_and_alpha_change_the_overlay(cli, images_dir, tmp_path):
    cli("explain", images_dir, "-o", tmp_path / "a", *TINY_OPTS)
    cli("explain", images_dir, "-o", tmp_path / "b", *TINY_OPTS, "--colormap", "viridis", "--alpha", "0.8")
    a = np.asarray(Image.open(tmp_path / "a" / "vanilla" / "img00.png.png"))
    b = np.asarray(Image.open(tmp_path / "b" / "vanilla" / "img00.png.png"))
    assert a.shape == b.shape and min(a.shape[:2]) >= 224 and np.abs(a.astype(int) - b).mean() > 5
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "vanilla" / "img00.png.npy"),
                                  np.load(tmp_path / "b" / "vanilla" / "img00.png.npy"))


def test_shards_are_disjoint_and_merge(cli, images_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    s0 = json.loads(cli("explain", images_dir, "-o", out, *TINY_OPTS, "--shard", "0/2", "--json").stdout)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    s1 = json.loads(cli("explain", images_dir, "-o", out, *TINY_OPTS, "--json").stdout)
    assert s0["images"] + s1["images"] == 6
    # shards share no file: each journals into OUT/parts; `merge` combines them afterwards
    assert not (out / "manifest.jsonl").exists() and not (out / "run.json").exists()
    assert sorted(p.name for p in (out / "parts").iterdir()) == [
        "manifest-00000-of-00002.jsonl", "manifest-00001-of-00002.jsonl", "run-00000-of-00002.json",
        "run-00001-of-00002.json"]
    cli("verify", out)  # the parts alone account for every image
    cli("merge", out)
    assert sorted(r["image"] for r in manifest(out)) == [f"img{i:02d}.png" for i in range(6)]
    run = json.loads((out / "run.json").read_text())
    assert set(run["shards"]) == {"00000-of-00002", "00001-of-00002"} and run["counts"]["ok"] == 6
    assert run["images"] == 6


def test_device_and_batch_size(cli, images_dir, tmp_path):
    out = tmp_path / "o"
    cli("explain", images_dir, "-o", out, *TINY_OPTS, "--device", "cpu", "--batch-size", "2", "--workers", "1")
    run = json.loads((out / "run.json").read_text())
    assert run["batch_size"] == 2 and run["workers"] == 1 and run["device"] == "cpu"


@pytest.mark.parametrize("args, needle", [
    (["-m", "gradcm"], "unknown method"),
    (["-p", "vanilla.steps=3"], "unknown parameter"),
    (["-p", "nosuch.key=1"], "unknown method"),
    (["-p", "vanilla"], "METHOD.KEY=VALUE"),
    (["--shard", "2/2"], "--shard"),
    (["--device", "tpu"], "--device"),
    (["--batch-size", "0"], "--batch-size"),
    (["--colormap", "jett"], "jet"),
    (["--alpha", "2"], "--alpha"),
    (["--channels", "2"], "--channels"),
    (["--mean", "a,b"], "--mean"),
    (["--labels", "/no/such/labels.txt"], "--labels"),
    (["--config", "/no/such/preset.toml"], "config file"),
])
def test_usage_errors_exit_2_and_write_nothing(cli, images_dir, tmp_path, args, needle):
    out = tmp_path / "o"
    result = cli("explain", images_dir, "-o", out, *TINY_OPTS, *args, expect=2)
    assert needle in result.stderr
    assert not out.exists()


def test_did_you_mean(cli, images_dir, tmp_path):
    assert "did you mean 'vanilla'" in cli("explain", images_dir, "-o", tmp_path / "o", "-m", "vanila",
                                           expect=2).stderr.lower()


def test_missing_input_and_missing_out(cli, tmp_path):
    cli("explain", tmp_path / "nothing-here", "-o", tmp_path / "o", expect=2)
    cli("explain", tmp_path, expect=2)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda_is_a_usage_error(cli, images_dir, tmp_path):
    assert "CUDA" in cli("explain", images_dir, "-o", tmp_path / "o", *TINY_OPTS, "--device", "cuda",
                         expect=2).stderr


def test_methods_command(cli):
    rows = json.loads(cli("methods", "--json").stdout)
    assert "vanilla" in {r["name"] for r in rows}
    for r in rows:
        assert r["convention"] and r["passes"] and isinstance(r["params"], list)
    assert "vanilla" in cli("methods").stdout


def test_readme_documents_every_command_and_option():
    readme = (ROOT / "README.md").read_text()
    from salcli.cli import app
    from typer.main import get_command

    group = get_command(app)
    for name, command in group.commands.items():
        assert f"salcli {name}" in readme, f"command {name} missing from README"
        for param in command.params:
            for opt in param.opts:
                if opt.startswith("--") and opt != "--help":
                    assert opt in readme, f"option {opt} of {name} missing from README"
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 3 |", "| 4 |", "| 130 / 143 / 129 |"):
        assert code in readme


def test_readme_method_table_is_generated_from_the_registry():
    from salcli.docs import method_table

    assert method_table() in (ROOT / "README.md").read_text(), "run: python -m salcli.docs --write"


def test_python_module_entry_point(tmp_path):
    result = subprocess.run([sys.executable, "-m", "salcli", "--version"], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    assert re.match(r"salcli \d+\.\d+", result.stdout)
