"""Checkpoints as their authors saved them (issue 12): the file's kind by content, state dicts unwrapped from the
containers training code writes, prefixes stripped, old BatchNorm state accepted, labels read, and models that
return tuples, dicts or objects with ``.logits``. Each case is built offline and loaded through the CLI."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch
from conftest import FIXTURES, TINY_OPTS, manifest
from safetensors.torch import save_file

from salcli import checkpoint
from salcli.errors import ModelLoadError

RESNET20 = f"{FIXTURES / 'cifar_resnet.py'}:resnet20"
CIFAR = ["--model", RESNET20, "--resize", "32", "--crop", "32", "--mean", "0.49,0.48,0.45",
         "--std", "0.25,0.24,0.26"]
PRE = TINY_OPTS[2:]


def trained_resnet20():
    from cifar_resnet import trained

    return trained()


def explain(cli, images, out, *extra, expect=0):
    result = cli("explain", images, "-o", out, *extra, expect=expect)
    return result


def maps(out, method="vanilla"):
    return {r["image"]: np.load(out / r["npy"]) for r in manifest(out) if r["method"] == method}


def reference(cli, images, tmp_path, model, name="ref"):
    """The maps of ``model`` saved as a plain safetensors state dict: what every form below must reproduce."""
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    explain(cli, images, tmp_path / name, *CIFAR, "--weights", path)
    return maps(tmp_path / name)


def old_batchnorm(state: dict) -> OrderedDict:
    """The state dict as PyTorch < 0.4.1 wrote it: no num_batches_tracked, BatchNorm metadata version 1."""
    old = OrderedDict((k, v) for k, v in state.items() if not k.endswith("num_batches_tracked"))
    old._metadata = OrderedDict((k, {"version": 1}) for k in {key.rsplit(".", 1)[0] for key in old})
    return old


# ---------------------------------------------------------------------------------------------- sniffing
def test_kinds_are_known_by_content_not_extension(tmp_path, tiny_model):
    state = tiny_model.state_dict()
    cases = {
        "a.th": lambda p: torch.save(state, p),
        "b.tar": lambda p: torch.save({"state_dict": state}, p, _use_new_zipfile_serialization=False),
        "c": lambda p: save_file(state, str(p)),
        "d.pkl": lambda p: torch.jit.save(torch.jit.trace(tiny_model.eval(), torch.zeros(1, 3, 16, 16)), str(p)),
        "e.bin": lambda p: torch.export.save(torch.export.export(tiny_model.eval(), (torch.zeros(1, 3, 16, 16),)),
                                             str(p)),
        "f.pt": lambda p: p.write_bytes(b"not a checkpoint at all"),
    }
    kinds = {}
    for name, write in cases.items():
        write(tmp_path / name)
        kinds[name] = checkpoint.sniff(tmp_path / name)
    assert kinds == {"a.th": "torch-zip", "b.tar": "pickle", "c": "safetensors", "d.pkl": "torchscript",
                     "e.bin": "export", "f.pt": "unknown"}


@pytest.mark.parametrize("name", ["weights.th", "weights.tar", "weights.pkl", "weights", "weights.safetensors.bak"])
def test_weights_load_whatever_the_extension(cli, images_dir, tmp_path, tiny_model, name):
    path = tmp_path / name
    if name.endswith(".bak"):
        save_file(tiny_model.state_dict(), str(path))
    else:
        torch.save({"state_dict": tiny_model.state_dict()}, path)
    explain(cli, images_dir, tmp_path / "o", *TINY_OPTS, "--weights", path)
    assert {r["status"] for r in manifest(tmp_path / "o")} == {"ok"}


def test_unknown_content_and_whole_models_given_as_weights_say_what_to_do(cli, images_dir, tmp_path, tiny_model):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 64)
    err = explain(cli, images_dir, tmp_path / "a", *TINY_OPTS, "--weights", junk, expect=3).stderr
    assert "not a checkpoint" in err and "safetensors" in err
    scripted = tmp_path / "model.bin"
    torch.jit.save(torch.jit.trace(tiny_model.eval(), torch.zeros(1, 3, 16, 16)), str(scripted))
    err = explain(cli, images_dir, tmp_path / "b", *TINY_OPTS, "--weights", scripted, expect=3).stderr
    assert "TorchScript" in err and "--model" in err


def test_models_are_known_by_content_whatever_the_extension(cli, images_dir, tmp_path, tiny_model):
    scripted = tmp_path / "model.bin"  # a TorchScript archive under a name no rule would guess
    torch.jit.save(torch.jit.trace(tiny_model.eval(), torch.zeros(1, 3, 16, 16)), str(scripted))
    explain(cli, images_dir, tmp_path / "a", "--model", scripted, *PRE)
    weights = tmp_path / "weights"  # safetensors given as the model: the error says where it goes
    save_file(tiny_model.state_dict(), str(weights))
    err = explain(cli, images_dir, tmp_path / "b", "--model", weights, *PRE, expect=3).stderr
    assert "--weights" in err and "safetensors" in err
    program = tmp_path / "program.pt"  # a torch.export program with a .pt name still needs trust
    torch.export.save(torch.export.export(tiny_model.eval(), (torch.zeros(1, 3, 16, 16),)), str(program))
    assert "torch.export" in explain(cli, images_dir, tmp_path / "c", "--model", program, *PRE, expect=3).stderr


# ---------------------------------------------------------------------------------------------- containers
def test_published_cifar_checkpoint_as_released(cli, images_dir, tmp_path):
    """The issue's case: {'state_dict', 'best_prec1'} from DataParallel, old BatchNorm state, legacy pickle
    format, a .th extension. It must give the maps of the same weights loaded plainly."""
    model = trained_resnet20()
    expected = reference(cli, images_dir, tmp_path, model)
    state = old_batchnorm({f"module.{k}": v for k, v in model.state_dict().items()})
    path = tmp_path / "resnet20-12fca82f.th"
    torch.save({"state_dict": state, "best_prec1": 91.73}, path, _use_new_zipfile_serialization=False)
    result = explain(cli, images_dir, tmp_path / "o", *CIFAR, "--weights", path)
    got = maps(tmp_path / "o")
    assert got.keys() == expected.keys()
    for key in got:
        np.testing.assert_array_equal(got[key], expected[key])
    read = json.loads((tmp_path / "o" / "run.json").read_text())["model"]["weights_read"]
    assert read["key"] == "state_dict" and read["stripped_prefix"] == "module." and read["format"] == "pickle"
    assert len(read["filled"]) == 19 and all(k.endswith("num_batches_tracked") for k in read["filled"])
    assert "module." in result.stderr and "num_batches_tracked" in result.stderr


def test_old_batchnorm_metadata_is_accepted_as_load_state_dict_accepts_it(tmp_path):
    """With version-2 metadata, torch's strict load refuses the missing counters; salcli fills them either way."""
    from cifar_resnet import resnet20

    model = trained_resnet20()
    state = OrderedDict((k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked"))
    state._metadata = OrderedDict((k, {"version": 2}) for k in {key.rsplit(".", 1)[0] for key in state})
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        resnet20().load_state_dict(state, strict=True)
    torch.save(state, tmp_path / "w.pth")
    from salcli.models import load_model

    loaded = load_model(RESNET20, str(tmp_path / "w.pth"))
    for k, v in model.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(loaded.module.state_dict()[k], v)
    assert len(loaded.weights["filled"]) == 19


def lightning_checkpoint(model) -> dict:
    return {"epoch": 9, "global_step": 4690, "pytorch-lightning_version": "2.4.0",
            "state_dict": {**{f"model.{k}": v for k, v in model.state_dict().items()},
                           "criterion.weight": torch.ones(10)},  # the LightningModule's loss: not the model's
            "hyper_parameters": {"lr": 0.1, "arch": "resnet20"}, "optimizer_states": [{"state": {}}],
            "lr_schedulers": [], "callbacks": {}, "loops": {}}


def test_lightning_checkpoint(cli, images_dir, tmp_path):
    model = trained_resnet20()
    expected = reference(cli, images_dir, tmp_path, model)
    torch.save(lightning_checkpoint(model), tmp_path / "epoch=9-step=4690.ckpt")
    explain(cli, images_dir, tmp_path / "o", *CIFAR, "--weights", tmp_path / "epoch=9-step=4690.ckpt")
    for key, got in maps(tmp_path / "o").items():
        np.testing.assert_array_equal(got, expected[key])
    read = json.loads((tmp_path / "o" / "run.json").read_text())["model"]["weights_read"]
    assert read["stripped_prefix"] == "model." and read["ignored"] == 1 and read["ignored_first"] == [
        "criterion.weight"]


class HParams(dict):
    """Like Lightning's AttributeDict: a class the weights-only unpickler does not know."""


def test_checkpoint_with_python_objects_needs_trust_and_loads_with_it(cli, images_dir, tmp_path):
    model = trained_resnet20()
    ckpt = lightning_checkpoint(model)
    ckpt["hyper_parameters"] = HParams(lr=0.1)
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    err = explain(cli, images_dir, tmp_path / "a", *CIFAR, "--weights", path, expect=3).stderr
    assert "HParams" in err and "--trust-checkpoint" in err  # names what blocked the weights-only read
    explain(cli, images_dir, tmp_path / "b", *CIFAR, "--weights", path, "--trust-checkpoint")
    read = json.loads((tmp_path / "b" / "run.json").read_text())["model"]["weights_read"]
    assert read["read_with_trust"] is True


def test_ema_checkpoint_uses_the_plain_weights_unless_told(cli, images_dir, tmp_path):
    plain, ema = trained_resnet20(), trained_resnet20().requires_grad_(False)
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.5)
    path = tmp_path / "checkpoint-99.pth.tar"  # as timm's train script names it
    torch.save({"epoch": 99, "arch": "resnet20", "state_dict": plain.state_dict(),
                "state_dict_ema": ema.state_dict(), "optimizer": {"state": {}}}, path)
    result = explain(cli, images_dir, tmp_path / "a", *CIFAR, "--weights", path)
    assert "state_dict_ema" in result.stderr and "--weights-key" in result.stderr  # says what else is there
    explain(cli, images_dir, tmp_path / "b", *CIFAR, "--weights", path, "--weights-key", "state_dict_ema")
    expected_plain = reference(cli, images_dir, tmp_path, plain, "plain")
    expected_ema = reference(cli, images_dir, tmp_path, ema, "ema")
    for key, got in maps(tmp_path / "a").items():
        np.testing.assert_array_equal(got, expected_plain[key])
    for key, got in maps(tmp_path / "b").items():
        np.testing.assert_array_equal(got, expected_ema[key])
    run_a = json.loads((tmp_path / "a" / "run.json").read_text())
    run_b = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run_b["model"]["weights_read"]["key"] == "state_dict_ema"
    assert run_a["methods"]["vanilla"]["settings"] != run_b["methods"]["vanilla"]["settings"]  # not resumed


def test_ema_only_checkpoint_and_unknown_key(tmp_path, tiny_model):
    from salcli.models import load_model

    torch.save({"model_ema": tiny_model.state_dict(), "epoch": 1}, tmp_path / "ema.pt")
    loaded = load_model(f"{FIXTURES / 'tiny.py'}:build", str(tmp_path / "ema.pt"))
    assert loaded.weights["key"] == "model_ema"
    with pytest.raises(ModelLoadError, match="no such entry.*model_ema, epoch"):
        load_model(f"{FIXTURES / 'tiny.py'}:build", str(tmp_path / "ema.pt"), weights_key="ema")
    with pytest.raises(ModelLoadError, match="int, not a state dict"):
        load_model(f"{FIXTURES / 'tiny.py'}:build", str(tmp_path / "ema.pt"), weights_key="epoch")
    torch.save({"epoch": 1, "acc": 0.9}, tmp_path / "none.pt")
    with pytest.raises(ModelLoadError, match="does not hold a state dict.*epoch, acc.*--weights-key|weights_key"):
        load_model(f"{FIXTURES / 'tiny.py'}:build", str(tmp_path / "none.pt"))


@pytest.mark.parametrize("prefix", ["_orig_mod.", "module._orig_mod.", "backbone.", "student.encoder."])
def test_prefixes_are_stripped(cli, images_dir, tmp_path, prefix):
    from cifar_resnet import resnet20

    model = trained_resnet20()
    expected = reference(cli, images_dir, tmp_path, model)
    if prefix == "_orig_mod.":
        state = torch.compile(model).state_dict()  # what torch.compile's wrapper saves (no compilation)
    else:
        state = {prefix + k: v for k, v in model.state_dict().items()}
    assert all(k.startswith(prefix) for k in state)
    torch.save(state, tmp_path / "w.pt")
    result = explain(cli, images_dir, tmp_path / "o", *CIFAR, "--weights", tmp_path / "w.pt")
    for key, got in maps(tmp_path / "o").items():
        np.testing.assert_array_equal(got, expected[key])
    read = json.loads((tmp_path / "o" / "run.json").read_text())["model"]["weights_read"]
    assert read["stripped_prefix"] == prefix and read["key"] is None and read["filled"] == []
    assert "prefix" in result.stderr and "entry" not in result.stderr  # no container was unwrapped: not said
    assert not torch.equal(resnet20().conv1.weight, model.conv1.weight)  # the maps are the file's, not the factory's


def test_missing_batchnorm_counters_are_filled_with_zero():
    own = {"bn.weight": torch.ones(2), "bn.num_batches_tracked": torch.tensor(7), "fc.bias": torch.zeros(3)}
    matched = checkpoint.match({"bn.weight": torch.ones(2), "fc.bias": torch.ones(3)}, own, "w")
    assert matched.filled == ["bn.num_batches_tracked"] and matched.state["bn.num_batches_tracked"].item() == 0
    with pytest.raises(ModelLoadError, match="missing \\(1\\): fc.bias"):  # other buffers are not filled
        checkpoint.match({"bn.weight": torch.ones(2)}, own, "w")


def test_a_wrapped_model_takes_an_unwrapped_checkpoint():
    own = {"net.conv.weight": torch.zeros(2, 1), "net.fc.bias": torch.zeros(3)}
    matched = checkpoint.match({"conv.weight": torch.ones(2, 1), "fc.bias": torch.ones(3)}, own, "w")
    assert matched.added == "net." and set(matched.state) == set(own)


def test_a_real_mismatch_still_fails_with_the_keys_that_differ(tmp_path):
    from salcli.models import load_model

    state = {f"module.{k}": v for k, v in trained_resnet20().state_dict().items()}
    state["module.linear.weight"] = torch.zeros(100, 64)  # a CIFAR-100 head
    state["module.linear.bias"] = torch.zeros(100)
    torch.save({"state_dict": state}, tmp_path / "w.pt")
    with pytest.raises(ModelLoadError) as info:
        load_model(RESNET20, str(tmp_path / "w.pt"))
    assert "wrong shape (2): linear.weight (100, 64) vs (10, 64)" in str(info.value)
    assert "module." not in str(info.value)  # reported against the prefix that fits everything else
    del state["module.layer3.2.bn2.running_var"]
    torch.save(state, tmp_path / "w2.pt")
    with pytest.raises(ModelLoadError, match="missing \\(1\\): layer3.2.bn2.running_var"):
        load_model(RESNET20, str(tmp_path / "w2.pt"))


def test_labels_from_the_checkpoint(cli, images_dir, tmp_path, tiny_model):
    names = ["cat", "dog", "ship", "truck"]
    torch.save({"state_dict": tiny_model.state_dict(), "classes": names}, tmp_path / "a.pt")
    explain(cli, images_dir, tmp_path / "a", *TINY_OPTS, "--weights", tmp_path / "a.pt", "--target", "ship")
    rows = manifest(tmp_path / "a")
    assert {r["target_label"] for r in rows} == {"ship"} and {r["target"] for r in rows} == {2}
    assert all(r["pred_label"] == names[r["pred"]] for r in rows)
    torch.save({"model": tiny_model.state_dict(), "class_to_idx": {n: i for i, n in enumerate(names)}},
               tmp_path / "b.pt")
    explain(cli, images_dir, tmp_path / "b", *TINY_OPTS, "--weights", tmp_path / "b.pt")
    assert json.loads((tmp_path / "b" / "run.json").read_text())["labels"] == names
    labels = tmp_path / "labels.txt"  # the user's --labels win over the checkpoint's
    labels.write_text("a\nb\nc\nd\n")
    explain(cli, images_dir, tmp_path / "c", *TINY_OPTS, "--weights", tmp_path / "b.pt", "--labels", labels)
    assert json.loads((tmp_path / "c" / "run.json").read_text())["labels"] == ["a", "b", "c", "d"]


# ---------------------------------------------------------------------------------------------- outputs
OUTPUTS = f"{FIXTURES / 'outputs.py'}"


@pytest.mark.parametrize("kind", ["tuple", "dict", "out", "object"])
def test_any_output_shape_works_in_every_command(cli, images_dir, tmp_path, kind):
    explain(cli, images_dir, tmp_path / "plain", *TINY_OPTS, "-m", "vanilla", "-m", "gradcam")
    explain(cli, images_dir, tmp_path / kind, "--model", f"{OUTPUTS}:build_{kind}", *PRE, "-m", "vanilla",
            "-m", "gradcam")
    for method in ("vanilla", "gradcam"):
        expected = maps(tmp_path / "plain", method)
        for key, got in maps(tmp_path / kind, method).items():
            np.testing.assert_array_equal(got, expected[key])
    assert [r["pred"] for r in manifest(tmp_path / kind)] == [r["pred"] for r in manifest(tmp_path / "plain")]
    cli("evaluate", tmp_path / kind, "--no-stability", "--steps", "4")
    cli("sanity", images_dir, "--model", f"{OUTPUTS}:build_{kind}", *PRE, "-m", "gradcam", "--max-steps", "2",
        "--limit", "2")


def test_output_without_logits_is_named(cli, images_dir, tmp_path):
    err = explain(cli, images_dir, tmp_path / "a", "--model", f"{OUTPUTS}:build_none", *PRE, expect=3).stderr
    assert "dict with keys features" in err
    err = explain(cli, images_dir, tmp_path / "b", "--model", f"{OUTPUTS}:build_image", *PRE, expect=3).stderr
    assert "tensor of shape (1, 16, 8, 8)" in err


def test_python_api_reads_outputs_too():
    import salcli
    from outputs import build
    from tiny import build as plain

    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    expected = salcli.explain(plain(), x, method="integrated-gradients")
    for kind in ("tuple", "dict", "object"):
        torch.testing.assert_close(salcli.explain(build(kind), x, method="integrated-gradients"), expected,
                                   rtol=0, atol=0)
