"""salcli report: a self-contained HTML gallery of a run, linking the overlays that exist by relative path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
from conftest import ROOT, TINY_OPTS, Cli, manifest, write_images

ODD = "odd <b>&.png"  # a file name that must be escaped in text and quoted in links


class Sources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> Sources:
    parser = Sources()
    parser.feed(html)
    return parser


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One explain run shared by the tests: 3 good images, one named ODD, one broken file; vanilla and gradcam."""
    root = tmp_path_factory.mktemp("report")
    imgs = root / "imgs"
    write_images(imgs, n=4)
    (imgs / "img03.png").rename(imgs / ODD)
    (imgs / "broken.png").write_bytes(b"this is not a png")
    out = root / "out"
    Cli()("explain", imgs, "-o", out, "-m", "vanilla", "-m", "gradcam", *TINY_OPTS, "-q", expect=1)
    return out


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(run_dir, out)
    return out


def test_report_links_overlays_and_shows_predictions_and_errors(cli, run_dir, tmp_path):
    out = copy_run(run_dir, tmp_path)  # copied elsewhere: relative links must still resolve
    cli("report", out)
    html = (out / "report.html").read_text(encoding="utf-8")
    page = parse(html)
    records = manifest(out)
    ok = [r for r in records if r["status"] == "ok"]
    assert len(ok) == 8 and {r["method"] for r in ok} == {"vanilla", "gradcam"}
    overlays = [s for s in page.srcs if not s.startswith(("plots/", "original/"))]
    assert sorted(unquote(s) for s in overlays) == sorted(r["overlay"] for r in ok)
    pictures = [unquote(s) for s in page.srcs if s.startswith("original/")]  # the original column
    assert pictures == [f"original/{k}.jpg" for k in sorted({r["image"] for r in ok})]
    assert all((out / unquote(s)).is_file() for s in page.srcs)
    text = "".join(page.text)
    for r in ok:
        assert f"class {r['pred']} ({r['prob']:.2%})" in text
    broken = [r for r in records if r["image"] == "broken.png"]
    assert broken and all(r["status"] == "error" for r in broken)
    assert broken[0]["error"] in text
    failures = text[text.index("Failures"):text.index("Settings, checksums")]
    assert "broken.png" in failures and ODD not in failures
    for method in ("vanilla", "gradcam", "sha256", "Preprocessing", "Versions"):
        assert method in text
    # the odd name: escaped in text, URL-quoted in links, never raw markup
    assert "odd &lt;b&gt;&amp;.png" in html and "<b>" not in html
    assert "vanilla/odd%20%3Cb%3E%26.png.png" in page.srcs
    assert "Evaluation" not in text


def test_report_includes_evaluation_when_present(cli, run_dir, tmp_path):
    out = copy_run(run_dir, tmp_path)
    rows = [{"method": "vanilla", "images": 4, "deletion_auc": 0.1234, "insertion_auc": 0.9,
             "beats_random": {"deletion_auc": True, "insertion_auc": False}},
            {"method": "random", "images": 4, "deletion_auc": 0.5, "insertion_auc": 0.95}]
    (out / "evaluation.json").write_text(json.dumps({"schema_version": 1, "methods": rows,
                                                     "skipped_unannotated": 0, "mean_curves": {}}))
    (out / "metrics.jsonl").write_text(
        json.dumps({"image": "img00.png", "method": "vanilla", "deletion_auc": 0.4321, "pointing_game": 1.0}) + "\n"
        + json.dumps({"image": "img00.png", "method": "random", "deletion_auc": 0.6789}) + "\n"
        + json.dumps({"image": "img01.png", "method": None, "error": "cannot read the image again: gone"}) + "\n")
    (out / "plots").mkdir()
    shutil.copy(out / "vanilla" / "img00.png.png", out / "plots" / "deletion.png")
    cli("report", out, "-q")
    html = (out / "report.html").read_text(encoding="utf-8")
    page = parse(html)
    text = "".join(page.text)
    assert "Evaluation" in text and "0.1234 ✓" in text and "0.9 ✗" in text
    assert "deletion_auc: 0.4321" in text and "pointing_game: 1" in text and "deletion_auc: 0.6789" in text
    assert "random baseline" in text and "cannot read the image again: gone" in text
    assert "plots/deletion.png" in page.srcs


