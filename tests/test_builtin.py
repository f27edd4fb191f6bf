"""The builtin model: loads strictly from the shipped safetensors and classifies the samples."""

from __future__ import annotations

from conftest import SAMPLES, manifest


def test_builtin_model_classifies_the_samples(cli, tmp_path):
    out = tmp_path / "o"
    cli("explain", SAMPLES / "fashion-mnist", "-o", out)
    records = manifest(out)
    assert len(records) == 30
    # folder name = true class ("T-shirt/top" is written T-shirt-top)
    correct = sum(r["pred_label"].replace("/", "-") == r["image"].split("/")[0] for r in records)
    assert correct / len(records) >= 0.9, f"{correct}/{len(records)}"


def test_main_readme_command_explains_what_a_person_can_judge(cli, tmp_path):
    """The README's main job: only the builtin model's own kind of image (no masks, no photos of cats taken for
    garments), each under its true class, so the predictions and maps can be judged at a glance."""
    out = tmp_path / "out"
    result = cli("explain", SAMPLES, "-o", out)
    assert "30 images x 1 method: 30 maps written" in result.stderr
    records = manifest(out)
    assert {r["image"].split("/")[0] for r in records} == {"fashion-mnist"}
    correct = sum(r["pred_label"].replace("/", "-") == r["image"].split("/")[1] for r in records)
    assert correct >= 27, f"{correct}/30"
