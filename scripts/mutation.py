"""Mutation testing of the modules that decide answers, with mutmut (a test extra).

    .venv/bin/python scripts/mutation.py gates            # one module: mutate it, run the tests that cover it
    .venv/bin/python scripts/mutation.py all              # every module below, one after the other
    .venv/bin/python scripts/mutation.py gates --recheck  # the survivors again, with the tests as they are now
    .venv/bin/python scripts/mutation.py --summary        # the table of the last runs (TESTING.md's figures)

Each module runs in its own scratch copy of the project (``.mutation/NAME/``, git-ignored; the tracked files as
they are in the working tree), so the checkout is never mutated and two modules can run side by side. mutmut
(3.x) rewrites each function of the module into variants ("mutants": an operator, a constant, a string, a
call argument changed), runs the module's tests once to learn which test reaches which function, then runs, per
mutant, only the tests that reach it; a mutant is *killed* when one of them fails. The tests given per module
are the ones that cover it; slower end-to-end tests elsewhere may kill more, so the figure is a lower bound.

The score per module is killed / (mutants - equivalent): the equivalent mutants (a change that cannot alter any
result, e.g. a default argument every caller overrides) are listed with their reason in
``scripts/mutation_equivalent.toml``; every other survivor counts against the score. Results are written to
``.mutation/NAME/summary.json`` and the survivors' diffs to ``.mutation/NAME/survivors.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / ".mutation"
EQUIVALENT = ROOT / "scripts" / "mutation_equivalent.toml"
# a mutant is detected when a test fails or when the tests run past mutmut's time limit (a mutant that makes a
# loop endless); every other status (survived, no tests, suspicious, ...) counts against the score
DETECTED = ("killed", "timeout")
DATA = ["sample_images", "sample_photos", "sample_masks", "configs", "benchmarks", "scripts", "docs", "README.md"]

# module -> (files to mutate, the tests that cover them). Keep the test lists to the tests that exercise the
# module's functions directly: every surviving mutant runs all of them.
MODULES: dict[str, tuple[list[str], list[str]]] = {
    "gates": (["salcli/gates.py"], ["tests/test_measures.py"]),
    "maps": (["salcli/maps.py"], ["tests/test_maps.py", "tests/test_properties.py", "tests/test_render.py",
                                  "tests/test_methods.py"]),
    "metrics": (["salcli/metrics.py", "salcli/measures/*"],
                ["tests/test_quantus.py", "tests/test_measures.py", "tests/test_evaluate.py", "tests/test_sanity.py",
                 "-k", "not evaluate_ and not gates_exit and not boxes_csv and not cli"]),
    "evaluation": (["salcli/evaluation.py"], ["tests/test_evaluate.py", "tests/test_quantus.py"]),
    "provenance": (["salcli/provenance.py"],
                   ["tests/test_properties.py", "tests/test_outputs.py", "tests/test_journal.py"]),
    # provenance's figure counts what decides resume and the records (the settings fingerprint and the record's
    # fields), not run_info's dict of facts for run.json (pinned by tests/test_outputs.py and test_traps.py)
    # methods/, one file at a time (each is a run of its own; "methods" runs them all at once)
    "methods.base": (["salcli/methods/base.py", "salcli/methods/registry.py"],
                     ["tests/test_methods.py", "tests/test_registry_cli.py", "tests/test_engine.py"]),
    "methods.gradient": (["salcli/methods/gradient.py", "salcli/methods/smooth.py"],
                         ["tests/test_methods.py", "tests/test_path_methods.py", "tests/test_cam.py"]),
    "methods.integrated": (["salcli/methods/integrated.py", "salcli/methods/baselines.py"],
                           ["tests/test_path_methods.py", "tests/test_methods.py"]),
    "methods.cam": (["salcli/methods/cam.py"], ["tests/test_cam.py"]),
    "methods.perturbation": (["salcli/methods/perturbation.py"], ["tests/test_perturbation.py"]),
    "methods": (["salcli/methods/*"], ["tests/test_methods.py", "tests/test_cam.py", "tests/test_path_methods.py",
                                        "tests/test_perturbation.py"]),
}


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         check=True, capture_output=True).stdout
    return [p for p in out.decode().split("\0") if p and (ROOT / p).is_file()]


def prepare(name: str) -> Path:
    """A fresh scratch copy of the project with mutmut's settings for ``name`` in its pyproject.toml."""
    work = SCRATCH / name
    shutil.rmtree(work, ignore_errors=True)
    for rel in tracked_files():
        target = work / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    write_settings(name, work)
    return work


def write_settings(name: str, work: Path) -> None:
    """The project's pyproject.toml plus mutmut's settings for ``name`` (the files and tests of ``MODULES``)."""
    files, tests = MODULES[name]
    settings = {
        "source_paths": ["salcli"],
        "only_mutate": files,
        "pytest_add_cli_args_test_selection": tests,
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-q", "-x", "-W", "ignore"],
        "also_copy": DATA,
        "process_isolation": "forkserver",  # torch is not fork-safe once its threads are started
        "use_git_change_detection": False,
    }
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    (work / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text() + "\n".join(lines) + "\n")


