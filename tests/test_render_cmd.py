"""`salcli render OUT`: overlays drawn from a finished run's stored maps, without the model. After --no-overlays
it draws, byte for byte, what explain draws with the same display options, in every format; --scale run has every
map; a source that is gone or changed is an error line; -m restricts; -o DIR leaves OUT alone; usage errors
write nothing; no torch is imported."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY_OPTS, manifest, write_images

FORMATS = ["files", "parquet", "webdataset"]
METHODS = "vanilla,input-x-gradient"  # one map >= 0, one signed
OTHER = ["--colormap", "viridis", "--alpha", "0.7", "--sign", "positive", "--overlay-size", "64"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("render") / "imgs"
    write_images(folder, n=4, size=20)  # 20 x 23: the crop cuts a border away
    return folder


def explain(cli, images: Path, out: Path, *args, expect: int = 0):
    return cli("explain", images, "-o", out, *TINY_OPTS, "-m", METHODS, "--device", "cpu", "-q", *args,
               expect=expect)


def render(cli, out: Path, *args, expect: int = 0) -> dict:
    done = cli("render", out, "--json", "-q", *args, expect=expect)
    return json.loads(done.stdout) if expect in (0, 1) else {}


def pngs(folder: Path) -> dict[str, bytes]:
    """METHOD/KEY.png -> bytes, for the files layout under ``folder``."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for m in METHODS.split(",")
            for p in sorted((folder / m).glob("*.png"))}


def tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".salcli.lock"}


def log(folder: Path) -> dict[tuple[str, str], dict]:
    lines = (folder / "render.jsonl").read_text().splitlines()
    return {(r["image"], r["method"]): r for r in map(json.loads, lines)}


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory) -> dict[str, Path]:
    """What explain draws (files format, overlays on): with the default display options and with OTHER."""
    from conftest import Cli

    cli = Cli()
    found = {"default": tmp_path_factory.mktemp("ref") / "out", "other": tmp_path_factory.mktemp("ref") / "out"}
    explain(cli, images, found["default"])
    explain(cli, images, found["other"], *OTHER)
    return found


# ---------------------------------------------------------------------------------------------- the same pictures
@pytest.mark.parametrize("fmt", FORMATS)
def test_render_after_no_overlays_draws_what_explain_draws(cli, images, reference, fmt, tmp_path):
    out = tmp_path / "out"
    explain(cli, images, out, "--no-overlays", "--format", fmt)
    before = {(r["image"], r["method"]): r for r in manifest(out)}
    assert {r["overlay"] for r in before.values()} == {None}
    summary = render(cli, out)
    assert summary["counts"] == {"ok": 8, "error": 0} and summary["exit_code"] == 0 and summary["in_place"]
    home = out if fmt == "files" else out / "overlays"
    assert summary["dest"] == str(home)
    expected = pngs(reference["default"])
    assert len(expected) == 8 and pngs(home) == expected  # byte for byte: same picture, map, caption, encoder
    after = {(r["image"], r["method"]): r for r in manifest(out)}
    for key, rec in after.items():
        png = f"{key[1]}/{key[0]}.png"
        if fmt == "files":  # the record names its overlay, as if explain had drawn it
            assert rec["overlay"] == png and "rendered" not in rec
        else:  # the part is never rewritten: the record names the PNG beside it
            assert rec["overlay"] is None and rec["rendered"] == f"overlays/{png}"
        assert {k: v for k, v in rec.items() if k not in ("overlay", "rendered")} == {
            k: v for k, v in before[key].items() if k != "overlay"}
        assert log(out)[key] == {"image": key[0], "method": key[1], "status": "ok", "error": None,
                                 "overlay": rec["rendered" if fmt != "files" else "overlay"], "source": rec["source"]}
    assert json.loads((out / "render.json").read_text())["methods"]["vanilla"]["colormap"] == "jet"
    assert cli("verify", out).exit_code == 0
    # explain again with the same options skips every map, and keeps the overlays render drew
    again = json.loads(explain(cli, images, out, "--no-overlays", "--format", fmt, "--json").stdout)
    assert again["counts"] == {"ok": 0, "skipped": 8, "error": 0}
    assert pngs(home) == expected
    cli("report", out, "-q")  # the report links the rendered overlays
    html = (out / "report.html").read_text()
    assert all(f"{rec['method']}/{rec['image']}.png" in html for rec in after.values())
    assert "no overlay" not in html


