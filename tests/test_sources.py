"""The model-source registry: which source takes which spec, how a new source plugs in, and the docs it feeds."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TINY, manifest
from torch import nn

from salcli import docs, sources
from salcli.config import RunConfig
from salcli.errors import ModelLoadError, UsageError, word
from salcli.models import LoadedModel, load_model, resolve_preset

NAMES = {"builtin", "torchvision", "timm", "hf", "factory", "torchscript", "pickle", "export"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One file of each kind a spec can name, all holding the tiny CNN (or its weights)."""
    from tiny import build

    folder = tmp_path_factory.mktemp("models")
    model = build().eval()
    torch.jit.script(model).save(str(folder / "tiny.ts"))
    torch.jit.script(model).save(str(folder / "scripted.pt"))  # TorchScript under a pickle-looking suffix
    torch.save(model, folder / "whole.pt")
    torch.save(model.state_dict(), folder / "weights.pth")
    torch.export.save(torch.export.export(model, (torch.zeros(1, 3, 16, 16),)), str(folder / "tiny.pt2"))
    (folder / "model.onnx").write_bytes(b"not a format salcli loads")
    return folder


@pytest.mark.parametrize("spec, name", [
    ("builtin:fashion-mnist", "builtin"),
    ("builtin:no-such-model", "builtin"),  # claimed, then refused by the builtin source with its own message
    ("torchvision:resnet18", "torchvision"),
    (TINY, "factory"),
    ("tiny:build", "factory"),  # package.module:FUNC (tests/fixtures is on sys.path)
    ("{d}/tiny.ts", "torchscript"),
    ("{d}/scripted.pt", "torchscript"),
    ("{d}/whole.pt", "pickle"),
    ("{d}/weights.pth", "pickle"),
    ("{d}/missing.pt", "pickle"),  # a missing file is the source's "no such file" (exit 3), as before
    ("{d}/tiny.pt2", "export"),
])
def test_each_spec_form_goes_to_its_source(files, spec, name):
    assert sources.find(spec.format(d=files)).name == name


@pytest.mark.parametrize("spec, trust, shape", [
    ("builtin:fashion-mnist", False, (1, 1, 28, 28)),
    ("torchvision:resnet18", False, (1, 3, 32, 32)),
    (TINY, False, (1, 3, 16, 16)),
    ("tiny:build", False, (1, 3, 16, 16)),
    ("{d}/tiny.ts", False, (1, 3, 16, 16)),
    ("{d}/whole.pt", True, (1, 3, 16, 16)),
    ("{d}/tiny.pt2", True, (1, 3, 16, 16)),
])
def test_each_source_builds_a_working_model(files, spec, trust, shape):
    spec = spec.format(d=files)
    loaded = load_model(spec, trust=trust)
    assert loaded.kind == sources.find(spec).name and loaded.spec == spec
    assert not any(p.requires_grad for p in loaded.module.parameters())
    with torch.no_grad():
        assert loaded.module(torch.zeros(shape)).ndim == 2


def test_the_registry_holds_one_source_per_module():
    modules = {m.name for m in pkgutil.iter_modules(sources.__path__)}
    assert set(sources.REGISTRY) == NAMES
    assert {cls.__module__.rsplit(".", 1)[1] for cls in sources.REGISTRY.values()} == modules


def test_an_unknown_spec_is_a_usage_error_listing_every_form(files, cli, images_dir, tmp_path):
    with pytest.raises(UsageError) as info:
        sources.find("foo")
    message = str(info.value)
    assert message.startswith("model= foo") and "(no such file)" in message
    assert info.value.render({}).startswith("--model foo")
    for entry in sources.describe():
        for form in entry["forms"]:
            assert form in message
    with pytest.raises(UsageError) as info:
        sources.find(str(files / "model.onnx"))  # an existing file of a kind no source takes
    assert "no such file" not in str(info.value) and "FILE.pt2" in str(info.value)
    err = cli("explain", images_dir, "-o", tmp_path / "o", "--model", "foo", expect=2).stderr
    assert "--model foo" in err and "builtin:NAME" in err and not (tmp_path / "o").exists()


def test_a_duplicate_name_is_an_error():
    before = dict(sources.REGISTRY)
    with pytest.raises(ValueError, match="'torchvision' is registered twice"):
        @sources.register("torchvision")
        class Again(sources.Source):
            forms = ("again:NAME",)
    assert sources.REGISTRY == before


