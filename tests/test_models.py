"""Model specs, weights loading and the trust rules, through the CLI (exit 3) and directly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from conftest import FIXTURES, TINY, TINY_OPTS, manifest
from helpers import torchvision_weights
from safetensors.torch import save_file

from salcli.errors import ModelLoadError
from salcli.checkpoint import read as read_checkpoint
from salcli.models import load_model

PRE = TINY_OPTS[2:]  # preprocessing options without --model


def tiny_state():
    from tiny import build

    return build().state_dict()


def test_builtin_default_model(cli, tmp_path):
    from conftest import PHOTOS, SAMPLES

    out = tmp_path / "o"
    cli("explain", SAMPLES / "fashion-mnist" / "Bag", "-o", out)
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["spec"] == "builtin:fashion-mnist" and run["model"]["kind"] == "builtin"
    assert len(next(iter(run["model"]["sha256"].values()))) == 64
    assert np.load(out / manifest(out)[0]["npy"]).shape == (28, 28)


def test_unknown_builtin_and_torchvision_names(cli, images_dir, tmp_path):
    assert "fashion-mnist" in cli("explain", images_dir, "-o", tmp_path / "a", "--model", "builtin:fashion",
                                  expect=3).stderr
    assert "resnet18" in cli("explain", images_dir, "-o", tmp_path / "b", "--model", "torchvision:resnet19",
                             expect=3).stderr


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module_prefix"])
def test_state_dict_variants(tmp_path, wrap):
    state = tiny_state()
    if wrap == "module_prefix":
        state = {f"module.{k}": v for k, v in state.items()}
    elif wrap != "plain":
        state = {wrap: state, "epoch": 3}
    path = tmp_path / "w.pt"
    torch.save(state, path)
    loaded = load_model(f"{FIXTURES / 'tiny.py'}:build", str(path))
    for k, v in tiny_state().items():
        assert torch.equal(loaded.module.state_dict()[k], v)
    assert str(path) in loaded.checksums


def test_weights_are_loaded_not_ignored(cli, images_dir, tmp_path):
    state = {k: torch.randn_like(v) for k, v in tiny_state().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    cli("explain", images_dir, "-o", tmp_path / "a", *TINY_OPTS)
    cli("explain", images_dir, "-o", tmp_path / "b", *TINY_OPTS, "--weights", tmp_path / "w.safetensors")
    a = np.load(tmp_path / "a" / "vanilla" / "img00.png.npy")
    b = np.load(tmp_path / "b" / "vanilla" / "img00.png.npy")
    assert not np.allclose(a, b)


def test_mismatched_weights_name_the_keys(cli, images_dir, tmp_path):
    state = tiny_state()
    state["extra.weight"] = torch.zeros(1)
    del state["fc.bias"]
    state["fc.weight"] = torch.zeros(7, 16)
    torch.save(state, tmp_path / "bad.pth")
    err = cli("explain", images_dir, "-o", tmp_path / "o", *TINY_OPTS, "--weights", tmp_path / "bad.pth",
              expect=3).stderr
    assert "fc.bias" in err and "extra.weight" in err and "fc.weight" in err


def test_missing_files_exit_3(cli, images_dir, tmp_path):
    cli("explain", images_dir, "-o", tmp_path / "a", *TINY_OPTS, "--weights", tmp_path / "nope.pt", expect=3)
    cli("explain", images_dir, "-o", tmp_path / "b", "--model", tmp_path / "nope.pt", *PRE, expect=3)
    cli("explain", images_dir, "-o", tmp_path / "c", "--model", tmp_path / "nope.py:build", *PRE, expect=3)


def test_factory_errors_exit_3(cli, images_dir, tmp_path):
    assert "torch.nn.Module" in cli("explain", images_dir, "-o", tmp_path / "a", "--model",
                                    f"{FIXTURES / 'tiny.py'}:not_a_model", *PRE, expect=3).stderr
    assert "build" in cli("explain", images_dir, "-o", tmp_path / "b", "--model",
                          f"{FIXTURES / 'tiny.py'}:buld", *PRE, expect=3).stderr


def test_module_factory_spec(cli, images_dir, tmp_path):
    cli("explain", images_dir, "-o", tmp_path / "o", "--model", "tiny:build", *PRE)  # tests/fixtures on sys.path
    assert len(manifest(tmp_path / "o")) == 6


def test_torchscript_without_trust(cli, images_dir, tmp_path, tiny_model):
    path = tmp_path / "tiny.ts"
    torch.jit.script(tiny_model).save(str(path))
    cli("explain", images_dir, "-o", tmp_path / "ts", "--model", path, *PRE)
    cli("explain", images_dir, "-o", tmp_path / "py", *TINY_OPTS)
    np.testing.assert_allclose(np.load(tmp_path / "ts" / "vanilla" / "img01.png.npy"),
                               np.load(tmp_path / "py" / "vanilla" / "img01.png.npy"), rtol=1e-5, atol=1e-7)
    assert json.loads((tmp_path / "ts" / "run.json").read_text())["model"]["kind"] == "torchscript"


def test_pickled_module_needs_trust(cli, images_dir, tmp_path, tiny_model):
    path = tmp_path / "whole.pt"
    torch.save(tiny_model, path)
    err = cli("explain", images_dir, "-o", tmp_path / "a", "--model", path, *PRE, expect=3).stderr
    assert "--trust-checkpoint" in err and not (tmp_path / "a").exists()
    cli("explain", images_dir, "-o", tmp_path / "b", "--model", path, *PRE, "--trust-checkpoint")
    assert json.loads((tmp_path / "b" / "run.json").read_text())["model"]["trusted"] is True


def test_state_dict_given_as_model_says_what_to_do(cli, images_dir, tmp_path):
    torch.save(tiny_state(), tmp_path / "sd.pt")
    assert "--weights" in cli("explain", images_dir, "-o", tmp_path / "o", "--model", tmp_path / "sd.pt", *PRE,
                              expect=3).stderr


def test_pickled_weights_are_never_unpickled_without_trust(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ModelLoadError, match="trust.checkpoint"):
        read_checkpoint(tmp_path / "evil.pt")


def test_export_program_needs_trust(cli, images_dir, tmp_path, tiny_model):
    path = tmp_path / "m.pt2"
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(tiny_model.eval(), (torch.zeros(2, 3, 16, 16),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    assert "--trust-checkpoint" in cli("explain", images_dir, "-o", tmp_path / "a", "--model", path, *PRE,
                                       expect=3).stderr
    cli("explain", images_dir, "-o", tmp_path / "b", "--model", path, *PRE, "--trust-checkpoint")
    assert len(manifest(tmp_path / "b")) == 6


def test_labels_must_match_the_class_count(cli, images_dir, tmp_path):
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    assert "4 outputs" in cli("explain", images_dir, "-o", tmp_path / "o", *TINY_OPTS, "--labels",
                              tmp_path / "labels.txt", expect=3).stderr
    (tmp_path / "labels.txt").write_text("cat\ndog\nfish\nbird\n")
    cli("explain", images_dir, "-o", tmp_path / "p", *TINY_OPTS, "--labels", tmp_path / "labels.txt",
        "--target", "fish")
    assert {r["target_label"] for r in manifest(tmp_path / "p")} == {"fish"}
    assert {r["pred_label"] for r in manifest(tmp_path / "p")} <= {"cat", "dog", "fish", "bird"}


def test_weights_default_without_network_is_a_clear_error(cli, images_dir, tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        if kwargs.get("weights") == "DEFAULT":
            raise OSError("network is unreachable")
        return torchvision.models.resnet18()

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    err = cli("explain", images_dir, "-o", tmp_path / "o", "--model", "torchvision:resnet18", "--weights",
              "DEFAULT", expect=3).stderr
    assert "--weights FILE" in err
    assert "torchvision" in cli("explain", images_dir, "-o", tmp_path / "p", *TINY_OPTS, "--weights", "DEFAULT",
                                expect=2).stderr


def test_torchvision_preset_from_weight_metadata(cli, tmp_path):
    from conftest import PHOTOS, SAMPLES

    out = tmp_path / "o"
    cli("explain", PHOTOS / "chelsea.jpg", "-o", out, *torchvision_weights(tmp_path, "resnet18"),
        "--resize", "64", "--crop", "64")
    run = json.loads((out / "run.json").read_text())
    assert run["preprocess"]["mean"] == [0.485, 0.456, 0.406] and run["preprocess"]["crop"] == 64
    assert len(run["labels"]) == 1000 and manifest(out)[0]["pred_label"] in run["labels"]


def test_model_is_left_in_eval_mode_with_frozen_parameters():
    loaded = load_model(TINY)
    assert not loaded.module.training
    assert not any(p.requires_grad for p in loaded.module.parameters())