@pytest.mark.parametrize("fmt", ["files", "parquet"])
def test_render_into_another_folder_with_other_options_leaves_out_alone(cli, images, reference, fmt, tmp_path):
    out, dest = tmp_path / "out", tmp_path / "other"
    explain(cli, images, out, "--format", fmt)  # overlays drawn with the defaults
    untouched = tree(out)
    summary = render(cli, out, "-o", dest, *OTHER)
    assert summary["counts"] == {"ok": 8, "error": 0} and not summary["in_place"] and summary["dest"] == str(dest)
    assert pngs(dest) == pngs(reference["other"])
    assert tree(out) == untouched  # OUT is only read
    assert sorted(p.name for p in dest.iterdir()) == ["input-x-gradient", "render.json", "render.jsonl", "vanilla"]
    about = json.loads((dest / "render.json").read_text())
    assert about["run"] == str(out.resolve()) and about["format"] == fmt
    assert about["methods"]["input-x-gradient"]["sign"] == "positive"


def test_render_redraws_a_files_run_in_place_with_other_options(cli, images, reference, tmp_path):
    out = tmp_path / "out"
    explain(cli, images, out)
    records = manifest(out)
    render(cli, out, *OTHER)
    assert pngs(out) == pngs(reference["other"])
    assert manifest(out) == records  # the same paths: nothing else changes
    assert not list(out.rglob("*.part"))


