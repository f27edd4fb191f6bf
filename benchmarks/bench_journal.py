"""Issue 11's figures: the merge of 1,000,000 journal records (time, peak RSS) and the per-batch journal overhead.

    .venv/bin/python benchmarks/bench_journal.py            # prints a markdown table

Merge: 16 part files of 62,500 synthetic manifest lines each, merged by ``outputs.write_merged_manifest`` in a
fresh process (its peak RSS from ``getrusage``). Journal overhead: ``salcli explain`` (builtin model, vanilla,
960 copies of the Fashion-MNIST samples, 15 batches of 64) with the journal's per-batch append + fsync against
the same run with the per-batch checkpoint turned off (the journal is then written once, at the end), five
interleaved rounds, the median ratio.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MERGE = """
import resource, sys, time
from pathlib import Path
from salcli import outputs
out = Path(sys.argv[1])
t0 = time.perf_counter()
n = outputs.write_merged_manifest(out)
seconds = time.perf_counter() - t0
print(n, seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""

EXPLAIN = """
import sys, time
from salcli import outputs
from salcli.config import build_config
from salcli.pipeline import run
if sys.argv[3] == "off":  # the journal's lines are kept in memory and written once, at close, without fsync
    from salcli.outputs import journal
    kept = {}
    journal.Journal.append = lambda self, lines: kept.setdefault(id(self), []).extend(lines)
    close = journal.Journal.close
    def close_once(self):
        self._fh.writelines(line + "\\n" for line in kept.pop(id(self), []))
        close(self)
    journal.Journal.close = close_once
t0 = time.perf_counter()
run(build_config({"inputs": [sys.argv[1]], "out": sys.argv[2], "quiet": True, "device": "cpu"}))
print(time.perf_counter() - t0)
"""


def merge_figures(tmp: Path, records: int = 1_000_000, parts: int = 16) -> dict:
    folder = tmp / "merge" / "parts"
    folder.mkdir(parents=True)
    template = ('{{"image": "class{:03d}/img{:07d}.png", "method": "vanilla", "status": "ok", "error": null, '
                '"npy": "vanilla/class{:03d}/img{:07d}.png.npy", "overlay": "vanilla/class{:03d}/img{:07d}.png.png", '
                '"pred": 3, "pred_label": "Dress", "prob": 0.912345, "target": 3, "target_label": "Dress", '
                '"score": 7.123456, "settings": "0123456789abcdef", "schema_version": 1, "size": 1234, '
                '"mtime_ns": 1700000000000000000}}\n')
    for p in range(parts):
        with open(folder / f"manifest-{p:05d}-of-{parts:05d}.jsonl", "w") as fh:
            fh.writelines(template.format(*(i % 1000, i) * 3) for i in range(p, records, parts))
    size = sum(f.stat().st_size for f in folder.iterdir())
    out = subprocess.run([sys.executable, "-c", MERGE, str(folder.parent)], capture_output=True, text=True,
                         check=True).stdout.split()
    return {"records": int(out[0]), "seconds": float(out[1]), "peak_rss_mb": float(out[2]), "input_mb": size / 2**20}


def journal_overhead(tmp: Path, rounds: int = 5) -> dict:
    images = tmp / "imgs"
    samples = sorted((ROOT / "sample_images" / "fashion-mnist").rglob("*.png"))
    for i in range(960):
        dest = images / f"c{i % 10}" / f"img{i:04d}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(samples[i % len(samples)], dest)
    times: dict[str, list[float]] = {"on": [], "off": []}
    for r in range(rounds):
        for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
            out = tmp / f"out-{mode}-{r}"
            t = subprocess.run([sys.executable, "-c", EXPLAIN, str(images), str(out), mode], capture_output=True,
                               text=True, check=True).stdout
            times[mode].append(float(t))
    ratios = [a / b for a, b in zip(times["on"], times["off"])]
    return {"on": times["on"], "off": times["off"], "median_ratio": statistics.median(ratios)}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        merge = merge_figures(Path(tmp))
        overhead = journal_overhead(Path(tmp))
    print("| measure | figure |\n|---|---|")
    print(f"| merge of {merge['records']:,} records ({merge['input_mb']:.0f} MB of journals in 16 parts) | "
          f"{merge['seconds']:.1f} s, peak RSS {merge['peak_rss_mb']:.0f} MB |")
    print(f"| explain with the per-batch journal (append + fsync) against without, 960 images, 15 batches | "
          f"{overhead['median_ratio']:.3f} (median of 5; {statistics.median(overhead['on']):.2f} s against "
          f"{statistics.median(overhead['off']):.2f} s) |")
    print(json.dumps({"merge": merge, "journal": overhead}), file=sys.stderr)


if __name__ == "__main__":
    main()
