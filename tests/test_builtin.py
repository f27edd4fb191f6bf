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


def test_main_readme_command_runs_on_all_samples(cli, tmp_path):
    out = tmp_path / "out"
    result = cli("explain", SAMPLES, "-o", out)
    assert "65 images x 1 method: 65 maps written" in result.stderr  # 30 garments, their 30 masks, 5 photos