# ---------------------------------------------------------------------------------------------- --scale run
@pytest.mark.parametrize("fmt", FORMATS)
def test_scale_run_in_render_is_explains_run_scale(cli, images, fmt, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    explain(cli, images, ref, "--scale", "run")  # explain can only do this in the files format
    if fmt != "files":
        explain(cli, images, tmp_path / "refused", "--scale", "run", "--format", fmt, expect=2)
    explain(cli, images, out, "--no-overlays", "--format", fmt)
    render(cli, out, "--scale", "run")
    home = out if fmt == "files" else out / "overlays"
    assert pngs(home) == pngs(ref)
    scales = {(r["image"], r["method"]): r["overlay_scale"] for r in manifest(ref)}
    assert {k: r["overlay_scale"] for k, r in log(out).items()} == scales
    assert len({tuple(v) for k, v in scales.items() if k[1] == "vanilla"}) == 1  # one range per method
    about = json.loads((out / "render.json").read_text())["methods"]
    assert about["vanilla"]["scale_range"] == scales[next(k for k in scales if k[1] == "vanilla")]
    if fmt == "files":  # the records say which range their overlay was drawn at, as explain's do
        assert {(r["image"], r["method"]): r["overlay_scale"] for r in manifest(out)} == scales


# ---------------------------------------------------------------------------------------------- sources
def test_a_source_gone_or_changed_is_an_error_line_and_the_others_are_drawn(cli, tmp_path):
    folder, out = tmp_path / "imgs", tmp_path / "out"
    paths = write_images(folder, n=3, size=20)
    explain(cli, folder, out, "--no-overlays")
    paths[0].unlink()  # gone
    write_images(tmp_path / "new", n=2, size=21, seed=5)[1].replace(paths[1])  # replaced under the same name
    summary = render(cli, out, expect=1)
    assert summary["counts"] == {"ok": 2, "error": 4}
    lines = log(out)
    for method in METHODS.split(","):
        gone, changed, fine = (lines[(p.name, method)] for p in paths)
        assert gone["status"] == "error" and "cannot read the image again" in gone["error"]
        assert "file not found" in gone["error"] and str(paths[0].resolve()) in gone["error"]
        assert changed["status"] == "error" and "changed since its map was computed" in changed["error"]
        assert "rerun salcli explain" in changed["error"] and changed["overlay"] is None
        assert fine["status"] == "ok" and (out / fine["overlay"]).is_file()
    records = {(r["image"], r["method"]): r for r in manifest(out)}
    assert records[(paths[0].name, "vanilla")]["overlay"] is None  # explain's record stays as it was: its map is whole
    assert records[(paths[0].name, "vanilla")]["status"] == "ok"
    assert not (out / "vanilla" / f"{paths[0].name}.png").exists()
    assert {e["image"] for e in summary["errors"]} == {paths[0].name, paths[1].name}
    err = cli("render", out, expect=1).stderr
    assert f"failed: {paths[0].name} (vanilla): cannot read the image again" in err
    assert "2 overlays drawn, 4 failed" in err


# ---------------------------------------------------------------------------------------------- -m
def test_m_restricts_the_methods_drawn(cli, images, tmp_path):
    out = tmp_path / "out"
    explain(cli, images, out, "--no-overlays")
    summary = render(cli, out, "-m", "VANILLA")  # any case, as explain's -m
    assert summary["methods"] == ["vanilla"] and summary["counts"] == {"ok": 4, "error": 0}
    assert len(list((out / "vanilla").glob("*.png"))) == 4 and not list((out / "input-x-gradient").glob("*.png"))
    assert {r["method"] for r in manifest(out) if r["overlay"]} == {"vanilla"}
    assert set(json.loads((out / "render.json").read_text())["methods"]) == {"vanilla"}
    render(cli, out, "-m", "input_x_gradient")  # a later render adds its method to the log
    assert {m for _, m in log(out)} == {"vanilla", "input-x-gradient"}
    assert set(json.loads((out / "render.json").read_text())["methods"]) == {"vanilla", "input-x-gradient"}


@pytest.mark.parametrize("when", ["before merge", "after merge"])
def test_a_sharded_run_is_rendered_before_or_after_merge(cli, images, tmp_path, when):
    """The records live in the shards' journals (and after ``merge`` in the manifest too): render appends each new
    record to the journal that held it and rewrites the merged manifest, so both say the same and verify sees no
    record twice."""
    out = tmp_path / "out"
    for shard in ("0/2", "1/2"):
        explain(cli, images, out, "--no-overlays", "--shard", shard)
    if when == "after merge":
        cli("merge", out, "-q")
        assert {r["overlay"] for r in manifest(out)} == {None}
    render(cli, out)
    if when == "before merge":
        assert not (out / "manifest.jsonl").exists()
        cli("merge", out, "-q")
    records = manifest(out)
    assert len(records) == 8 and all(r["overlay"] == f"{r['method']}/{r['image']}.png" for r in records)
    assert cli("verify", out).exit_code == 0  # no record seen in two journals
    cli("merge", out, "-q")
    assert manifest(out) == records


# ---------------------------------------------------------------------------------------------- usage errors
@pytest.mark.parametrize("args, words", [
    (["--sign", "both"], "--sign takes one of"),
    (["--alpha", "2"], "--alpha"),
    (["--scale", "-1"], "--scale takes image, run or a positive number"),
    (["--overlay-on", "crop"], "--overlay-on takes original or input"),
    (["--overlay-size", "8"], "--overlay-size"),
    (["--colormap", "viridiss"], "Did you mean 'viridis'"),
    (["-m", "gradcam"], "-m/--method gradcam: OUT holds no maps of it; its methods with maps: vanilla, "
                        "input-x-gradient"),
    (["-m", "nosuch"], "its methods with maps"),
])
def test_usage_errors_write_nothing(cli, images, tmp_path, args, words):
    out = tmp_path / "out"
    explain(cli, images, out, "--no-overlays")
    untouched = tree(out)
    err = cli("render", out, *args, expect=2).stderr
    assert "usage error" in err and words in err, err
    assert tree(out) == untouched


def test_usage_errors_about_folders(cli, images, tmp_path):
    err = cli("render", tmp_path / "nothing", expect=2).stderr
    assert "holds no run.json" in err
    out = tmp_path / "out"
    explain(cli, images, out, "--no-overlays")
    (tmp_path / "a-file").write_text("x")
    assert "a file, not a folder" in cli("render", out, "-o", tmp_path / "a-file", expect=2).stderr
    assert "is OUT itself" in cli("render", out, "-o", out, expect=2).stderr
    assert not (out / "render.jsonl").exists()


def test_render_does_not_import_torch(images, tmp_path):
    from conftest import Cli

    out = tmp_path / "out"
    explain(Cli(), images, out, "--no-overlays", "--format", "parquet")
    code = ("import sys\nfrom salcli.cli import app\n"
            "for args in (['render', '--help'], ['render', sys.argv[1], '-q', '--scale', 'run']):\n"
            "    try:\n        app(args)\n    except SystemExit as e:\n        assert e.code == 0, (args, e.code)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, capture_output=True, cwd=ROOT)
    assert len(list((out / "overlays" / "vanilla").glob("*.png"))) == 4
