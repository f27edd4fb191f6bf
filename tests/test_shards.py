"""Running at scale: hash shard assignment, shard detection from torchrun/Slurm, --files-from, a GPU per process."""

from __future__ import annotations

import io
import json
from hashlib import sha256
from pathlib import Path

import pytest
import torch

from conftest import TINY_OPTS, write_images
from salcli import images
from salcli.config import SHARD_ENV, RunConfig, build_config, build_overrides, parse_shard
from salcli.errors import UsageError
from salcli.images import ImageItem, discover, read_file_list, shard, shard_of
from salcli.resolve import resolve_device

LAUNCH_ENV = (*SHARD_ENV, "SLURM_NTASKS", "LOCAL_RANK", "SLURM_LOCALID")


@pytest.fixture(autouse=True)
def _no_launcher_env(monkeypatch):
    """Detection reads the real environment; keep a CI runner's (or a Slurm job's) variables out."""
    for name in LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)


def _items(keys) -> list[ImageItem]:
    return [ImageItem(Path("/nowhere") / k, k) for k in keys]


def _array(task, low, high, step=None, count=None) -> dict[str, str]:
    env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": str(low), "SLURM_ARRAY_TASK_MAX": str(high)}
    if step is not None:
        env["SLURM_ARRAY_TASK_STEP"] = str(step)
    if count is not None:
        env["SLURM_ARRAY_TASK_COUNT"] = str(count)
    return env


# ---------------------------------------------------------------------------------------------- hash assignment
def test_shard_of_is_sha256_of_the_key_first_8_bytes_big_endian():
    for key in ("img00.png", "a/b/c.jpg", "ünïcode/é.png"):
        want = int.from_bytes(sha256(key.encode("utf-8")).digest()[:8], "big")
        assert [shard_of(key, n) for n in (2, 3, 7, 1000)] == [want % n for n in (2, 3, 7, 1000)]


@pytest.mark.parametrize("count", range(1, 8))
def test_every_image_in_exactly_one_shard_in_order(count):
    items = _items(f"dir{i % 3}/img{i:03d}.png" for i in range(50))
    slices = [shard(items, i, count) for i in range(count)]
    assert sorted(k.key for s in slices for k in s) == sorted(k.key for k in items)
    for s in slices:
        assert s == sorted(s, key=items.index)  # the sorted order is kept inside a slice


def test_adding_a_file_moves_only_that_file():
    keys = [f"img{i:02d}.png" for i in range(31)]
    for count in (2, 3, 5, 16):
        before = {it.key: i for i in range(count) for it in shard(_items(keys), i, count)}
        after = {it.key: i for i in range(count) for it in shard(_items(["aaa-new.png", *keys]), i, count)}
        assert {k: after[k] for k in keys} == before and "aaa-new.png" in after


def test_assignment_follows_the_key_not_the_position_or_path():
    a = [ImageItem(Path("/x/one.png"), "k1.png"), ImageItem(Path("/x/two.png"), "k2.png")]
    b = [ImageItem(Path("/y/elsewhere.png"), "k2.png")]
    for count in (2, 3):
        in_a = {it.key for it in shard(a, shard_of("k2.png", count), count)}
        assert "k2.png" in in_a and shard(b, shard_of("k2.png", count), count) == b


def test_split_is_roughly_even():
    keys = [f"photos/{i // 100:02d}/IMG_{i:05d}.jpg" for i in range(1000)]
    for count in (2, 4, 7):
        sizes = [len(shard(_items(keys), i, count)) for i in range(count)]
        assert sum(sizes) == 1000 and max(sizes) - min(sizes) < 0.25 * 1000 / count, sizes


# ---------------------------------------------------------------------------------------------- detection
def test_given_shard_wins_and_says_so():
    found = parse_shard("1/4", env={"RANK": "0", "WORLD_SIZE": "2", **_array(2, 0, 3)})
    assert (found.index, found.count, found.source) == (1, 4, "given")


