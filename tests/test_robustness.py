"""Issue 14: every value that reaches a run is checked (types, ranges, finiteness, sizes, kinds of path), and no
traceback ever reaches a user: each hostile case of the issue is a usage error that names the option and writes
nothing, and an unexpected error is one line and exit 70."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import FIXTURES, TINY_OPTS

BAD_OPTIONS = [
    (["--mean", "nan"], "--mean"),
    (["--mean", "1e309"], "--mean"),  # overflows to inf: run.json could not be written
    (["--std", "inf"], "--std"),
    (["--std", "0"], "--std"),
    (["--std", "0.5,-0.2,0.5"], "--std"),
    (["--resize", "40000"], "--resize"),  # allocated until killed before
    (["--crop", "0"], "--crop"),
    (["--seed", str(2**64)], "--seed"),
    (["--alpha", "nan"], "--alpha"),
    (["--workers", "-1"], "--workers"),
    (["--batch-size", "100000000"], "--batch-size"),
    (["-m", "smoothgrad", "-p", "smoothgrad.noise=nan"], "smoothgrad.noise"),
    (["-m", "integrated-gradients", "-p", "integrated-gradients.tolerance=nan"], "integrated-gradients.tolerance"),
    (["-m", "lime", "-p", "lime.kernel_width=inf"], "lime.kernel_width"),
    (["-m", "gradient-shap", "-p", "gradient-shap.stdev=nan"], "gradient-shap.stdev"),
    (["-m", "smoothgrad", "-p", "smoothgrad.samples=true"], "smoothgrad.samples"),
    (["-m", "smoothgrad", "-p", "smoothgrad.nosie=0.1"], "smoothgrad.nosie"),  # unknown key
    (["-m", "smoothgrad", "-p", "smoothgrad.samples"], "-p"),  # no value
    (["-m", "rise", "-p", "rise.masks=100000000000"], "rise.masks"),
    (["-m", "rise", "-p", "rise.cells=5000"], "rise"),  # would not fit in memory: refused with the estimate
    (["-m", "lime", "-p", "lime.samples=9000000", "-p", "lime.grid=16"], "lime"),
]


@pytest.mark.parametrize("extra, named", BAD_OPTIONS, ids=[" ".join(e) for e, _ in BAD_OPTIONS])
def test_bad_values_are_usage_errors_that_name_the_option(cli, images_dir, tmp_path, extra, named):
    out = tmp_path / "o"
    result = cli("explain", images_dir, "-o", out, *TINY_OPTS, *extra, expect=2)
    assert named in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not out.exists()  # nothing written


def test_memory_refusal_gives_the_estimate(cli, images_dir, tmp_path):
    err = cli("explain", images_dir, "-o", tmp_path / "o", *TINY_OPTS, "-m", "rise", "-p", "rise.cells=5000",
              expect=2).stderr
    assert "GiB" in err and "--batch-size" in err


def test_paths_of_the_wrong_kind(cli, images_dir, tmp_path):
    (tmp_path / "afile").write_text("x")
    err = cli("explain", images_dir, "-o", tmp_path / "afile", *TINY_OPTS, expect=2).stderr
    assert "a file, not a folder" in err
    err = cli("explain", images_dir, "-o", tmp_path / "o", *TINY_OPTS, "--labels", tmp_path, expect=2).stderr
    assert "not a regular file" in err
    fifo = tmp_path / "labels.fifo"
    os.mkfifo(fifo)  # reading it would block forever
    err = cli("explain", images_dir, "-o", tmp_path / "o", *TINY_OPTS, "--labels", fifo, expect=2).stderr
    assert "not a regular file" in err
    for preset in (tmp_path, FIXTURES / "tiny.py"):  # a folder, then a file that is not TOML
        err = cli("explain", images_dir, "-o", tmp_path / "o", "--config", preset, expect=2).stderr
        assert "Traceback" not in err
    binary = tmp_path / "preset.toml"
    binary.write_bytes(bytes(range(256)))
    assert "not valid TOML" in cli("explain", images_dir, "-o", tmp_path / "o", "--config", binary, expect=2).stderr


def salcli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "salcli", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_an_unexpected_error_is_one_line_and_exit_70(images_dir, tmp_path):
    spec = f"{FIXTURES / 'broken.py'}:build_no_eval"
    done = salcli("explain", images_dir, "-o", tmp_path / "o", "--model", spec, *TINY_OPTS[2:])
    assert done.returncode == 70
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("salcli: internal error: RuntimeError: this model cannot be put in eval mode")
    saved = done.stderr.split("the traceback is in ")[1].split(";")[0]
    assert "Traceback" in open(saved).read()
    os.unlink(saved)
    for debug in (["--debug"], []):
        env = None if debug else {"SALCLI_DEBUG": "1"}
        shown = salcli(*debug, "explain", images_dir, "-o", tmp_path / "o", "--model", spec, *TINY_OPTS[2:],
                       env=env)
        assert shown.returncode == 1 and "Traceback" in shown.stderr and "eval mode" in shown.stderr


def test_a_non_utf8_name_typed_on_the_command_line(images_dir, tmp_path):
    """run.json holds the command line: a file name that is not UTF-8 is written \\xNN there, as in the keys."""
    import json
    import shutil

    name = os.fsdecode(b"bad\xffname.png")
    shutil.copy(images_dir / "img00.png", tmp_path / name)
    done = salcli("explain", tmp_path / name, "-o", tmp_path / "o", *TINY_OPTS)
    assert done.returncode == 0, done.stderr
    run = json.loads((tmp_path / "o" / "run.json").read_text(encoding="utf-8"))
    assert any("bad\\xffname.png" in a for a in run["argv"])


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc, where no folder can be created")
def test_an_output_folder_that_cannot_be_created(cli, images_dir):
    err = cli("explain", images_dir, "-o", "/proc/salcli-out", *TINY_OPTS, expect=2).stderr
    assert "cannot be created" in err
