"""The writer: whole files or none, failures isolated per file, interruption leaves a resumable OUT."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY_OPTS, manifest

from salcli import outputs
from salcli.methods.gradient import Vanilla


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "sub" / "a.npy"
    with pytest.raises(RuntimeError):
        with outputs.atomic_path(final) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert not final.exists() and list((tmp_path / "sub").iterdir()) == []
    outputs.write_npy(final, np.ones((2, 3)))
    assert np.load(final).dtype == np.float32 and list((tmp_path / "sub").iterdir()) == [final]


def test_outputs_get_the_permissions_open_would_give(tmp_path):
    import os

    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    outputs.write_bytes(tmp_path / "atomic", b"x")  # not mkstemp's private 0600
    assert os.stat(tmp_path / "atomic").st_mode & 0o777 == os.stat(plain).st_mode & 0o777


def test_paths_cannot_escape_out(tmp_path):
    with pytest.raises(ValueError):
        outputs._safe_join(tmp_path, "vanilla/../../x.npy")


def test_a_failed_write_is_an_error_record_and_leaves_no_partial_file(cli, images_dir, tmp_path, monkeypatch):
    real = outputs.write_png

    def flaky(final, image):
        if final.name == "img02.png.png":
            raise OSError("no space left on device")
        real(final, image)

    monkeypatch.setattr(outputs, "write_png", flaky)
    out = tmp_path / "o"
    cli("explain", images_dir, "-o", out, *TINY_OPTS, expect=1)
    records = {r["image"]: r for r in manifest(out)}
    assert records["img02.png"]["status"] == "error" and "no space" in records["img02.png"]["error"]
    assert not (out / "vanilla" / "img02.png.npy").exists()  # never half a pair that looks complete
    assert sum(r["status"] == "ok" for r in records.values()) == 5
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]
    monkeypatch.setattr(outputs, "write_png", real)
    summary = json.loads(cli("explain", images_dir, "-o", out, *TINY_OPTS, "--json").stdout)
    assert summary["counts"] == {"ok": 1, "error": 0, "skipped": 5}


def test_a_model_failure_fails_its_batch_only(cli, images_dir, tmp_path, monkeypatch):
    real = Vanilla.attribute
    calls = []

    def failing_once(self, model, x, target, ctx):
        calls.append(len(ctx.keys))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real(self, model, x, target, ctx)

    monkeypatch.setattr(Vanilla, "attribute", failing_once)
    out = tmp_path / "o"
    cli("explain", images_dir, "-o", out, *TINY_OPTS, "--batch-size", "2", expect=1)
    status = [r["status"] for r in manifest(out)]
    assert status == ["error", "error", "ok", "ok", "ok", "ok"]
    assert "boom" in manifest(out)[0]["error"] and manifest(out)[0]["pred"] is not None


def test_interrupted_run_keeps_whole_files_and_resumes(cli, images_dir, tmp_path, monkeypatch):
    real = Vanilla.attribute
    calls = []

    def interrupt_on_third_batch(self, model, x, target, ctx):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, model, x, target, ctx)

    monkeypatch.setattr(Vanilla, "attribute", interrupt_on_third_batch)
    out = tmp_path / "o"
    result = cli("explain", images_dir, "-o", out, *TINY_OPTS, "--batch-size", "2", expect=130)
    assert "resume" in result.stderr
    assert [r["image"] for r in manifest(out)] == [f"img{i:02d}.png" for i in range(4)]
    assert json.loads((out / "run.json").read_text())["interrupted"] is True
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]
    monkeypatch.setattr(Vanilla, "attribute", real)
    summary = json.loads(cli("explain", images_dir, "-o", out, *TINY_OPTS, "--batch-size", "2", "--json").stdout)
    assert summary["counts"] == {"ok": 2, "error": 0, "skipped": 4}


def test_manifest_merges_other_images(tmp_path):
    w = outputs.OutputWriter(tmp_path)
    w.add({"image": "a.png", "method": "vanilla", "status": "ok"})
    w.write_manifest()
    w2 = outputs.OutputWriter(tmp_path)
    w2.add({"image": "b.png", "method": "vanilla", "status": "error"})
    w2.write_manifest()
    assert [r["image"] for r in manifest(tmp_path)] == ["a.png", "b.png"]