def mutmut(work: Path, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("mutmut")
    env = {**os.environ, "CI": "", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([str(exe), *args], cwd=work, env=env, capture_output=True, text=True)


def statuses(work: Path) -> dict[str, str]:
    out = mutmut(work, "results", "--all", "true").stdout
    return dict(re.findall(r"^\s+(\S+): (.+)$", out, flags=re.M))


# module -> the functions its score counts (default: all); mutmut still mutates the whole file
SCOPE = {"provenance": r"\.x_(fingerprint|folder_contents|_params|method_settings|record)__mutmut_"}


def equivalent() -> dict[str, str]:
    if not EQUIVALENT.is_file():
        return {}
    doc = tomllib.loads(EQUIVALENT.read_text())
    return {k: v for k, v in doc.get("equivalent", {}).items()}


def summarize(name: str, seconds: float | None = None) -> dict:
    work = SCRATCH / name
    found = statuses(work)
    if name in SCOPE:
        found = {m: s for m, s in found.items() if re.search(SCOPE[name], m)}
    eq = equivalent()
    counts: dict[str, int] = {}
    for status in found.values():
        counts[status] = counts.get(status, 0) + 1
    survivors = [m for m, s in found.items() if s not in DETECTED + ("not checked",)]
    real = [m for m in survivors if m not in eq]
    equiv = [m for m in survivors if m in eq]
    unchecked = counts.get("not checked", 0)
    denominator = len(found) - len(equiv) - unchecked
    summary = {"module": name, "files": MODULES[name][0], "tests": MODULES[name][1], "mutants": len(found),
               "killed": sum(counts.get(s, 0) for s in DETECTED), "equivalent": len(equiv), "survived": len(real),
               "not_checked": unchecked,
               "statuses": counts, "score": round(sum(counts.get(s, 0) for s in DETECTED) / denominator, 4) if denominator else None}
    if seconds is not None:
        summary["seconds"] = round(seconds)
    elif (work / "summary.json").is_file():
        summary["seconds"] = json.loads((work / "summary.json").read_text()).get("seconds")
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    with open(work / "survivors.txt", "w") as fh:
        for m in real:
            fh.write(f"## {m} ({found[m]})\n{diff(work, m)}\n")
    return summary


def diff(work: Path, mutant: str) -> str:
    text = mutmut(work, "show", mutant).stdout
    return "\n".join(line for line in text.splitlines() if line.startswith(("-", "+")) and
                     not line.startswith(("---", "+++")))


def run(name: str, children: int, recheck: bool) -> dict:
    start = time.perf_counter()
    work = SCRATCH / name
    if recheck and (work / "mutants").is_dir():
        # the same settings (a change of the module's test list invalidates every result: run it afresh)
        survivors = [m for m, s in statuses(work).items() if s not in DETECTED + ("not checked",)]
        for rel in tracked_files():  # the tests as they are now (new ones too); the mutated sources stay
            if rel.startswith("tests/"):
                for base in (work, work / "mutants"):
                    (base / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / rel, base / rel)
        if survivors:
            result = mutmut(work, "run", "--max-children", str(children), *survivors)
    else:
        work = prepare(name)
        result = mutmut(work, "run", "--max-children", str(children))
    if "result" in locals() and result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-3000:], file=sys.stderr)
    return summarize(name, time.perf_counter() - start)


def table() -> str:
    rows = ["| module | files | mutants | killed | equivalent | survived | not checked | score | minutes |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in MODULES:
        path = SCRATCH / name / "summary.json"
        if not path.is_file():
            continue
        s = json.loads(path.read_text())
        score = f"{100 * s['score']:.1f}%" if s["score"] is not None else "-"
        minutes = f"{s['seconds'] / 60:.0f}" if s.get("seconds") else "-"
        rows.append(f"| {name} | {', '.join(s['files'])} | {s['mutants']} | {s['killed']} | {s['equivalent']} | "
                    f"{s['survived']} | {s.get('not_checked', 0)} | {score} | {minutes} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help=f"{', '.join(MODULES)} or all")
    parser.add_argument("--children", type=int, default=os.cpu_count() or 2, help="mutants run at once")
    parser.add_argument("--recheck", action="store_true", help="rerun only the survivors of the last run")
    parser.add_argument("--summary", action="store_true", help="print the table of the last runs")
    args = parser.parse_args()
    names = [n for n in MODULES if n != "methods"] if args.modules == ["all"] else args.modules
    for name in names:
        if name not in MODULES:
            parser.error(f"unknown module '{name}'; one of {', '.join(MODULES)} or all")
        s = run(name, args.children, args.recheck)
        print(f"{name}: {s['killed']}/{s['mutants']} killed, {s['equivalent']} equivalent, {s['survived']} "
              f"survived, {s['not_checked']} not checked, score {s['score']}; survivors in "
              f"{SCRATCH / name / 'survivors.txt'}", flush=True)
    if args.summary or not names:
        print(table())


if __name__ == "__main__":
    main()
