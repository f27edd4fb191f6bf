"""The timm (`timm:NAME`) and Hugging Face transformers (`hf:DIR`, `hf:ID`) model sources.

Tiny architectures only (timm's `test_*` models, transformers configs with 8-32 wide layers), random weights
saved to tmp_path, and a Hugging Face cache that is an empty tmp folder: nothing is downloaded and the user's
real cache is never read.
"""

from __future__ import annotations

import json
import re
import socket

import numpy as np
import pytest
import torch
from conftest import manifest, write_images

from salcli import images, methods, sources
from salcli.config import Preprocess, RunConfig
from salcli.errors import ModelLoadError
from salcli.models import load_model, resolve_preset

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
from safetensors.torch import save_file  # noqa: E402  (after the skips: a dependency of both)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Small parameters so that every method runs in well under a second on a 32 px model.
FAST = ["-p", "smoothgrad.samples=3", "-p", "integrated-gradients.steps=3", "-p", "gradient-shap.samples=3",
        "-p", "rise.masks=8", "-p", "lime.samples=12", "-p", "kernel-shap.samples=12", "-p", "occlusion.window=0.25"]

# The preprocessor_config.json that the Hub serves for the models of configs/hf-*.toml.
HUB_PROCESSORS = {
    "google/vit-base-patch16-224": {"do_normalize": True, "do_resize": True, "image_mean": [0.5] * 3,
                                    "image_std": [0.5] * 3, "resample": 2, "size": 224},
    "facebook/convnext-tiny-224": {"crop_pct": 0.875, "do_normalize": True, "do_resize": True, "resample": 3,
                                   "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD), "size": 224},
    "microsoft/resnet-50": {"crop_pct": 0.875, "do_normalize": True, "do_resize": True, "resample": 3,
                            "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD), "size": 224},
}


@pytest.fixture(autouse=True)
def empty_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, no download permission and no sockets: the real cache and the network are never
    used (a connection attempt fails the test)."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", "SALCLI_ALLOW_DOWNLOAD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    attempts = []

    def no_network(sock, address, *args):
        attempts.append(address)
        raise ConnectionRefusedError(f"no network in tests ({address})")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    yield tmp_path / "hf-home" / "hub"
    assert attempts == [], f"the test tried to reach the network: {attempts}"


def put_in_hub(hub, repo_id: str, files: dict) -> None:
    """Lay files out as huggingface_hub's cache does: models--ORG--NAME/{refs/main, snapshots/REV/FILE}."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    for name, source in files.items():
        (snapshot / name).write_bytes(source.read_bytes())


def seeded_timm(name: str, seed: int = 123) -> torch.nn.Module:
    """A timm model with seeded random weights (another seed than salcli's 0), in eval mode, BatchNorm statistics
    made non-trivial so that loading them is tested too."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False).eval()
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


# ---------------------------------------------------------------------------------------------- timm
@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_timm_maps_through_the_cli_equal_the_python_api(cli, tmp_path, name):
    """`--model timm:NAME --weights FILE` (timm's own key layout, safetensors) gives the maps that salcli.explain
    gives on the same model, fed by timm's own eval transform: weights, preset and CAM layer all agree."""
    from timm.data import create_transform, resolve_data_config

    model = seeded_timm(name)
    weights = tmp_path / f"{name}.safetensors"
    save_file(model.state_dict(), str(weights))
    paths = write_images(tmp_path / "imgs", n=2, size=20)
    out = tmp_path / "out"
    cli("explain", tmp_path / "imgs", "-o", out, "--model", f"timm:{name}", "--weights", weights,
        "-m", "vanilla", "-m", "gradcam", "--no-optimize")

    transform = create_transform(**resolve_data_config({}, model=model))  # timm's eval preprocessing
    x = torch.stack([transform(images.decode(p)) for p in paths])
    rows = {(r["image"], r["method"]): r for r in manifest(out)}
    assert {r["status"] for r in rows.values()} == {"ok"}
    with torch.no_grad():
        probs = model(x).softmax(1)
    from salcli import explain

    for method in ("vanilla", "gradcam"):
        maps = explain(model, x, method=method, keys=[p.name for p in paths],
                       mean=model.pretrained_cfg["mean"], std=model.pretrained_cfg["std"]).numpy()
        for i, p in enumerate(paths):
            row = rows[(p.name, method)]
            assert row["pred"] == int(probs[i].argmax())
            assert row["prob"] == pytest.approx(float(probs[i].max()), abs=1e-5)
            saved = np.load(out / row["npy"])
            assert saved.shape == (160, 160) and saved.max() > 0
            np.testing.assert_allclose(saved, maps[i], rtol=1e-4, atol=1e-5 * float(np.abs(maps[i]).max()))
    run = json.loads((out / "run.json").read_text())
    assert str(weights) in run["model"]["sha256"]
    assert run["preprocess"]["resize"] == 168 and run["preprocess"]["crop"] == 160


def test_timm_preset_comes_from_pretrained_cfg():
    """crop = input_size, resize = floor(crop / crop_pct) (timm's own rounding), interpolation, mean/std and the
    ImageNet names, all from timm's tables without building the model; equal to timm's own eval transform."""
    from timm.data import create_transform, resolve_data_config
    from timm.models import get_pretrained_cfg

    expected = {
        "timm:test_vit": (168, 160, (0.5,) * 3, (0.5,) * 3, "bicubic"),
        "timm:test_resnet": (168, 160, (0.5,) * 3, (0.5,) * 3, "bilinear"),
        "timm:test_efficientnet.r160_in1k": (168, 160, IMAGENET_MEAN, IMAGENET_STD, "bicubic"),
        "timm:resnet50.a1_in1k": (235, 224, IMAGENET_MEAN, IMAGENET_STD, "bicubic"),
        "timm:efficientnet_b0.ra_in1k": (256, 224, IMAGENET_MEAN, IMAGENET_STD, "bicubic"),
        "timm:vit_base_patch16_224.augreg2_in21k_ft_in1k": (248, 224, (0.5,) * 3, (0.5,) * 3, "bicubic"),
    }
    for spec, (resize, crop, mean, std, interpolation) in expected.items():
        source = sources.find(spec)
        assert source.name == "timm"
        pre, labels = source.preset(spec)
        assert (pre["resize"], pre["crop"], pre["channels"], pre["interpolation"]) == (resize, crop, 3, interpolation)
        assert pre["mean"] == pytest.approx(mean) and pre["std"] == pytest.approx(std)
        assert len(labels) == 1000 and labels[:2] == ("tench", "goldfish") and labels[999] == "toilet tissue"
        timm_eval = create_transform(**resolve_data_config({}, pretrained_cfg=get_pretrained_cfg(spec[5:]).to_dict()))
        resize_step, crop_step = timm_eval.transforms[:2]
        assert resize_step.size == resize and tuple(crop_step.size) == (crop, crop)
        assert resize_step.interpolation.value == interpolation
    pre, labels = sources.find("timm:convnext_tiny.in12k").preset("timm:convnext_tiny.in12k")
    assert len(labels) == 11821  # ImageNet-12k
    assert sources.find("timm:nope").preset("timm:nope") == ({}, None)
    clip = "timm:vit_base_patch16_clip_224.openai"  # 512 outputs: no ImageNet names
    assert sources.find(clip).preset(clip)[1] is None
    preprocess, labels, note = resolve_preset(RunConfig(model="timm:test_efficientnet"))
    assert preprocess == Preprocess(168, 160, IMAGENET_MEAN, IMAGENET_STD, 3, "bicubic") and note is None


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin"])
def test_timm_weights_come_from_the_local_hf_cache(empty_hub, tmp_path, filename):
    model = seeded_timm("test_vit")
    saved = tmp_path / filename
    if filename.endswith(".safetensors"):
        save_file(model.state_dict(), str(saved))
    else:
        torch.save(model.state_dict(), saved)
    put_in_hub(empty_hub, "timm/test_vit.r160_in1k", {filename: saved})
    loaded = load_model("timm:test_vit")  # no tag: timm's default one, r160_in1k
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), model(x))
    (path, digest), = loaded.checksums.items()
    assert path.endswith(filename) and "models--timm--test_vit.r160_in1k" in path and len(digest) == 64
    assert any("local Hugging Face cache" in n for n in loaded.notes)



def test_timm_cached_weights_that_do_not_fit_are_an_error(empty_hub, tmp_path):
    """A cached file of another layout goes to timm's own loader (which converts the layouts it knows); one that
    fits neither is a load error naming the file, never a silent random model."""
    wrong = tmp_path / "model.safetensors"
    save_file(seeded_timm("test_resnet").state_dict(), str(wrong))
    put_in_hub(empty_hub, "timm/test_vit.r160_in1k", {"model.safetensors": wrong})
    with pytest.raises(ModelLoadError, match="timm could not read the weights .*model.safetensors of test_vit"):
        load_model("timm:test_vit")

def test_timm_without_weights_is_random_with_a_note_and_never_downloads(monkeypatch):
    calls = []
    real = timm.create_model

    def create(name, pretrained=False, **kwargs):
        calls.append(pretrained)
        if pretrained and "pretrained_cfg_overlay" not in kwargs:
            raise ConnectionError("no network in tests")
        return real(name, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(timm, "create_model", create)
    loaded = load_model("timm:test_convnext")
    assert calls == [False] and loaded.checksums == {}
    (note,) = loaded.notes
    assert "random weights" in note and "timm/test_convnext.r160_in1k" in note
    assert "hf download timm/test_convnext.r160_in1k" in note and "SALCLI_ALLOW_DOWNLOAD=1" in note
    assert "weights= FILE" in note.replace("\x1fweights\x1f", "weights=")
    monkeypatch.setenv("SALCLI_ALLOW_DOWNLOAD", "1")  # now timm may download: it is asked to
    with pytest.raises(ModelLoadError, match="could not download the pretrained weights of test_convnext"):
        load_model("timm:test_convnext")
    assert calls[-1] is True


def test_timm_unknown_names_exit_3_with_a_suggestion(cli, images_dir, tmp_path):
    err = cli("explain", images_dir, "-o", tmp_path / "o", "--model", "timm:resnt50", expect=3).stderr
    assert "timm has no model 'resnt50'" in err and "Did you mean 'resnet50'?" in err
    err = cli("explain", images_dir, "-o", tmp_path / "o", "--model", "timm:resnet50.a1_in1kk", expect=3).stderr
    assert "no pretrained tag 'a1_in1kk'" in err and "Did you mean 'resnet50.a1_in1k'?" in err
    assert sources.find("timm:a:b").name == "timm"  # before the factory source, which takes any "x:y"


@pytest.mark.parametrize("name, layer", [("test_resnet", "layer4"), ("test_convnext", "stages.3"),
                                         ("test_efficientnet", "bn2")])
def test_cam_layers_of_timm_cnns_are_found(name, layer):
    from salcli.layers import resolve_layer

    spec = resolve_layer(seeded_timm(name), None, torch.randn(1, 3, 64, 64))
    assert (spec.name, spec.kind) == (layer, "conv")


def test_cam_layer_of_a_timm_vit_is_the_last_blocks_norm1():
    from salcli.layers import resolve_layer

    spec = resolve_layer(seeded_timm("test_vit"), None, torch.randn(1, 3, 160, 160))
    assert (spec.name, spec.kind, spec.prefix) == ("blocks.5.norm1", "tokens", 1)


# ---------------------------------------------------------------------------------------------- transformers
@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """A tiny ViT and a tiny ConvNeXt (ReLU activations, so that the guided methods apply), each saved with
    save_pretrained next to its image processor."""
    from transformers import (ConvNextConfig, ConvNextForImageClassification, ConvNextImageProcessor, ViTConfig,
                              ViTForImageClassification, ViTImageProcessor)

    folder = tmp_path_factory.mktemp("hf")
    torch.manual_seed(7)
    vit = ViTForImageClassification(ViTConfig(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, hidden_act="relu", id2label={0: "cat", 1: "dog", 2: "bird"},
        label2id={"cat": 0, "dog": 1, "bird": 2}))
    vit.save_pretrained(folder / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3],
                      resample=2).save_pretrained(folder / "vit")
    names = {0: "apple", 1: "pear", 2: "plum", 3: "fig"}
    convnext = ConvNextForImageClassification(ConvNextConfig(
        hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=32, hidden_act="relu", id2label=names,
        label2id={v: k for k, v in names.items()}))
    convnext.save_pretrained(folder / "convnext")
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875, resample=3, image_mean=list(IMAGENET_MEAN),
                           image_std=list(IMAGENET_STD)).save_pretrained(folder / "convnext")
    return folder


