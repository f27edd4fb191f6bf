"""salcli.config: -p parsing, shards, TOML presets merged with command-line values, Preprocess validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, manifest
from salcli.config import SHARD_ENV, Preprocess, RunConfig, build_config, parse_param, parse_shard
from salcli.errors import UsageError


@pytest.fixture(autouse=True)
def _no_shard_env(monkeypatch):
    """build_config reads the real environment for shards; keep a CI runner's variables out of it."""
    for name in SHARD_ENV:
        monkeypatch.delenv(name, raising=False)


# ---------------------------------------------------------------------------------------------- -p
@pytest.mark.parametrize("text,want", [
    ("smoothgrad.samples=50", ("smoothgrad", "samples", "50")),
    ("integrated-gradients.steps = 32", ("integrated-gradients", "steps", "32")),
    ("rise.mask_prob=0.5", ("rise", "mask_prob", "0.5")),
    ("a.b=c=d", ("a", "b", "c=d")),
    ("smoothgrad.square=true", ("smoothgrad", "square", "true")),
])
def test_parse_param_good(text, want):
    assert parse_param(text) == want


@pytest.mark.parametrize("text", ["smoothgrad", "samples=5", ".samples=5", "smoothgrad.=5",
                                  "smoothgrad.samples", "=5", ""])
def test_parse_param_bad(text):
    with pytest.raises(UsageError, match="METHOD.KEY=VALUE"):
        parse_param(text)


# ---------------------------------------------------------------------------------------------- shards
@pytest.mark.parametrize("text,want", [("1/4", (1, 4)), ("0/1", (0, 1)), ("3/4", (3, 4))])
def test_parse_shard_text(text, want):
    assert parse_shard(text, env={}).pair == want


@pytest.mark.parametrize("text", ["4/4", "x", "-1/4", "1/0", "1/4/5", "1-4", "", "a/b"])
def test_parse_shard_bad(text):
    with pytest.raises(UsageError):
        parse_shard(text, env={})


def test_parse_shard_from_torchrun_env():
    assert parse_shard(None, env={"RANK": "1", "WORLD_SIZE": "3"}).pair == (1, 3)
    assert parse_shard(None, env={"RANK": "0", "WORLD_SIZE": "1"}) is None  # one process: no sharding


def test_parse_shard_from_slurm_array():
    env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "4",
           "SLURM_ARRAY_TASK_MAX": "6"}
    assert parse_shard(None, env=env).pair == (1, 3)
    env = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "0",
           "SLURM_ARRAY_TASK_MAX": "2"}
    assert parse_shard(None, env=env).pair == (2, 3)


def test_parse_shard_no_env_and_text_wins():
    assert parse_shard(None, env={}) is None
    assert parse_shard("0/2", env={"RANK": "1", "WORLD_SIZE": "3"}).pair == (0, 2)


# ---------------------------------------------------------------------------------------------- presets
def _preset(tmp_path: Path, text: str, name: str = "preset.toml") -> Path:
    folder = tmp_path / "presets"
    folder.mkdir(exist_ok=True)
    p = folder / name
    p.write_text(text)
    return p


def _cli(**kw):
    base = {"inputs": [Path("imgs")], "out": Path("out")}
    return {**base, **kw}


PRESET = """
description = "a test preset"
model = "torchvision:resnet18"
seed = 7
colormap = "viridis"
alpha = 0.3
target = 2

[preprocess]
resize = 32
crop = 28
mean = [0.5]
std = [0.25]
channels = 3

[methods.vanilla]
foo = 1

[methods.smoothgrad]
samples = 5
sigma = 0.1
"""


def test_build_config_uses_preset_values(tmp_path):
    p = _preset(tmp_path, PRESET)
    c = build_config(_cli(config_file=p))
    assert isinstance(c, RunConfig)
    assert c.model == "torchvision:resnet18"
    assert c.seed == 7 and c.colormap == "viridis" and c.alpha == 0.3
    assert c.target == "2"
    assert c.preprocess == {"resize": 32, "crop": 28, "mean": (0.5,), "std": (0.25,), "channels": 3}
    assert c.params == {"vanilla": {"foo": 1}, "smoothgrad": {"samples": 5, "sigma": 0.1}}
    assert c.methods == ("vanilla",)
    assert c.config_file == p
    assert c.inputs == (Path("imgs"),) and c.out == Path("out")


