"""Runs that survive being killed: the journal is durable after every batch, SIGTERM ends a run like Ctrl-C, a
replaced file is redone, shards share no file and need no lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, TINY_OPTS, manifest, write_images

from salcli import outputs
from salcli.outputs import journal

SLOW = ["--model", f"{FIXTURES / 'tiny.py'}:build_slow", *TINY_OPTS[2:], "--batch-size", "4", "--device", "cpu"]


def salcli(*args) -> list[str]:
    return [sys.executable, "-c", "from salcli.cli import run; run()", *map(str, args)]


def journaled(out: Path) -> int:
    return sum(1 for p in journal.part_files(out) for _ in journal.read_lines(p))


def kill_after(out: Path, images: Path, records: int, sig: int) -> int:
    """Start a run, wait until ``records`` are journaled, send ``sig``; the exit code."""
    proc = subprocess.Popen(salcli("explain", images, "-o", out, *SLOW, "-q"))
    deadline = time.time() + 60
    while journaled(out) < records and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(sig)
    return proc.wait(timeout=60)


def outcome(out: Path) -> dict:
    """What a finished run leaves, whatever path it took: records as a set, maps by key."""
    recs = {(r["image"], r["method"], r["pred"], r["target"], r["npy"], r["status"] != "error") for r in manifest(out)}
    maps = {r["image"]: np.load(out / r["npy"]) for r in manifest(out)}
    return {"records": recs, "maps": maps}


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("many") / "imgs"
    write_images(folder, n=40, size=16)
    return folder


@pytest.fixture(scope="module")
def uninterrupted(many, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("whole") / "out"
    subprocess.run(salcli("explain", many, "-o", out, *SLOW, "-q"), check=True)
    return outcome(out)


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 143)])
def test_a_killed_run_resumes_recomputing_at_most_one_batch(many, tmp_path, uninterrupted, sig, code):
    out = tmp_path / "out"
    assert kill_after(out, many, 8, sig) == code
    done = len(outputs.read_manifest(out))  # the journal (kill -9), or the manifest it was merged into (SIGTERM)
    assert 8 <= done < 40
    if sig == signal.SIGTERM:  # drained, journaled, and the run file says it did not finish
        [part] = journal.read_run_parts(out)
        assert part["complete"] is False and part["interrupted"] is True
    rerun = subprocess.run(salcli("explain", many, "-o", out, *SLOW, "-q", "--json"), check=True,
                           capture_output=True, text=True)
    counts = json.loads(rerun.stdout)["counts"]
    assert counts["ok"] <= 40 - done + 4 and counts["ok"] + counts["skipped"] == 40  # at most one batch again
    final = outcome(out)
    assert final["records"] == uninterrupted["records"]
    for key, m in uninterrupted["maps"].items():
        np.testing.assert_allclose(final["maps"][key], m, rtol=1e-5, atol=1e-7)


def test_a_line_cut_short_by_a_kill_is_ignored_and_the_next_append_stays_whole(tmp_path):
    part = journal.manifest_part(tmp_path, None)
    j = journal.Journal(part)
    j.append([json.dumps({"image": "a", "method": "m", "status": "ok"})])
    j.close()
    with open(part, "a") as fh:
        fh.write('{"image": "b", "method": "m", "sta')  # the kill
    j = journal.Journal(part)
    j.append([json.dumps({"image": "c", "method": "m", "status": "ok"})])
    j.close()
    assert [k for k, _ in journal.read_lines(part)] == [("a", "m"), ("c", "m")]


def test_a_file_replaced_under_the_same_name_is_redone(cli, images_dir, tmp_path):
    out = tmp_path / "out"
    cli("explain", images_dir, "-o", out, *TINY_OPTS, "-q")
    before = np.load(out / "vanilla" / "img02.png.npy")
    write_images(tmp_path / "other", n=3, seed=7)
    os.replace(tmp_path / "other" / "img02.png", images_dir / "img02.png")  # same name, other picture
    summary = json.loads(cli("explain", images_dir, "-o", out, *TINY_OPTS, "--json").stdout)
    assert summary["counts"] == {"ok": 1, "error": 0, "skipped": 5}
    assert not np.allclose(np.load(out / "vanilla" / "img02.png.npy"), before)


def test_no_lock_is_needed_for_correctness(cli, images_dir, tmp_path, monkeypatch):
    """flock raises ENOSYS on Lustre mounted noflock: shards, merge and a single run still give every record."""
    import fcntl

    def broken(*args, **kwargs):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", broken)
    out = tmp_path / "out"
    for i in range(3):
        cli("explain", images_dir, "-o", out, *TINY_OPTS, "--shard", f"{i}/3", "-q")
    cli("merge", out, "-q")
    assert sorted(r["image"] for r in manifest(out)) == [f"img{i:02d}.png" for i in range(6)]
    cli("explain", images_dir, "-o", tmp_path / "single", *TINY_OPTS, "-q")
    assert len(manifest(tmp_path / "single")) == 6


def test_verify_reports_a_file_added_after_the_run_and_merge_refuses_mixed_settings(cli, images_dir, tmp_path):
    out = tmp_path / "out"
    cli("explain", images_dir, "-o", out, *TINY_OPTS, "--shard", "0/2", "-q")
    cli("explain", images_dir, "-o", out, *TINY_OPTS, "--shard", "1/2", "-q")
    cli("verify", out, "-q")
    write_images(tmp_path / "late", n=7)
    os.replace(tmp_path / "late" / "img06.png", images_dir / "img06.png")
    assert "missing: 1 (image, method): img06.png (vanilla)" in cli("verify", out, expect=1).stderr
    cli("explain", images_dir, "-o", out, *TINY_OPTS, "--shard", "1/2", "--seed", "9", "-q")
    assert "different settings" in cli("merge", out, expect=2).stderr


def test_merge_streams_records_in_bounded_memory(tmp_path):
    """The merge holds at most one spill bucket of lines, whatever the number of records (100,000 here, whose
    lines alone take over 10 MB in Python; BENCHMARKS.md measures 1,000,000)."""
    import tracemalloc

    parts = tmp_path / "parts"
    parts.mkdir()
    line = '{{"image": "img{:07d}.png", "method": "vanilla", "status": "ok", "settings": "abc"}}\n'
    for shard in range(4):
        with open(parts / f"manifest-{shard:05d}-of-00004.jsonl", "w") as fh:
            fh.writelines(line.format(i) for i in range(shard, 100_000, 4))
    tracemalloc.start()
    merged = journal.merged_lines(journal.part_files(tmp_path), bucket_bytes=1 << 20)
    first = next(merged)
    n = 1 + sum(1 for _ in merged)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == 100_000 and '"img0000000.png"' in first and peak < 4 << 20


def test_files_from_stdin_freezes_the_inputs_and_verify_rereads_the_list(images_dir, tmp_path):
    from typer.testing import CliRunner

    from salcli.cli import app

    listed = sorted(str(p) for p in images_dir.iterdir())[:4] + [str(images_dir / "gone.png")]
    (tmp_path / "list.txt").write_text("# inputs\n" + "\n".join(listed) + "\n\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["explain", "--files-from", "-", "-o", str(out), *TINY_OPTS, "--json"],
                                input="\n".join(listed) + "\n")
    assert result.exit_code == 1, result.stderr  # the missing file is an error record, the others are written
    counts = json.loads(result.stdout)["counts"]
    assert counts == {"ok": 4, "error": 1, "skipped": 0}
    assert "give the list again" in CliRunner().invoke(app, ["verify", str(out)]).stderr  # stdin is gone
    problems = CliRunner().invoke(app, ["verify", str(out), "--files-from", str(tmp_path / "list.txt")])
    assert problems.exit_code == 1 and "failed: 1 (image, method): gone.png (vanilla)" in problems.stderr
    both = CliRunner().invoke(app, ["explain", str(images_dir), "--files-from", "-", "-o", str(tmp_path / "b"),
                                    *TINY_OPTS], input=listed[0])
    assert both.exit_code == 2 and "not both" in both.stderr


def test_evaluate_and_report_read_the_journals_before_a_merge(cli, images_dir, tmp_path):
    out = tmp_path / "out"
    for i in range(2):
        cli("explain", images_dir, "-o", out, *TINY_OPTS, "--shard", f"{i}/2", "-q")
    assert not (out / "run.json").exists()
    doc = json.loads(cli("evaluate", out, "--steps", 4, "--no-stability", "--json").stdout)
    assert {r["method"]: r["images"] for r in doc["methods"]} == {"vanilla": 6, "random": 6}
    cli("report", out, "-q")
    assert (out / "report.html").read_text().count('class="ov"') == 6


def test_nightly_reruns_of_one_folder_do_not_grow_the_journal(cli, images_dir, tmp_path):
    out = tmp_path / "out"
    for _ in range(3):
        cli("explain", images_dir, "-o", out, *TINY_OPTS, "-q")
    assert journal.part_files(out) == []  # merged into manifest.jsonl at the end of each single-process run
    assert len(manifest(out)) == 6 and all(r["status"] == "skipped" for r in manifest(out))