@pytest.mark.parametrize("arch, labels, block", [("vit", ("cat", "dog", "bird"), r"layers?\.1\.layernorm_before$"),
                                                 ("convnext", ("apple", "pear", "plum", "fig"), r"stages\.1\b")])
def test_hf_every_method_runs_through_the_cli(cli, hf_models, tmp_path, arch, labels, block):
    """Every registered method on hf:DIR, CAM layer found automatically (in the last block or stage), all ok;
    class names from config.json's id2label."""
    write_images(tmp_path / "imgs", n=2, size=24)
    out = tmp_path / "out"
    chosen = [a for name in methods.names() for a in ("-m", name)]
    cli("explain", tmp_path / "imgs", "-o", out, "--model", f"hf:{hf_models / arch}", *chosen, *FAST)
    rows = manifest(out)
    assert len(rows) == 2 * len(methods.names())
    assert [r for r in rows if r["status"] != "ok"] == []
    assert {r["pred_label"] for r in rows} <= set(labels) and all(r["pred_label"] == r["target_label"] for r in rows)
    run = json.loads((out / "run.json").read_text())
    assert run["labels"] == list(labels) and run["model"]["kind"] == "hf"
    assert re.search(block, run["layer"]), run["layer"]
    assert {k.rsplit("/", 1)[-1] for k in run["model"]["sha256"]} == {"config.json", "model.safetensors"}


