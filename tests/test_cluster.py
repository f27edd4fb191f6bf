"""The README's "Running on a cluster" recipes, each run for real: torchrun on the CPU with bad files in one rank's
slice, a Slurm array (simulated with its environment variables) with a stepped array and a single-index rerun,
and an xargs loop; each followed by `salcli merge` and `salcli verify`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_OPTS, manifest, write_images

from salcli import images

SALCLI = str(Path(sys.executable).with_name("salcli"))
CLEAN = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}


def run(*args, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*map(str, args)], env={**CLEAN, **(env or {})}, capture_output=True, text=True,
                          check=check, timeout=300)


@pytest.fixture
def folder(tmp_path) -> Path:
    imgs = tmp_path / "imgs"
    write_images(imgs, n=10, size=16)
    return imgs


@pytest.mark.slow
def test_torchrun_with_bad_files_in_one_ranks_slice_completes_every_good_image(folder, tmp_path):
    bad = [k for k in (f"bad{i}.png" for i in range(40)) if images.shard_of(k, 2) == 0][:2]
    for name in bad:
        (folder / name).write_bytes(b"not a png")  # both in rank 0's slice
    out = tmp_path / "out"
    result = run(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--no-python",
                 SALCLI, "explain", folder, "-o", out, *TINY_OPTS, "--device", "cpu", "--max-failures", "2", "-q", check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    run(SALCLI, "merge", out, "-q")
    recs = {r["image"]: r["status"] for r in manifest(out)}
    assert sorted(k for k, s in recs.items() if s == "ok") == [f"img{i:02d}.png" for i in range(10)]
    assert sorted(k for k, s in recs.items() if s == "error") == sorted(bad)
    check = run(SALCLI, "verify", out, check=False)
    assert check.returncode == 1 and "failed: 2 (image, method)" in check.stderr


@pytest.mark.slow
def test_a_slurm_stepped_array_and_a_single_index_rerun_cover_every_image_once(folder, tmp_path):
    out = tmp_path / "out"
    array = {"SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "4", "SLURM_ARRAY_TASK_STEP": "2",
             "SLURM_ARRAY_TASK_COUNT": "3"}
    for task in (0, 4):  # task 2 "was preempted": it never ran
        run(SALCLI, "explain", folder, "-o", out, *TINY_OPTS, "-q", env={**array, "SLURM_ARRAY_TASK_ID": str(task)})
    missing = run(SALCLI, "verify", out, check=False)
    assert missing.returncode == 1 and "missing" in missing.stderr
    rerun = {"SLURM_ARRAY_TASK_MIN": "2", "SLURM_ARRAY_TASK_MAX": "2", "SLURM_ARRAY_TASK_COUNT": "1",
             "SLURM_ARRAY_TASK_ID": "2"}  # sbatch --array=2: the environment cannot tell its slice
    refused = run(SALCLI, "explain", folder, "-o", out, *TINY_OPTS, env=rerun, check=False)
    assert refused.returncode == 2 and "--shard" in refused.stderr
    run(SALCLI, "explain", folder, "-o", out, *TINY_OPTS, "--shard", "1/3", "-q", env=rerun)
    run(SALCLI, "merge", out, "-q")
    run(SALCLI, "verify", out)
    assert sorted(r["image"] for r in manifest(out)) == [f"img{i:02d}.png" for i in range(10)]
    doc = json.loads((out / "run.json").read_text())
    assert sorted(doc["shards"]) == ["00000-of-00003", "00001-of-00003", "00002-of-00003"]


@pytest.mark.slow
def test_an_xargs_loop_of_shards_then_merge_and_verify(folder, tmp_path):
    out = tmp_path / "out"
    loop = (f"printf '%s\\n' 0/3 1/3 2/3 | xargs -P 3 -I{{}} {SALCLI} explain {folder} -o {out} "
            f"{' '.join(TINY_OPTS)} --shard {{}} -q")
    subprocess.run(loop, shell=True, check=True, env=CLEAN, timeout=300)
    run(SALCLI, "merge", out, "-q")
    run(SALCLI, "verify", out)
    assert len(manifest(out)) == 10


def test_max_failures_moves_the_bar(cli, folder, tmp_path):
    (folder / "broken.png").write_bytes(b"")
    args = ["explain", folder, *TINY_OPTS, "--json"]
    assert json.loads(cli(*args, "-o", tmp_path / "a", expect=1).stdout)["exit_code"] == 1
    cli(*args, "-o", tmp_path / "b", "--max-failures", "1")
    cli(*args, "-o", tmp_path / "c", "--max-failures", "10%")  # 1 of 11 records is 9%
    cli(*args, "-o", tmp_path / "d", "--max-failures", "5%", expect=1)
    assert "--max-failures takes" in cli(*args, "-o", tmp_path / "e", "--max-failures", "x", expect=2).stderr


def test_root_gives_a_file_the_same_key_whatever_shares_the_command_line(cli, tmp_path):
    for sub in ("a", "b/c"):
        write_images(tmp_path / "data" / sub, n=2, size=16)
    one, two = tmp_path / "data" / "a" / "img00.png", tmp_path / "data" / "b" / "c" / "img01.png"

    def keys(*inputs, extra=()):
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        cli("explain", *inputs, "-o", out, *TINY_OPTS, *extra, "-q")
        return sorted(r["image"] for r in manifest(out))

    assert keys(one) == ["img00.png"] and keys(one, two) == ["a/img00.png", "b/c/img01.png"]  # without --root
    root = ["--root", tmp_path / "data"]
    assert keys(one, extra=root) == ["a/img00.png"]  # an xargs batch holding one file: the same key as below
    assert keys(one, two, extra=root) == ["a/img00.png", "b/c/img01.png"]
    assert "not inside --root" in cli("explain", one, "-o", tmp_path / "x", *TINY_OPTS, "--root",
                                      tmp_path / "data" / "b", expect=2).stderr
