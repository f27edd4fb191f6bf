"""Output sinks: the registry, the files sink's contract, and a throwaway sink that resume and report obey."""

from __future__ import annotations

import json
import pkgutil
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from salcli import outputs, report
from salcli.errors import UsageError
from salcli.outputs import sinks
from salcli.outputs.sinks.files import Files

SETTINGS = "s1"


def record(key: str, method: str = "vanilla", **extra) -> dict:
    return {"image": key, "method": method, "status": "ok", "error": None, "settings": SETTINGS, **extra}


def odd_map(h: int = 5, w: int = 7) -> np.ndarray:
    """A float32 map whose every bit matters: signed zero, a subnormal, extremes, random mantissas."""
    m = np.random.default_rng(0).standard_normal((h, w)).astype(np.float32)
    m.flat[:4] = [-0.0, np.float32(1e-45), np.finfo(np.float32).max, np.finfo(np.float32).min]
    return m


def pixels(h: int = 6, w: int = 9) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)


def files_under(out) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


# -- registry

def test_every_module_of_the_package_registers_a_sink():
    modules = {f"{sinks.__name__}.{m.name}" for m in pkgutil.iter_modules(sinks.__path__)}
    assert "salcli.outputs.sinks.files" in modules
    assert modules <= {cls.__module__ for cls in sinks.REGISTRY.values()}
    assert sinks.get("files") is Files and Files.name == "files" and Files.help


def test_a_duplicate_sink_name_is_an_error():
    class Other(Files):
        pass

    with pytest.raises(ValueError, match="'files' is registered twice"):
        sinks.register("files")(Other)
    assert sinks.REGISTRY["files"] is Files


def test_an_unknown_sink_is_a_usage_error_that_lists_the_sinks():
    with pytest.raises(UsageError) as info:
        sinks.get("fils")
    message = str(info.value)
    assert "unknown output format 'fils'" in message and "Did you mean 'files'?" in message
    assert message.endswith("Output formats: " + ", ".join(sinks.REGISTRY))


def test_the_writer_refuses_an_unknown_sink_before_creating_out(tmp_path):
    with pytest.raises(UsageError, match="Output formats: files"):
        outputs.OutputWriter(tmp_path / "out", sink="fils")
    assert not (tmp_path / "out").exists()


# -- the files sink

def test_files_fields_are_paths_relative_to_out_keeping_the_full_file_name(tmp_path):
    assert Files(tmp_path).fields("gradcam", "sub/a.jpg") == {"npy": "gradcam/sub/a.jpg.npy",
                                                             "overlay": "gradcam/sub/a.jpg.png"}


def test_files_write_then_complete_and_load_map_bit_exact(tmp_path):
    sink = Files(tmp_path)
    rec = record("sub/a.jpg", **sink.fields("vanilla", "sub/a.jpg"))
    saliency, overlay = odd_map(), pixels()
    assert not sink.complete(rec) and sink.overlay_link(rec) is None
    sink.write(rec, saliency, lambda: overlay)
    assert sink.complete(rec)
    back = sink.load_map(rec)
    assert back.dtype == np.float32 and back.shape == saliency.shape
    assert np.array_equal(back.view(np.uint32), saliency.view(np.uint32))
    assert sink.overlay_link(rec) == "vanilla/sub/a.jpg.png"
    assert np.array_equal(np.asarray(Image.open(tmp_path / "vanilla/sub/a.jpg.png")), overlay)
    assert files_under(tmp_path) == ["vanilla/sub/a.jpg.npy", "vanilla/sub/a.jpg.png"]
    sink.close()  # nothing to flush; must not touch the files
    assert files_under(tmp_path) == ["vanilla/sub/a.jpg.npy", "vanilla/sub/a.jpg.png"]


def test_files_a_failing_render_leaves_no_file(tmp_path):
    sink = Files(tmp_path)
    rec = record("a.png", **sink.fields("vanilla", "a.png"))

    def render():
        raise RuntimeError("colormap exploded")

    with pytest.raises(RuntimeError, match="exploded"):
        sink.write(rec, odd_map(), render)
    assert files_under(tmp_path) == [] and not sink.complete(rec)