@pytest.mark.parametrize("arch", ["vit", "convnext"])
def test_hf_model_matches_transformers_and_its_preprocessing(hf_models, arch):
    """The preset reproduces transformers' own (PIL) image processor on square images, and the loaded model is the
    saved one."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    folder = hf_models / arch
    spec = f"hf:{folder}"
    preprocess, labels, note = resolve_preset(RunConfig(model=spec))
    assert note is None
    expected = {"vit": Preprocess(32, 32, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), 3, "bilinear"),
                "convnext": Preprocess(36, 32, IMAGENET_MEAN, IMAGENET_STD, 3, "bicubic")}[arch]
    assert preprocess == expected
    assert labels == {"vit": ("cat", "dog", "bird"), "convnext": ("apple", "pear", "plum", "fig")}[arch]
    pil = {"backend": "pil"} if int(transformers.__version__.split(".")[0]) >= 5 else {"use_fast": False}
    processor = AutoImageProcessor.from_pretrained(folder, **pil)
    rng = np.random.default_rng(0)
    from PIL import Image

    for size in (20, 57):
        im = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        theirs = processor(im, return_tensors="pt")["pixel_values"][0]
        ours = torch.from_numpy(images.normalize(images.prepare(im, preprocess), preprocess))
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    loaded = load_model(spec)
    assert loaded.kind == "hf" and loaded.labels == labels and not loaded.module.training
    reference = AutoModelForImageClassification.from_pretrained(folder).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x).logits, reference(x).logits)


def test_hf_preprocessor_configs_of_the_hub():
    """The preprocessor_config.json forms the Hub's classifiers use (old feature extractors included)."""
    from salcli.sources.huggingface import preprocess_of

    resnet50 = preprocess_of(HUB_PROCESSORS["microsoft/resnet-50"], {})
    assert resnet50 == {"resize": 256, "crop": 224, "channels": 3, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                        "interpolation": "bicubic"}
    vit = preprocess_of(HUB_PROCESSORS["google/vit-base-patch16-224"], {})
    assert (vit["resize"], vit["crop"], vit["interpolation"]) == (224, 224, "bilinear")
    deit = {"do_center_crop": True, "crop_size": {"height": 224, "width": 224}, "size": {"height": 256, "width": 256},
            "resample": 3, "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD)}
    assert (preprocess_of(deit, {})["resize"], preprocess_of(deit, {})["crop"]) == (256, 224)
    big = {"size": {"shortest_edge": 384}, "crop_pct": 0.875, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    assert (preprocess_of(big, {})["resize"], preprocess_of(big, {})["crop"]) == (384, 384)  # ConvNeXt 384: no crop
    centered = {"size": 224, "rescale_factor": 1 / 127.5, "image_mean": [1.0] * 3, "image_std": [1.0] * 3}
    pre = preprocess_of(centered, {"num_channels": 1})  # x / 127.5 - 1 == (x / 255 - 0.5) / 0.5
    assert pre["mean"] == pytest.approx((0.5,) * 3) and pre["std"] == pytest.approx((0.5,) * 3)
    assert pre["channels"] == 1
    assert preprocess_of({"size": 32, "do_normalize": False, "resample": 0}, {})["mean"] == (0.0,)
    assert preprocess_of({"size": 32, "resample": 0}, {})["interpolation"] == "nearest"


def test_hf_loads_from_the_local_hub_cache(hf_models, empty_hub):
    folder = hf_models / "vit"
    put_in_hub(empty_hub, "someone/tiny-vit", {n: folder / n for n in
                                               ("config.json", "model.safetensors", "preprocessor_config.json")})
    pre, labels = sources.find("hf:someone/tiny-vit").preset("hf:someone/tiny-vit")
    assert (pre["crop"], pre["mean"], labels) == (32, (0.4, 0.5, 0.6), ("cat", "dog", "bird"))
    loaded = load_model("hf:someone/tiny-vit")
    assert type(loaded.module).__name__ == "ViTForImageClassification"
    assert all("models--someone--tiny-vit" in k for k in loaded.checksums)



def test_hf_downloads_only_when_allowed(hf_models, empty_hub, monkeypatch):
    """hf:ID of an uncached model: an error naming `hf download`, unless SALCLI_ALLOW_DOWNLOAD=1, when
    huggingface_hub fetches it into the cache (faked here: it copies the tiny ViT)."""
    import huggingface_hub

    fetched = []

    def snapshot_download(repo_id, cache_dir=None, allow_patterns=None, **kwargs):
        fetched.append(repo_id)
        folder = hf_models / "vit"
        put_in_hub(empty_hub, repo_id, {n.name: n for n in folder.iterdir()})
        return str(next((empty_hub / f"models--{repo_id.replace('/', '--')}" / "snapshots").iterdir()))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    with pytest.raises(ModelLoadError, match="hf download someone/remote-vit"):
        load_model("hf:someone/remote-vit")
    assert fetched == []
    monkeypatch.setenv("SALCLI_ALLOW_DOWNLOAD", "1")
    loaded = load_model("hf:someone/remote-vit")
    assert fetched == ["someone/remote-vit"] and loaded.labels == ("cat", "dog", "bird")
    assert sources.find("hf:someone/remote-vit").preset("hf:someone/remote-vit")[0]["crop"] == 32  # now cached

def test_hf_pickled_weights_and_user_weights(hf_models, tmp_path):
    """A folder with pytorch_model.bin only (old repositories) loads, read weights-only; --weights FILE is loaded
    by salcli over a model built from config.json alone."""
    from safetensors.torch import load_file

    state = load_file(str(hf_models / "convnext" / "model.safetensors"))
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.json").write_bytes((hf_models / "convnext" / "config.json").read_bytes())
    torch.save(state, folder / "pytorch_model.bin")
    x = torch.randn(1, 3, 32, 32)
    reference = load_model(f"hf:{hf_models / 'convnext'}").module
    with torch.no_grad():
        expected = reference(x).logits
        torch.testing.assert_close(load_model(f"hf:{folder}").module(x).logits, expected)
    (folder / "pytorch_model.bin").unlink()  # now config.json alone: weights from --weights
    with pytest.raises(ModelLoadError, match="no model.safetensors or pytorch_model.bin in"):
        load_model(f"hf:{folder}")
    save_file({k: v * 0.5 if v.is_floating_point() else v for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    loaded = load_model(f"hf:{folder}", str(tmp_path / "w.safetensors"))
    with torch.no_grad():
        assert not torch.allclose(loaded.module(x).logits, expected)
    assert str(tmp_path / "w.safetensors") in loaded.checksums


def test_hf_errors_exit_3_and_say_what_to_do(cli, hf_models, images_dir, tmp_path):
    from transformers import BertConfig, ViTConfig, ViTModel

    def explain(spec):
        return cli("explain", images_dir, "-o", tmp_path / "o", "--model", spec, expect=3).stderr

    err = explain("hf:google/vit-base-patch16-224")  # the cache is an empty tmp folder
    assert "not in the local Hugging Face cache" in err and "hf download google/vit-base-patch16-224" in err
    assert "SALCLI_ALLOW_DOWNLOAD=1" in err and not (tmp_path / "o").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no config.json in" in explain(f"hf:{empty}")
    assert "no such folder" in explain(f"hf:{tmp_path / 'missing'}")
    BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16).save_pretrained(
        tmp_path / "bert")
    err = explain(f"hf:{tmp_path / 'bert'}")
    assert "describes a 'bert' model" in err and "not an image classifier" in err
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=16)).save_pretrained(tmp_path / "backbone")
    err = explain(f"hf:{tmp_path / 'backbone'}")
    assert "classifier" in err and "without its classification head" in err


def test_sources_are_registered_in_order():
    order = [s.name for s in sources.ordered()]
    assert order.index("torchvision") < order.index("timm") < order.index("hf") < order.index("factory")
    assert sources.find("hf:org/name").name == "hf" and sources.find("hf:/some/dir").name == "hf"



def test_presets_hold_what_their_sources_say():
    """configs/timm-*.toml and hf-*.toml: their [preprocess] is the source's preset (timm: read offline from
    pretrained_cfg; hf: the rules applied to the Hub's preprocessor_config.json)."""
    from conftest import ROOT

    from salcli.config import build_config
    from salcli.sources.huggingface import preprocess_of

    presets = sorted((ROOT / "configs").glob("timm-*.toml")) + sorted((ROOT / "configs").glob("hf-*.toml"))
    assert len(presets) >= 7
    for path in presets:
        config = build_config({"config_file": path})
        ours = Preprocess(**config.preprocess)
        if config.model.startswith("timm:"):
            base, labels = sources.find(config.model).preset(config.model)
            assert len(labels) == 1000
        else:
            base = preprocess_of(HUB_PROCESSORS[config.model[3:]], {})
        assert Preprocess(**base) == ours, path.name
        assert config.weights is None  # left to the user
