"""Shared fixtures: a tiny seeded CNN, small image folders written on the fly, a CLI runner."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SAMPLES = ROOT / "sample_images"  # the builtin model's images only: what the README's main job explains
PHOTOS = ROOT / "sample_photos"
TINY = f"{FIXTURES / 'tiny.py'}:build"
# Options that point the CLI at the tiny model: 16 px RGB in [0, 1].
TINY_OPTS = ["--model", TINY, "--resize", "16", "--crop", "16", "--mean", "0.5", "--std", "0.25"]

sys.path.insert(0, str(FIXTURES))
torch.set_num_threads(2)


@pytest.fixture
def tiny_model():
    from tiny import build

    return build()


def write_images(folder: Path, n: int = 6, size: int = 20, seed: int = 0, ext: str = "png") -> list[Path]:
    """n random RGB images named img00.png ... under folder."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img{i:02d}.{ext}"
        Image.fromarray(rng.integers(0, 256, (size, size + 3, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


@pytest.fixture
def images_dir(tmp_path) -> Path:
    folder = tmp_path / "imgs"
    write_images(folder)
    return folder


class Cli:
    """Runs `salcli ...` in-process through Typer's CliRunner."""

    def __init__(self) -> None:
        from salcli.cli import app

        self.app, self.runner = app, CliRunner()

    def __call__(self, *args, expect: int | None = 0):
        result = self.runner.invoke(self.app, [str(a) for a in args], catch_exceptions=False)
        if expect is not None:
            assert result.exit_code == expect, (
                f"exit {result.exit_code} != {expect}\nstdout: {result.stdout}\nstderr: {result.stderr}")
        return result


@pytest.fixture
def cli() -> Cli:
    return Cli()


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