def test_files_a_failing_png_write_removes_the_npy(tmp_path, monkeypatch):
    def full(final, image):
        raise OSError("no space left on device")

    monkeypatch.setattr(outputs, "write_png", full)
    sink = Files(tmp_path)
    rec = record("a.png", **sink.fields("vanilla", "a.png"))
    with pytest.raises(OSError):
        sink.write(rec, odd_map(), pixels)
    assert files_under(tmp_path) == []


def test_files_complete_needs_both_files_and_discard_removes_them(tmp_path):
    sink = Files(tmp_path)
    a, b = (record(k, **sink.fields("vanilla", k)) for k in ("a.png", "b.png"))
    sink.write(a, odd_map(), pixels)
    sink.write(b, odd_map(), pixels)
    (tmp_path / "vanilla" / "a.png.png").unlink()
    assert not sink.complete(a) and sink.overlay_link(a) is None  # a lone .npy is not a finished map
    (tmp_path / "vanilla" / "b.png.npy").unlink()
    assert not sink.complete(b) and sink.overlay_link(b) == "vanilla/b.png.png"
    sink.write(a, odd_map(), pixels)
    sink.discard(a)
    assert files_under(tmp_path) == ["vanilla/b.png.png"] and not sink.complete(a)
    sink.discard(a)  # nothing left to remove: no error


def test_files_never_looks_outside_out(tmp_path):
    out = tmp_path / "out"
    sink = Files(out)
    (out / "m").mkdir(parents=True)  # so that OUT/m/../../ resolves
    (tmp_path / "x.npy").write_bytes(b"")  # OUT/m/../../x.* exists: a record naming it must not count
    (tmp_path / "x.png").write_bytes(b"")
    rec = record("../../x", method="m")
    assert not sink.complete(rec) and sink.overlay_link(rec) is None
    sink.discard(rec)
    assert (tmp_path / "x.npy").exists() and (tmp_path / "x.png").exists()
    with pytest.raises(ValueError, match="outside"):
        sink.write(rec, odd_map(), pixels)


def test_the_writer_defaults_to_files_and_names_the_format_in_run_json(tmp_path):
    w = outputs.OutputWriter(tmp_path)
    w.submit(record("a.png"), odd_map(), pixels)
    w.close()
    w.write_run_json({"seed": 0}, None)
    assert json.loads((tmp_path / "run.json").read_text())["format"] == "files"
    assert w.records[("a.png", "vanilla")]["npy"] == "vanilla/a.png.npy"
    # no manifest yet: the journal alone (written at close) makes the record resumable
    assert outputs.OutputWriter(tmp_path).done_before("a.png", "vanilla", SETTINGS) is not None


# -- a throwaway sink: the writer and the report go through the sink, never around it

class Memory(outputs.sinks.Sink):
    """Keeps maps in a dict shared by its instances (as part files would outlive a writer)."""

    help = "maps in memory (tests only)"
    maps: dict = {}
    discarded: list = []

    def fields(self, method, key):
        return {"npy": f"mem:{method}/{key}", "overlay": None, "slot": len(self.maps)}

    def write(self, record, saliency, render):
        if record["image"] == "bad.png":
            raise OSError("memory full")
        render()
        self.maps[(record["method"], record["image"])] = saliency.copy()

    def discard(self, record):
        self.discarded.append(record["image"])

    def complete(self, record):
        return (record["method"], record["image"]) in self.maps

    def read_map(self, record):
        return self.maps[(record["method"], record["image"])]

    def overlay_link(self, record):
        return f"shown/{record['image']}.svg" if self.complete(record) else None


@pytest.fixture
def memory():
    try:
        sinks.register("memtest")(Memory)
        Memory.maps.clear()
        Memory.discarded.clear()
        yield Memory
    finally:
        sinks.REGISTRY.pop("memtest", None)