def test_report_output_inside_out_links_relative_to_its_folder(cli, run_dir, tmp_path):
    out = copy_run(run_dir, tmp_path)
    dest = out / "pages" / "gallery.html"
    cli("report", out, "-o", dest, "-q")
    page = parse(dest.read_text(encoding="utf-8"))
    assert page.srcs and all(s.startswith("../") and (dest.parent / unquote(s)).is_file() for s in page.srcs)
    assert not (out / "report.html").exists()


def test_report_usage_errors_exit_2(cli, run_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("report", empty, expect=2)
    assert "run.json" in result.stderr
    assert not (empty / "report.html").exists()
    result = cli("report", run_dir, "-o", tmp_path / "elsewhere.html", expect=2)
    assert "inside" in result.stderr and not (tmp_path / "elsewhere.html").exists()


def test_report_module_does_not_import_torch():
    code = "import sys, salcli.report\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=ROOT)


def test_report_leads_with_the_gallery_and_folds_the_settings(cli, run_dir, tmp_path):
    import re

    out = copy_run(run_dir, tmp_path)
    cli("report", out, "-q")
    html = (out / "report.html").read_text(encoding="utf-8")
    gallery, failures, details = html.index("<h2>Images ("), html.index('id="failures"'), html.index("<details")
    assert gallery < failures < details  # the pictures first, the settings last and folded
    assert html.index("<h2>Run</h2>") > details and html.index("<h2>Versions</h2>") < html.index("</details>")
    head = html[html.index("<thead>", gallery):html.index("</thead>", gallery)]
    assert re.findall(r"<th>([^<]*)</th>", head) == ["image", "original", "vanilla", "gradcam"]
    start = html.index("<code>img00.png</code>")
    cells = html[html.rindex("<tr>", 0, start):html.index("</tr>", start)].split("<td")[1:]
    assert "original/" in cells[1] and "vanilla/" in cells[2] and "gradcam/" in cells[3]  # original beside each
    assert "class=\"ov px\"" in cells[1]  # a 20 px picture is shown with visible pixels
    shown = html[gallery:failures]
    assert "size: " not in shown and "mtime_ns" not in shown  # resume bookkeeping is not a metric


def test_report_times_are_iso_8601(cli, run_dir, tmp_path):
    import re

    out = copy_run(run_dir, tmp_path)
    run = json.loads((out / "run.json").read_text())
    cli("report", out, "-q")
    html = (out / "report.html").read_text(encoding="utf-8")
    timings = html[html.index("<h2>Timings"):html.index("<h2>Versions")]
    iso = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"
    for key in ("started", "finished"):
        assert re.search(f"<dt>{key}</dt><dd class=\"mono\">{iso}</dd>", timings), key
        assert str(run["timings"][key])[:8] not in timings  # no Unix seconds left
    assert re.search(f"started {iso}", html[:html.index("<h2>Images")])  # and in the line under the title


def test_report_plots_carry_the_auc_in_their_legends(cli, run_dir, tmp_path):
    from PIL import Image

    out = copy_run(run_dir, tmp_path)
    cli("evaluate", out, "--no-stability", "--steps", "4", "-q")
    table = {r["method"]: r for r in json.loads((out / "evaluation.json").read_text())["methods"]}
    cli("report", out, "-q")
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "plots/deletion.png" in html
    legend = Image.open(out / "plots" / "deletion.png").info["Legend"]
    for method in ("vanilla", "gradcam", "random"):
        assert f"{method} (AUC {table[method]['deletion_auc']:.3f})" in legend