def test_no_shard_ignores_every_launcher_and_conflicts_with_a_given_shard():
    env = {"RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "3", **_array(2, 0, 3)}
    assert parse_shard(None, env=env, no_shard=True) is None
    with pytest.raises(UsageError, match="no_shard"):
        parse_shard("0/2", env={}, no_shard=True)


def test_torchrun():
    found = parse_shard(None, env={"RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "0"})
    assert found.pair == (2, 3) and found.source == "torchrun RANK=2 WORLD_SIZE=3"
    assert parse_shard(None, env={"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert parse_shard(None, env={"RANK": "1"}) is None
    with pytest.raises(UsageError, match="RANK=3"):
        parse_shard(None, env={"RANK": "3", "WORLD_SIZE": "3"})


def test_srun_step():
    found = parse_shard(None, env={"SLURM_PROCID": "2", "SLURM_STEP_NUM_TASKS": "3", "SLURM_NTASKS": "3"})
    assert found.pair == (2, 3) and found.source == "srun SLURM_PROCID=2 SLURM_STEP_NUM_TASKS=3"
    # a batch script of an `sbatch -n 4` job runs once: the allocation's SLURM_NTASKS alone does not shard
    assert parse_shard(None, env={"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}) is None
    assert parse_shard(None, env={"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}) is None
    # torchrun launched by srun: RANK already counts every process
    env = {"RANK": "5", "WORLD_SIZE": "8", "SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2"}
    assert parse_shard(None, env=env).pair == (5, 8)


@pytest.mark.parametrize("task,want", [(0, (0, 3)), (2, (1, 3)), (4, (2, 3))])
def test_stepped_array(task, want):  # --array=0-4:2
    found = parse_shard(None, env=_array(task, 0, 4, step=2, count=3))
    assert found.pair == want and found.source == f"Slurm array task {task} of ids 0-4 step 2"


@pytest.mark.parametrize("task,want", [(4, (0, 4)), (6, (2, 4)), (7, (3, 4))])
def test_range_array_not_starting_at_zero(task, want):  # --array=4-7, with and without COUNT/STEP
    assert parse_shard(None, env=_array(task, 4, 7)).pair == want
    assert parse_shard(None, env=_array(task, 4, 7, step=1, count=4)).pair == want


def test_evenly_spaced_id_list_without_a_step():  # --array=1,5,9 where Slurm reports step 1
    assert [parse_shard(None, env=_array(t, 1, 9, step=1, count=3)).pair for t in (1, 5, 9)] == [
        (0, 3), (1, 3), (2, 3)]


def test_uneven_id_list_is_refused_where_it_cannot_be_placed():  # --array=1,2,9
    with pytest.raises(UsageError, match="not evenly spaced") as exc:
        parse_shard(None, env=_array(2, 1, 9, step=1, count=3))
    assert "shard=" in str(exc.value)
    # the tasks that can be placed take distinct slices; the gap is reported by the task above
    assert {parse_shard(None, env=_array(t, 1, 9, step=1, count=3)).pair for t in (1, 9)} == {(0, 3), (2, 3)}


def test_single_index_rerun_is_refused_not_run_on_every_image():  # --array=1 rerunning a task of --array=0-15
    with pytest.raises(UsageError, match="one-task Slurm array") as exc:
        parse_shard(None, env=_array(1, 1, 1, count=1))
    assert "shard=" in str(exc.value) and "no_shard=" in str(exc.value)
    assert parse_shard("1/16", env=_array(1, 1, 1, count=1)).pair == (1, 16)
    assert parse_shard(None, env=_array(1, 1, 1, count=1), no_shard=True) is None


def test_array_missing_bounds_or_bad_values_are_usage_errors():
    with pytest.raises(UsageError, match="MIN/MAX"):
        parse_shard(None, env={"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"})
    with pytest.raises(UsageError, match="SLURM_ARRAY_TASK_ID='x'"):
        parse_shard(None, env={"SLURM_ARRAY_TASK_ID": "x"})


def test_array_task_times_srun_or_torchrun_processes():
    env = {**_array(2, 0, 4, step=2, count=3), "SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2"}
    found = parse_shard(None, env=env)
    assert found.pair == (3, 6) and found.source == (
        "Slurm array task 2 of ids 0-4 step 2, srun SLURM_PROCID=1 SLURM_STEP_NUM_TASKS=2")
    assert parse_shard(None, env={**_array(1, 0, 1), "RANK": "3", "WORLD_SIZE": "4"}).pair == (7, 8)


def test_build_config_records_shard_source_and_only_explain_detects(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    base = {"inputs": [Path("imgs")], "out": Path("out")}
    config = build_config({**base, "shard": None})
    assert config.shard == (1, 2) and config.shard_source == "torchrun RANK=1 WORLD_SIZE=2"
    config = build_config({**base, "shard": None, "no_shard": True})
    assert config.shard is None and config.shard_source is None and config.no_shard
    config = build_config({**base, "shard": "0/3"})
    assert config.shard == (0, 3) and config.shard_source == "given"
    config, given = build_overrides({"model": None})  # evaluate/sanity: no --shard option, no detection
    assert config.shard is None and "shard" not in given


def test_run_json_round_trip_keeps_the_new_fields():
    config = build_config({"inputs": [Path("imgs")], "out": Path("out"), "shard": "1/3",
                           "files_from": "list.txt", "no_shard": None})
    data = json.loads(json.dumps(config.to_json()))
    listed = Path("list.txt").resolve()  # stored absolute: evaluate may run from another folder
    assert data["files_from"] == str(listed) and data["shard_source"] == "given"
    back = RunConfig.from_json(data)
    assert back.files_from == listed and back.shard == (1, 3) and back == config


# ---------------------------------------------------------------------------------------------- --files-from
def test_read_file_list_skips_blanks_and_comments(tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("# inputs\na.png\r\n\n   \n  sub/b.png  \n#c.png\n  # indented comment\n")
    assert read_file_list(lst) == [Path("a.png"), Path("sub/b.png")]


def test_read_file_list_from_stdin(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("x.png\n# no\ny.png\n"))
    assert read_file_list("-") == [Path("x.png"), Path("y.png")]


def test_read_file_list_missing_or_empty_is_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        read_file_list(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(UsageError, match="names no files"):
        read_file_list(tmp_path / "empty.txt")


def test_listed_files_get_the_keys_command_line_files_get(tmp_path, monkeypatch):
    a = write_images(tmp_path / "data" / "a", 2)
    b = write_images(tmp_path / "data" / "b" / "deep", 1)
    monkeypatch.chdir(tmp_path)
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(str(p.relative_to(tmp_path)) for p in [*b, *a]) + "\n")
    listed = discover(read_file_list(lst), listed=True)
    direct = discover([*a, *b])
    assert [(i.key, i.path.resolve()) for i in listed] == [(i.key, i.path.resolve()) for i in direct]
    assert [i.key for i in listed] == ["a/img00.png", "a/img01.png", "b/deep/img00.png"]


def test_a_missing_listed_file_becomes_an_error_record(tmp_path):
    from salcli.config import Preprocess

    good = write_images(tmp_path / "imgs", 1)[0]
    notes = tmp_path / "imgs" / "notes.txt"
    notes.write_text("not an image")
    items = discover([good, tmp_path / "imgs" / "gone.png", notes], listed=True)
    assert [i.key for i in items] == ["gone.png", "img00.png", "notes.txt"]
    records = images.ImageDataset(items, Preprocess(resize=16, crop=16)).__getitem__
    assert records(0)["error"] == "file not found" and "pixels" in records(1) and "error" in records(2)
    with pytest.raises(UsageError, match="input not found"):  # on the command line it is still a usage error
        discover([good, tmp_path / "imgs" / "gone.png"])


def test_a_listed_folder_is_walked(tmp_path):
    write_images(tmp_path / "imgs" / "sub", 2)
    assert [i.key for i in discover([tmp_path / "imgs"], listed=True)] == ["sub/img00.png", "sub/img01.png"]


# ---------------------------------------------------------------------------------------------- GPU per process
@pytest.fixture
def four_gpus(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    return chosen


@pytest.mark.parametrize("name", ["auto", "cuda"])
@pytest.mark.parametrize("env,want", [
    ({"LOCAL_RANK": "1"}, "cuda:1"),
    ({"LOCAL_RANK": "6"}, "cuda:2"),  # more processes than GPUs: wrap around
    ({"SLURM_LOCALID": "3"}, "cuda:3"),
    ({"LOCAL_RANK": "2", "SLURM_LOCALID": "0"}, "cuda:2"),  # torchrun under srun: the worker's own rank
    ({}, "cuda"),
])
def test_local_rank_picks_its_own_gpu(four_gpus, name, env, want):
    device = resolve_device(name, env=env)
    assert str(device) == want
    assert four_gpus == ([device] if ":" in want else [])


def test_explicit_gpu_and_a_single_visible_gpu_are_kept(four_gpus, monkeypatch):
    assert str(resolve_device("cuda:3", env={"LOCAL_RANK": "1"})) == "cuda:3"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # Slurm bound one GPU to this task
    assert str(resolve_device("auto", env={"LOCAL_RANK": "1"})) == "cuda"
    assert four_gpus == []


def test_local_rank_reads_the_environment_by_default(four_gpus, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert str(resolve_device("auto")) == "cuda:3"


# ---------------------------------------------------------------------------------------------- the CLI
def _images_in(out: Path) -> set[str]:
    """Every image an explain run recorded in OUT (manifest.jsonl, or a sharded run's journals under OUT)."""
    found = set()
    for path in out.rglob("*.jsonl"):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if "image" in rec:
                assert rec["status"] == "ok", rec
                found.add(rec["image"])
    return found


def test_stepped_slurm_array_covers_every_image_once(cli, tmp_path, monkeypatch):  # --array=0-4:2
    write_images(tmp_path / "imgs", 9)
    seen = []
    for task in (0, 2, 4):
        for name, value in _array(task, 0, 4, step=2, count=3).items():
            monkeypatch.setenv(name, value)
        out = tmp_path / f"out{task}"
        summary = json.loads(cli("explain", tmp_path / "imgs", "-o", out, *TINY_OPTS, "--json").stdout)
        seen.append(_images_in(out))
        assert summary["images"] == len(seen[-1]) > 0
    assert sum(len(s) for s in seen) == 9
    assert set().union(*seen) == {f"img{i:02d}.png" for i in range(9)}


def test_torchrun_ranks_cover_every_image_once(cli, images_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        cli("explain", images_dir, "-o", tmp_path / f"rank{rank}", *TINY_OPTS, "--device", "cpu")
        seen.append(_images_in(tmp_path / f"rank{rank}"))
    assert sum(len(s) for s in seen) == 6 and set().union(*seen) == {f"img{i:02d}.png" for i in range(6)}


def test_no_shard_ignores_leaked_torchrun_variables(cli, images_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    summary = json.loads(cli("explain", images_dir, "-o", tmp_path / "o", *TINY_OPTS, "--no-shard", "--json").stdout)
    assert summary["images"] == 6 and (tmp_path / "o" / "manifest.jsonl").exists()


def test_single_index_rerun_is_a_usage_error_naming_the_flags(cli, images_dir, tmp_path, monkeypatch):
    for name, value in _array(1, 1, 1, count=1).items():
        monkeypatch.setenv(name, value)
    result = cli("explain", images_dir, "-o", tmp_path / "o", *TINY_OPTS, expect=2)
    assert "--shard" in result.stderr and "--no-shard" in result.stderr
    assert not (tmp_path / "o").exists()
    cli("explain", images_dir, "-o", tmp_path / "o", *TINY_OPTS, "--shard", "1/16")