def test_build_config_command_line_overrides_preset(tmp_path):
    p = _preset(tmp_path, PRESET)
    c = build_config(_cli(config_file=p, seed=3, colormap="jet", crop=24, mean="0.1,0.2,0.3",
                          params=["smoothgrad.samples=9", "rise.masks=10"], model="builtin:fashion-mnist",
                          alpha=None, methods=["smoothgrad", "rise"]))
    assert c.seed == 3 and c.colormap == "jet" and c.model == "builtin:fashion-mnist"
    assert c.alpha == 0.3  # None on the command line means "not given"
    assert c.preprocess["crop"] == 24 and c.preprocess["resize"] == 32
    assert c.preprocess["mean"] == (0.1, 0.2, 0.3) and c.preprocess["std"] == (0.25,)
    assert c.params["smoothgrad"] == {"samples": "9", "sigma": 0.1}
    assert c.params["rise"] == {"masks": "10"}
    assert c.params["vanilla"] == {"foo": 1}  # a preset's table for a method that does not run is kept
    assert build_config(_cli(config_file=p, methods=[])).methods == ("vanilla",)  # an empty -m list: the default


def test_a_typed_parameter_for_a_method_that_does_not_run_is_an_error(tmp_path):
    with pytest.raises(UsageError, match="smoothgrad is not among the chosen methods \\(vanilla\\)"):
        build_config(_cli(params=["smoothgrad.samples=9"]))
    with pytest.raises(UsageError, match="rise is not among the chosen methods \\(smoothgrad\\)"):
        build_config(_cli(params=["smoothgrad.samples=9", "rise.masks=10"], methods=["smoothgrad"]))
    assert build_config(_cli(params=["smoothgrad.samples=9"], methods=["smoothgrad"])).params == {
        "smoothgrad": {"samples": "9"}}