def test_a_new_source_is_one_registered_class(cli, images_dir, tmp_path):
    @sources.register("dummy")
    class Dummy(sources.Source):
        forms = ("dummy:NAME",)
        summary = "a throwaway test model"
        order = 5  # before the factory source, which would claim any unknown "x:y"

        def claims(self, spec):
            return spec.startswith("dummy:")

        def build(self, spec, weights, trust):
            return LoadedModel(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3)), spec, self.name)

        def preset(self, spec):
            return {"resize": 4, "crop": 4, "mean": (0.5,) * 3, "std": (0.5,) * 3, "channels": 3}, ("a", "b", "c")

    try:
        loaded = load_model("dummy:x")
        assert loaded.kind == "dummy" and not loaded.module.training
        preprocess, labels, note = resolve_preset(RunConfig(model="dummy:x"))
        assert (preprocess.crop, preprocess.mean, labels, note) == (4, (0.5,) * 3, ("a", "b", "c"), None)
        assert "| `dummy` | `dummy:NAME`: a throwaway test model |" in docs.source_table()
        cli("explain", images_dir, "-o", tmp_path / "o", "--model", "dummy:x")
        assert {r["pred_label"] for r in manifest(tmp_path / "o")} <= {"a", "b", "c"}
    finally:
        sources.REGISTRY.pop("dummy", None)
    assert "dummy" not in sources.REGISTRY


def test_presets_come_from_the_source():
    pre, labels, note = resolve_preset(RunConfig(model="builtin:fashion-mnist"))
    assert (pre.crop, pre.channels, len(labels), note) == (28, 1, 10, None)
    pre, labels = sources.find("torchvision:resnet18").preset("torchvision:resnet18")
    assert (pre["crop"], pre["mean"], len(labels)) == (224, (0.485, 0.456, 0.406), 1000)
    assert sources.find(TINY).preset(TINY) == ({}, None)
    pre, labels, note = resolve_preset(RunConfig(model="foo"))  # unclaimed: guessed, with a note
    assert set(pre.mean) == {0.0} and labels is None and "no preprocessing is known for foo" in note
    assert word(note).endswith("give config_file= or mean=/std=/resize=")


def test_only_torchvision_loads_its_own_default_weights():
    owners = {s.name for s in sources.ordered() if s.loads_own_weights("DEFAULT")}
    assert owners == {"torchvision"}
    assert not sources.find("torchvision:resnet18").loads_own_weights("w.safetensors")
    with pytest.raises(UsageError, match="weights= DEFAULT means torchvision's published weights"):
        load_model(TINY, "DEFAULT")


def test_library_errors_name_settings_not_flags(files):
    with pytest.raises(ModelLoadError) as info:
        load_model(str(files / "whole.pt"))
    assert "trust_checkpoint=" in str(info.value) and "--trust-checkpoint" in info.value.render({})
    with pytest.raises(ModelLoadError) as info:
        load_model(str(files / "weights.pth"))
    assert "holds weights (a state dict), not a model" in str(info.value)
    assert "model= (torchvision:NAME" in str(info.value) and "with weights=" in str(info.value)
    with pytest.raises(ModelLoadError, match="weights= .*nope.pt: no such file"):
        load_model(TINY, str(files / "nope.pt"))


def test_importing_sources_does_not_import_torch():
    code = ("import sys\nimport salcli.sources as s\n"
            "assert len(s.REGISTRY) >= 6 and s.find('builtin:x').name == 'builtin' and s.describe()\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_model_help_lists_every_form():
    from salcli.cli import MODEL_HELP

    for entry in sources.describe():
        for form in entry["forms"]:
            assert form in MODEL_HELP


def test_readme_source_table_is_generated_from_the_registry():
    table = docs.source_table()
    for entry in sources.describe():
        assert f"| `{entry['name']}` | {entry['help']} |" in table
    begin, end = docs.SOURCES_BEGIN, docs.SOURCES_END
    assert docs.replace(f"a\n{begin}\nold\n{end}\nb", begin, end, table) == f"a\n{begin}\n{table}\n{end}\nb"
    readme = (ROOT / "README.md").read_text()
    if begin in readme:
        assert docs.between(readme, begin, end) == table, "run: python -m salcli.docs --write"
    else:  # until the markers are added, --write leaves the README's text alone
        assert docs.replace(readme, begin, end, table) == readme
