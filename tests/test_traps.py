"""The traps of issue 13, each from a user's seat: a nightly run over a folder that changed, a random network
run silently, evaluate from another folder, an empty input set, a parameter for a method that does not run,
stdout polluted by a library, warnings through -q, and the Python floor."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, ROOT, TINY_OPTS, manifest, write_images
from PIL import Image


def summary(result) -> dict:
    return json.loads(result.stdout)


def test_nightly_run_over_a_folder_that_changed(cli, tmp_path):
    """Night 1 explains five images; by night 2 one was replaced under the same name, one deleted and three
    added. Night 2 redoes the replaced one, explains the new ones, keeps the rest, and reports the deleted one;
    --prune removes its outputs and records."""
    folder, out = tmp_path / "imgs", tmp_path / "out"
    write_images(folder, n=5, seed=0)
    first = summary(cli("explain", folder, "-o", out, *TINY_OPTS, "-m", "vanilla", "--json"))
    assert first["changes"] == {"new": 5, "redone": 0, "unchanged": 0, "gone": 0}
    before = {r["image"]: r for r in manifest(out)}

    replacement = np.random.default_rng(99).integers(0, 256, (20, 23, 3), dtype=np.uint8)
    Image.fromarray(replacement).save(folder / "img01.png")
    os.utime(folder / "img01.png", ns=(before["img01.png"]["mtime_ns"] + 10**9,) * 2)
    (folder / "img02.png").unlink()
    fresh = tmp_path / "fresh"
    write_images(fresh, n=8, seed=5)
    for name in ("img05.png", "img06.png", "img07.png"):
        shutil.copy(fresh / name, folder / name)

    second = cli("explain", folder, "-o", out, *TINY_OPTS, "-m", "vanilla", "--json")
    result = summary(second)
    assert result["changes"] == {"new": 3, "redone": 1, "unchanged": 3, "gone": 1}
    assert result["gone"] == ["img02.png"]
    assert result["counts"] == {"ok": 4, "error": 0, "skipped": 3}
    rows = {r["image"]: r for r in manifest(out)}
    assert "img02.png" in rows and (out / rows["img02.png"]["npy"]).is_file()  # reported, kept without --prune
    # the replaced image got the map of its new content, as a fresh run computes it
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(folder / "img01.png", alone / "img01.png")
    cli("explain", alone, "-o", tmp_path / "ref", *TINY_OPTS, "-m", "vanilla")
    ref = manifest(tmp_path / "ref")[0]
    assert rows["img01.png"]["pred"] == ref["pred"] and rows["img01.png"]["score"] == pytest.approx(ref["score"], rel=1e-5)
    np.testing.assert_allclose(np.load(out / rows["img01.png"]["npy"]), np.load(tmp_path / "ref" / ref["npy"]),
                               rtol=1e-5)  # other batch companions: float rounding only
    assert rows["img01.png"]["score"] != before["img01.png"]["score"]

    pruned = summary(cli("explain", folder, "-o", out, *TINY_OPTS, "-m", "vanilla", "--prune", "--json"))
    assert pruned["changes"] == {"new": 0, "redone": 0, "unchanged": 7, "gone": 1, "pruned": 1}
    rows = {r["image"]: r for r in manifest(out)}
    assert "img02.png" not in rows and not (out / "vanilla" / "img02.npy").exists()
    assert not (out / "vanilla" / "img02.png").exists()
    after = summary(cli("explain", folder, "-o", out, *TINY_OPTS, "-m", "vanilla", "--json"))
    assert after["changes"]["gone"] == 0  # a pruned image is gone for good
    assert json.loads((out / "run.json").read_text())["changes"]["unchanged"] == 7


def test_the_summary_line_says_what_changed(cli, tmp_path):
    folder, out = tmp_path / "imgs", tmp_path / "out"
    write_images(folder, n=3)
    cli("explain", folder, "-o", out, *TINY_OPTS)
    (folder / "img00.png").unlink()
    err = cli("explain", folder, "-o", out, *TINY_OPTS).stderr
    assert "1 gone" in err and "img00.png" in err and "--prune" in err


def test_random_weights_are_said_loudly_recorded_and_seeded(cli, images_dir, tmp_path):
    opts = ["--model", "torchvision:resnet18", "--resize", "64", "--crop", "64", "-q"]
    first = cli("explain", images_dir, "-o", tmp_path / "a", *opts)
    cli("explain", images_dir, "-o", tmp_path / "b", *opts)
    assert "random weights" in first.stderr and "--weights" in first.stderr  # even with -q
    a, b = manifest(tmp_path / "a"), manifest(tmp_path / "b")
    assert [r["score"] for r in a] == [r["score"] for r in b]  # two runs, the same network
    assert json.loads((tmp_path / "a" / "run.json").read_text())["model"]["random_weights"] is True
    cli("explain", images_dir, "-o", tmp_path / "c", *opts, "--seed", "1")
    assert [r["score"] for r in manifest(tmp_path / "c")] != [r["score"] for r in a]  # the seed decides it
    from helpers import torchvision_weights

    loaded = cli("explain", images_dir, "-o", tmp_path / "d", *opts, *torchvision_weights(tmp_path, "resnet18"))
    assert "random weights" not in loaded.stderr
    assert json.loads((tmp_path / "d" / "run.json").read_text())["model"]["random_weights"] is False


def test_evaluate_from_another_folder_after_relative_paths(cli, tmp_path, monkeypatch):
    work = tmp_path / "project"
    (work / "models").mkdir(parents=True)
    shutil.copy(FIXTURES / "tiny.py", work / "models" / "tiny.py")
    write_images(work / "imgs", n=3)
    from tiny import build

    from safetensors.torch import save_file

    save_file(build().state_dict(), str(work / "models" / "w.safetensors"))
    monkeypatch.chdir(work)
    cli("explain", "imgs", "-o", "out", "--model", "models/tiny.py:build", "--weights", "models/w.safetensors",
        *TINY_OPTS[2:])
    monkeypatch.chdir(tmp_path)
    cli("evaluate", work / "out", "--no-stability", "--steps", "4", "-q")
    run = json.loads((work / "out" / "run.json").read_text())
    assert run["settings"]["model"] == f"{work / 'models' / 'tiny.py'}:build"


def test_an_empty_or_mistyped_input_set_is_an_error(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no images in" in cli("explain", tmp_path / "empty", "-o", tmp_path / "o", *TINY_OPTS, expect=2).stderr
    assert "not found" in cli("explain", tmp_path / "typo", "-o", tmp_path / "o", *TINY_OPTS, expect=2).stderr
    assert not (tmp_path / "o" / "manifest.jsonl").exists()


def test_a_parameter_for_a_method_that_does_not_run_is_an_error(cli, images_dir, tmp_path):
    err = cli("explain", images_dir, "-o", tmp_path / "o", *TINY_OPTS, "-p", "smoothgrad.samples=4",
              expect=2).stderr
    assert "smoothgrad is not among the chosen methods" in err
    cli("explain", images_dir, "-o", tmp_path / "o", *TINY_OPTS, "-m", "smoothgrad", "-p", "smoothgrad.samples=4")


def test_stdout_carries_only_data(cli, images_dir, tmp_path):
    """A model (or torch.hub) that prints while loading must not break --json."""
    result = cli("explain", images_dir, "-o", tmp_path / "o", "--model", f"{FIXTURES / 'noisy.py'}:build",
                 *TINY_OPTS[2:], "--json")
    assert json.loads(result.stdout)["counts"]["ok"] == 6
    assert "Downloading:" in result.stderr


def test_warnings_do_not_leak_through_quiet(tmp_path):
    """In a real process (not CliRunner): evaluate and sanity with -q print nothing on success, and a
    TorchScript model (torch.jit's deprecation notices) none either."""
    import torch
    from tiny import build

    write_images(tmp_path / "imgs", n=2)
    scripted = tmp_path / "m.ts"
    torch.jit.save(torch.jit.trace(build().eval(), torch.zeros(1, 3, 16, 16)), str(scripted))
    salcli = [sys.executable, "-m", "salcli"]
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    pre = TINY_OPTS[2:]
    runs = [["explain", tmp_path / "imgs", "-o", tmp_path / "o", "--model", scripted, *pre, "-q"],
            ["evaluate", tmp_path / "o", "--no-stability", "--steps", "4", "-q"],
            ["sanity", tmp_path / "imgs", "--model", f"{FIXTURES / 'tiny.py'}:build", *pre, "-m", "vanilla",
             "--limit", "2", "--max-steps", "2", "-q"]]
    warns = ["explain", tmp_path / "imgs", "-o", tmp_path / "w", "--model", f"{FIXTURES / 'noisy.py'}:build_warns",
             *pre]
    runs.append([*warns, "-q"])
    for args in runs:
        done = subprocess.run([*salcli, *map(str, args)], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stderr == "", f"{args[0]}: {done.stderr}"
    loud = subprocess.run([*salcli, *map(str, warns), "--overwrite"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert "own UserWarning" in loud.stderr  # without -q a warning is shown: the check above can see them


def test_the_python_floor_parses_and_imports(tmp_path):
    """requires-python says 3.10: every module compiles under 3.10 and every standard-library module salcli
    imports outside a try block exists there (tomllib is 3.11+, behind a tomli fallback)."""
    python310 = next((p for p in [shutil.which("python3.10"),
                                  *sorted(Path.home().glob(".pyenv/versions/3.10*/bin/python3.10"))]
                      if p and subprocess.run([p, "-c", "pass"], capture_output=True).returncode == 0), None)
    if python310 is None:
        pytest.skip("no Python 3.10 interpreter on this machine")
    check = r"""
import ast, pathlib, sys, importlib.util
bad = []
for path in pathlib.Path(sys.argv[1]).rglob("*.py"):
    tree = ast.parse(path.read_text(), str(path))  # a 3.11-only syntax fails here
    guarded = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) for b in t.body for n in ast.walk(b)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in guarded:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                if node.__class__ is ast.ImportFrom and node.level:
                    continue
                if top in sys.stdlib_module_names and importlib.util.find_spec(top) is None:
                    bad.append(f"{path.name}: {name}")
print("\n".join(bad))
sys.exit(1 if bad else 0)
"""
    done = subprocess.run([python310, "-c", check, str(ROOT / "salcli")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'requires-python = ">=3.10"' in pyproject and "tomli" in pyproject


def test_the_lock_is_portable(tmp_path):
    """No fcntl: the lock on OUT's shared files comes from filelock (Windows has no fcntl)."""
    source = (ROOT / "salcli" / "outputs" / "__init__.py").read_text()
    assert "fcntl" not in source
    from salcli.outputs import locked

    with locked(tmp_path):
        pass
    assert (tmp_path / ".salcli.lock").exists()


@pytest.mark.parametrize("body, key", [
    ('preprocess = {resize = "big"}', "'preprocess.resize'"),
    ('preprocess = {mean = [0.5, "a", 0.5]}', "'preprocess.mean.1'"),
    ('preprocess = {std = [0.5, 0.0, 0.5]}', "'preprocess.std.1'"),
    ("preprocess = {resize = 40000}", "'preprocess.resize'"),
    ("preprocess = 3", "'preprocess'"),
    ("alpha = nan", "'alpha'"),
    ("seed = 18446744073709551616", "'seed'"),
    ('batch_size = "big"', "'batch_size'"),
    ("method = [1, 2]", "'methods.0'"),
    ("labels = [1, 2]", "'labels'"),
    ("trust_checkpoint = 1", "'trust_checkpoint'"),
    ('[methods.smoothgrad]\nsamples = "many"', "smoothgrad.samples"),  # a table of a method that does not run
])
def test_preset_values_of_the_wrong_type_are_usage_errors(cli, images_dir, tmp_path, body, key):
    preset = tmp_path / "p.toml"
    preset.write_text(body + "\n")
    result = cli("explain", images_dir, "-o", tmp_path / "o", "--config", preset, expect=2)
    assert key in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()  # nothing written