def test_paths_are_stored_absolute(tmp_path, monkeypatch):
    """evaluate OUT reloads the run's model from run.json, maybe from another folder (issue 13, item 6)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text("def build(): pass\n")
    (tmp_path / "w.pt").write_bytes(b"")
    (tmp_path / "labels.txt").write_text("a\n")
    (tmp_path / "refs").mkdir()
    c = build_config(_cli(model="net.py:build", weights="w.pt", labels="labels.txt", methods=["gradient-shap"],
                          params=["gradient-shap.references=refs"]))
    assert c.model == f"{tmp_path / 'net.py'}:build" and c.weights == str(tmp_path / "w.pt")
    assert c.labels == str(tmp_path / "labels.txt")
    assert c.params["gradient-shap"]["references"] == str(tmp_path / "refs")
    for spec in ("builtin:fashion-mnist", "torchvision:resnet18", "timm:resnet50.a1_in1k", "package.module:build"):
        assert build_config(_cli(model=spec)).model == spec
    assert build_config(_cli(model="torchvision:resnet18", weights="DEFAULT")).weights == "DEFAULT"


def test_build_config_methods_list_in_preset(tmp_path):
    p = _preset(tmp_path, 'methods = ["vanilla", "smoothgrad", "vanilla"]\n')
    c = build_config(_cli(config_file=p))
    assert c.methods == ("vanilla", "smoothgrad")
    assert build_config(_cli(config_file=p, methods=["gradcam"])).methods == ("gradcam",)


def test_build_config_unknown_key_names_valid_keys(tmp_path):
    p = _preset(tmp_path, 'modle = "builtin:fashion-mnist"\n')
    with pytest.raises(UsageError) as err:
        build_config(_cli(config_file=p))
    msg = str(err.value)
    assert "modle" in msg
    assert "Did you mean 'model'" in msg
    for valid in ("model", "weights", "preprocess", "colormap", "seed"):
        assert valid in msg


def test_build_config_unknown_preprocess_key(tmp_path):
    p = _preset(tmp_path, "[preprocess]\nsize = 3\n")
    with pytest.raises(UsageError, match="preprocess.size"):
        build_config(_cli(config_file=p))


def test_build_config_wrong_type(tmp_path):
    p = _preset(tmp_path, 'seed = "seven"\n')
    with pytest.raises(UsageError, match="seed"):
        build_config(_cli(config_file=p))


def test_build_config_bad_toml(tmp_path):
    p = _preset(tmp_path, 'model = "unterminated\n[preprocess\n')
    with pytest.raises(UsageError, match="not valid TOML"):
        build_config(_cli(config_file=p))


def test_build_config_missing_preset(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        build_config(_cli(config_file=tmp_path / "nope.toml"))


def test_build_config_relative_paths_resolve_against_preset_folder(tmp_path, monkeypatch):
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    p = _preset(tmp_path, 'model = "nets/tiny.py:build"\nweights = "w.safetensors"\nlabels = "labels.txt"\n')
    c = build_config(_cli(config_file=p))
    folder = p.parent.resolve()
    assert c.weights == str(folder / "w.safetensors")
    assert c.labels == str(folder / "labels.txt")
    assert c.model == f"{folder / 'nets' / 'tiny.py'}:build"
    # names that are not paths stay as they are
    q = _preset(tmp_path, 'weights = "DEFAULT"\nlabels = "imagenet"\n', name="q.toml")
    c = build_config(_cli(config_file=q))
    assert c.weights == "DEFAULT" and c.labels == "imagenet"


def test_build_config_validates_values(tmp_path):
    with pytest.raises(UsageError, match="alpha"):
        build_config(_cli(alpha=1.5))
    with pytest.raises(UsageError, match="batch_size"):
        build_config(_cli(batch_size="0"))
    with pytest.raises(UsageError, match="device"):
        build_config(_cli(device="gpu"))
    with pytest.raises(UsageError, match="mean"):
        build_config(_cli(mean="0.5,x"))
    assert build_config(_cli(batch_size="8")).batch_size == 8
    assert build_config(_cli(shard="1/2")).shard == (1, 2)


# ---------------------------------------------------------------------------------------------- Preprocess
@pytest.mark.parametrize("kwargs,match", [
    ({"channels": 2}, "channels"),
    ({"resize": 16, "crop": 20}, "larger than --resize"),
    ({"mean": (0.5, 0.5)}, "--mean has 2 values"),
    ({"std": (0.5, 0.5, 0.5, 0.5)}, "--std has 4 values"),
    ({"channels": 1, "mean": (0.1, 0.2, 0.3), "std": (1.0,)}, "--mean has 3 values"),
    ({"std": (0.5, 0.0, 0.5)}, "positive"),
    ({"crop": 0}, "positive"),
    ({"interpolation": "lanczos"}, "interpolation"),
])
def test_preprocess_validation(kwargs, match):
    with pytest.raises(UsageError) as caught:
        Preprocess(**kwargs)
    assert match in caught.value.render({})  # as the command line words it


def test_preprocess_single_mean_std_apply_to_every_channel():
    from salcli.images import normalize

    px = np.full((2, 2, 3), 255, np.uint8)
    x = normalize(px, Preprocess(resize=8, crop=8, mean=(0.5,), std=(0.25,), channels=3))
    assert x.shape == (3, 2, 2)
    np.testing.assert_allclose(x, 2.0)
    g = normalize(np.zeros((2, 2, 1), np.uint8), Preprocess(resize=8, crop=8, mean=(0.3,), std=(0.2,), channels=1))
    assert g.shape == (1, 2, 2)
    np.testing.assert_allclose(g, -1.5, rtol=1e-6)


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_config_preset_with_command_line_override(cli, images_dir, tmp_path):
    preset = _preset(tmp_path, f"""
model = "{(FIXTURES / 'tiny.py').as_posix()}:build"
device = "cpu"

[preprocess]
resize = 16
crop = 16
mean = [0.5]
std = [0.25]
channels = 3
""")
    out16, out12 = tmp_path / "out16", tmp_path / "out12"
    cli("explain", images_dir, "-o", out16, "--config", preset, expect=0)
    cli("explain", images_dir, "-o", out12, "--config", preset, "--crop", "12", expect=0)
    for out, side in ((out16, 16), (out12, 12)):
        records = manifest(out)
        assert len(records) == 6 and all(r["status"] == "ok" for r in records)
        for r in records:
            m = np.load(out / r["npy"])
            assert m.shape == (side, side) and m.dtype == np.float32 and np.isfinite(m).all()


def test_cli_bad_preset_is_exit_2(cli, images_dir, tmp_path):
    preset = _preset(tmp_path, 'colour = "jet"\n')
    result = cli("explain", images_dir, "-o", tmp_path / "out", "--config", preset, expect=2)
    assert "colour" in result.stderr and "colormap" in result.stderr
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_preset_lists_methods_beside_method_tables(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('method = ["vanilla"]\n[methods.vanilla]\n[methods.smoothgrad]\nsamples = 8\n')
    from salcli.config import build_config

    config = build_config({"config_file": preset})
    assert config.methods == ("vanilla",) and config.params == {"vanilla": {}, "smoothgrad": {"samples": 8}}