def test_resume_asks_the_sink(memory, tmp_path):
    w = outputs.OutputWriter(tmp_path, sink="memtest")
    for key in ("a.png", "b.png", "bad.png"):
        w.submit(record(key), odd_map(), pixels)
    w.close()
    w.write_manifest()
    w.write_run_json({"seed": 0}, None)
    assert files_under(tmp_path) == [".salcli.lock", "manifest.jsonl", "parts/manifest-00000-of-00001.jsonl",
                                     "run.json"]  # no .npy, no .png
    assert json.loads((tmp_path / "run.json").read_text())["format"] == "memtest"
    recs = {r["image"]: r for r in outputs.read_manifest(tmp_path)}
    assert recs["a.png"]["npy"] == "mem:vanilla/a.png" and recs["a.png"]["overlay"] is None
    assert recs["bad.png"]["status"] == "error" and "memory full" in recs["bad.png"]["error"]
    assert recs["bad.png"]["npy"] is None and recs["bad.png"]["slot"] is None
    assert memory.discarded == ["bad.png"]

    again = outputs.OutputWriter(tmp_path, sink="memtest")
    assert again.done_before("a.png", "vanilla", SETTINGS)["npy"] == "mem:vanilla/a.png"
    assert again.done_before("a.png", "vanilla", "other settings") is None
    assert again.done_before("bad.png", "vanilla", SETTINGS) is None
    del memory.maps[("vanilla", "b.png")]
    assert again.done_before("b.png", "vanilla", SETTINGS) is None  # the sink lost it: redo
    assert outputs.OutputWriter(tmp_path).done_before("a.png", "vanilla", SETTINGS) is None  # files: nothing there
    assert np.array_equal(outputs.open_sink(tmp_path).load_map(recs["a.png"]), odd_map())


def test_report_links_overlays_only_through_the_sink(memory, tmp_path):
    (tmp_path / "vanilla").mkdir()
    (tmp_path / "vanilla" / "a.png.png").write_bytes(outputs.png_bytes(pixels()))  # a decoy the sink never names
    memory.maps[("vanilla", "a.png")] = odd_map()
    rows = [record("a.png", npy="mem:vanilla/a.png", overlay="vanilla/a.png.png"),
            record("b.png", npy="mem:vanilla/b.png", overlay="vanilla/b.png.png"),
            record("c.png", npy="mem:vanilla/c.png", overlay=None)]
    outputs.write_jsonl(tmp_path / "manifest.jsonl", rows)
    outputs.write_json(tmp_path / "run.json", {"format": "memtest", "methods": {"vanilla": {}}})
    html = report.build_report(tmp_path)
    assert re.findall(r'src="([^"]*)"', html) == ["shown/a.png.svg"]  # not the decoy the record names
    assert "overlay missing: vanilla/b.png.png" in html  # the sink has no overlay for b
    assert "no overlay" in html and "overlay missing: None" not in html  # c was written without one


def test_open_sink_reads_the_format_from_run_json(memory, tmp_path):
    sink = outputs.open_sink(tmp_path, {"schema_version": 1})
    assert type(sink) is Files and sink.out == tmp_path
    assert type(outputs.open_sink(tmp_path, {"format": "memtest"})) is Memory
    outputs.write_json(tmp_path / "run.json", {"format": "memtest"})
    assert type(outputs.open_sink(tmp_path)) is Memory  # read from OUT when not given
    with pytest.raises(UsageError, match="unknown output format 'orc'"):
        outputs.open_sink(tmp_path, {"format": "orc"})


def test_the_outputs_package_registers_files_without_importing_torch():
    code = "import sys, salcli.outputs\nprint(sorted(salcli.outputs.sinks.REGISTRY), 'torch' in sys.modules)\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("] ")[1].strip() == "False" and "'files'" in done.stdout


def test_discovery_registers_a_module_dropped_into_the_package(tmp_path):
    """A new sink is one file: a module beside files.py is imported and registered, with no list to edit.
    (In a child process, the package's code runs again with one more folder on its ``__path__``.)"""
    (tmp_path / "dropin.py").write_text("from salcli.outputs.sinks import Sink, register\n\n\n"
                                        "@register('dropin')\nclass Dropin(Sink):\n    pass\n")
    code = f"""
import importlib.util, sys
import salcli.outputs.sinks as s
spec = importlib.util.spec_from_file_location(s.__name__, s.__file__,
                                              submodule_search_locations=[*s.__path__, {str(tmp_path)!r}])
fresh = sys.modules[s.__name__] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fresh)
print(sorted(fresh.REGISTRY))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['dropin']"  # files.py was imported before, so only the new module registers
