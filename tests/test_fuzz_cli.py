"""Fuzzing the command line and presets (issue 14, item 4): whatever values ``salcli explain`` gets, from options
or from a ``--config`` preset, the run ends in exit 0, 1, 2 or 3, never in a traceback, never hangs, and a usage
error (exit 2) writes nothing under OUT.

Property-based (hypothesis) over the numbers and words of every option that takes one (integers huge and
negative, floats with nan, inf, -0.0 and 1e309, Unicode digits, garbage, empty), method names and ``-p
METHOD.KEY=VALUE`` with the registry's real methods and keys, random TOML documents (valid syntax; real keys,
misspelt ones, ``[preprocess]`` and ``[methods.NAME]`` tables with values of every TOML type) and random bytes
as a preset. Runs are in-process (``catch_exceptions=False``: an exception fails the example), on the tiny
16 px model of the fixtures, always on the CPU; values that are valid and merely expensive (a 4096 px crop, a
million samples) are not drawn, so each example takes well under a second.

Deterministic (``derandomize``, no example database), a few hundred examples in all by default; set
SALCLI_FUZZ_EXAMPLES=N for N examples per test, drawn afresh each run (e.g. 2000 for a long local run).
The cases the fuzzer found are plain tests at the end (``test_found_by_fuzzing_*``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import math
import os
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from conftest import TINY, TINY_OPTS, Cli, write_images
from limits import time_limit  # a SIGALRM limit that raises a BaseException: a hang fails the test
from salcli import methods as registry
from salcli.methods.registry import MAX_COUNT, param_fields
from salcli.schema import KEYS, MAX_BATCH, MAX_SIDE

EXAMPLES = int(os.environ.get("SALCLI_FUZZ_EXAMPLES") or 0)
PER_EXAMPLE_S = 30  # a hang fails the example; the slowest examples take well under a second on an idle machine


def fuzz(default: int):
    """Hypothesis settings: ``default`` examples, deterministic and without a database in CI; with
    SALCLI_FUZZ_EXAMPLES=N, N examples drawn at random (a failure prints its reproduction blob). The time limit
    is ours (``time_limit``): hypothesis' deadline failed examples that took 9 s once and 0.1 s when rerun on a
    loaded machine."""
    return settings(max_examples=EXAMPLES or default, derandomize=not EXAMPLES, database=None,
                    deadline=None, print_blob=bool(EXAMPLES),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example, HealthCheck.function_scoped_fixture])



THINGS = ("empty", "binary", "labels4", "labels3", "list", "preset.toml", "weights.safetensors", "dir", "fifo",
          "broken", "loop")


class Space:
    """Two small images (``@images`` in an argument), files of every kind for the path options (``@things/NAME``:
    empty, binary, text, a FIFO, a broken symbolic link, one to itself, a folder, ...), a fresh OUT per example
    unless one is given, and the CLI runner."""

    def __init__(self, root: Path) -> None:
        self.root, self.images, self.things = root, root / "imgs", root / "things"
        paths = write_images(self.images, n=2)
        things = self.things
        things.mkdir()
        (things / "empty").write_bytes(b"")
        (things / "binary").write_bytes(bytes(range(256)) * 4)
        (things / "labels4").write_text("a\nb\nc\nd\n")
        (things / "labels3").write_text("a\nb\nc\n")
        (things / "list").write_text("# the inputs\n\n" + "\n".join(map(str, paths)) + "\n")
        (things / "preset.toml").write_bytes(VALID_PRESET)
        from safetensors.torch import save_file
        from tiny import build

        save_file(build().state_dict(), str(things / "weights.safetensors"))
        (things / "dir").mkdir()
        if hasattr(os, "mkfifo"):
            os.mkfifo(things / "fifo")  # a read would block forever
        (things / "broken").symlink_to(things / "nowhere")
        (things / "loop").symlink_to(things / "loop")
        self.cli = Cli()
        self._n = itertools.count()

    def fresh(self, stem: str = "out") -> Path:
        return self.root / f"{stem}{next(self._n)}"

    def here(self, text: str) -> str:
        return text.replace("@things", str(self.things)).replace("@images", str(self.images))

    def explain(self, *args: str, config: str | bytes | None = None, out: str | None = None):
        """Run ``salcli explain -o OUT *args [--config PRESET]`` and check the properties; returns the result."""
        out = Path(self.here(out)) if out is not None else self.fresh()
        extra = []
        if config is not None:
            preset = self.fresh("preset").with_suffix(".toml")
            if isinstance(config, bytes):
                preset.write_bytes(config)
            else:
                preset.write_text(self.here(config))
            extra = ["--config", str(preset)]
        argv = ["explain", "-o", str(out), *map(self.here, args), *extra]
        before = listing(out)
        with time_limit(PER_EXAMPLE_S):
            result = self.cli(*argv, expect=None)
        check(result, out, before, argv)
        return result


def listing(out: Path):
    """What OUT holds: None (nothing there), "not a folder", or its paths with their sizes and times."""
    if not os.path.lexists(out):
        return None
    if out.is_symlink() or not out.is_dir():
        return "not a folder"
    return sorted((str(p.relative_to(out)), p.lstat().st_size, p.lstat().st_mtime_ns) for p in out.rglob("*"))


def check(result, out: Path, before, argv) -> None:
    code = result.exit_code
    with contextlib.suppress(Exception):  # outside a hypothesis test (the warm-up run) there are no events
        event(f"exit {code}")
    shown = f"argv: {argv!r}\nstdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}"
    assert code in (0, 1, 2, 3), f"exit {code}\n{shown}"
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, shown
    if code == 2:
        assert result.stderr.strip(), f"exit 2 without a message\n{shown}"
        after = listing(out)
        assert after == before or (before is None and after == []), f"exit 2 but OUT changed: {after}\n{shown}"
    if code == 0:
        assert (out / "manifest.jsonl").is_file() or (out / "parts").is_dir(), shown  # parts/: a shard's


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Space:
    space = Space(tmp_path_factory.mktemp("fuzzcli"))
    space.explain("@images", *TINY_OPTS, "-m", "vanilla", "--device", "cpu")  # first-run costs outside deadlines
    return space


# ---------------------------------------------------------------------------------------------- values as text

INT_EDGES = [0, 1, -1, 2, 3, 15, 16, 17, 255, 256, MAX_SIDE, MAX_SIDE + 1, MAX_BATCH, MAX_BATCH + 1, 2**31,
             2**63 - 1, 2**63, 2**64, -(2**63), 10**30, -(10**30), MAX_COUNT, MAX_COUNT + 1]
WEIRD = ["", " ", "nan", "NaN", "-nan", "inf", "-inf", "+inf", "Infinity", "1e309", "-1e309", "-0.0", "-0",
         "0.0", "1e-320", "5e-324", "0x10", "0o17", "1_6", " 16", "16 ", "16\n", "１６", "١٦", "²", "-²", "½",
         "𝟙𝟞", "16,16", "0.5,0.5,0.5", "nan,0.5,0.5", "0.5,,0.5", ",", "16.0", "16.5", "1e3", "true", "None",
         "auto", "pred", "-", "--", "--5", "-1", "\x00", "16\x00", "\u202e61", "9" * 5000, "-" + "9" * 5000,
         "0." + "0" * 400 + "1", "1" + "0" * 400 + ".0"]
garbage = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
float_text = st.floats().map(repr)  # nan, inf, -inf, -0.0, 5e-324, 1.7976931348623157e+308
int_text = st.one_of(st.integers().map(str), st.sampled_from(INT_EDGES).map(str))


def number(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """An option value: ``valid`` (cheap values that run), or anything a user might type."""
    return st.one_of(valid, valid, int_text, float_text, st.sampled_from(WEIRD), garbage)


def small_ints(lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.integers(lo, hi).map(str)


def floats_list(lo: float, hi: float) -> st.SearchStrategy[str]:
    item = st.one_of(st.floats(lo, hi).map(repr), float_text, st.sampled_from(["nan", "inf", "1e309", "", " "]))
    return st.lists(item, min_size=1, max_size=4).map(",".join)


def cheap_int(text: str, most: int) -> bool:
    """Whether ``text`` is not a valid count above ``most`` (valid and large means slow, not hostile)."""
    try:
        value = int(text)
    except (ValueError, TypeError):
        return True
    return value <= most or value > 10 * MAX_SIDE


def capped(texts: st.SearchStrategy[str], most: int) -> st.SearchStrategy[str]:
    """``texts`` with a count that is valid and above ``most`` replaced by ``most``."""
    return texts.map(lambda t: t if cheap_int(t, most) else str(most))


NOT_CPU_DEVICES = ("auto", "cuda", "mps")  # never asked to run: CI may have a GPU, and this is not about it


def elsewhere(device: str) -> bool:
    """Whether ``device`` is one a run may take to a GPU (such values are not drawn)."""
    base, _, index = device.partition(":")
    return base in NOT_CPU_DEVICES and (not index or (index.isascii() and index.isdigit()))


devices = st.one_of(st.just("cpu"), st.sampled_from(["CPU", "cpu:0", "cpu ", "", "gpu", "cuda:x", "cuda:-1",
                                                     "cuda:²", "cuda:١", "cuda:0:1", "tpu", "meta", "xla"]),
                    garbage).filter(lambda d: not elsewhere(d))

CHEAP = ["vanilla", "gradcam", "input-x-gradient"]
NAME_FORMS = ["Vanilla", "VANILLA", "Saliency", "VanillaGradient", "GradCAM", "grad-cam", "Grad_CAM", "grad cam",
              "InputXGradient", "input_x_gradient", "vanila", "gradcamm", "", " ", ",", "all,", "nosuch",
              "smoothgrad", "IG", "occlusion", "lime"]
method_names = st.one_of(st.sampled_from(CHEAP), st.sampled_from(CHEAP), st.sampled_from(NAME_FORMS), garbage)
method_option = st.one_of(method_names, st.lists(method_names, min_size=2, max_size=3).map(",".join))

LAYERS = ["features", "features.0", "features.2", "features.4", "features.5", "fc", "pool", "features.99",
          "features.-1", "", ".", "..", "features..0", "features.0.weight", "__class__", "forward", "training"]
TARGETS = ["pred", "PRED", "0", "3", "4", "-1", "00", "+1", " 1", "a", "D", "cat", "²", "--5", "9" * 40, "9" * 5000,
           "１"]
PATHS = st.one_of(st.sampled_from([f"@things/{name}" for name in THINGS]),
                  st.sampled_from(["/dev/null", "", ".", "no/such/file", "@images", "@things", "@things/loop/x",
                                   "@things/broken/x", "@things/labels4/x", "@images/img00.png", "a\x00b",
                                   "./a\x00b"]), garbage)
OUTS = st.one_of(st.none(), st.none(), st.none(), st.none(),  # a fresh folder, mostly
                 st.sampled_from([f"@things/{name}" for name in ("empty", "fifo", "broken", "loop", "dir")] +
                                 ["/dev/null", "@things/labels4/x", "@things/loop/x", "@images/img00.png"]))

OPTIONS = {  # option -> strategy of its value as typed
    "--resize": number(small_ints(16, 64)),
    "--crop": capped(number(small_ints(1, 24)), 64),
    "--mean": st.one_of(floats_list(-2, 2), st.sampled_from(WEIRD), garbage),
    "--std": st.one_of(floats_list(1e-3, 4), st.sampled_from(WEIRD), garbage),
    "--channels": number(st.sampled_from(["1", "3"])),
    "--seed": number(small_ints(0, 2**63 - 1)),
    "--alpha": number(st.floats(0, 1).map(repr)),
    "--batch-size": number(st.one_of(st.just("auto"), small_ints(1, 4))),
    "--chunk": number(st.one_of(st.just("auto"), small_ints(1, 64))),
    "--workers": capped(number(small_ints(0, 1)), 1),
    "--overlay-size": number(small_ints(16, 600)),
    "--scale": number(st.one_of(st.sampled_from(["image", "run"]), st.floats(1e-6, 1e6).map(repr))),
    "--target": st.one_of(st.sampled_from(TARGETS), int_text, garbage),
    "--layer": st.one_of(st.sampled_from(LAYERS), garbage),
    "--precision": st.one_of(st.sampled_from(["fp32", "bf16", "FP32", "fp16", "bf16 ", "", "float32"]), garbage),
    "--max-failures": st.one_of(st.sampled_from(["0", "1", "5%", "100%", "101%", "-1", "nan%", "inf", "1e400",
                                                 "%", "50%%", " 5 %"]), int_text, float_text, garbage),
    "--sign": st.one_of(st.sampled_from(["all", "positive", "negative", "absolute", "ALL", ""]), garbage),
    "--overlay-on": st.one_of(st.sampled_from(["original", "input", "Input", ""]), garbage),
    "--colormap": st.one_of(st.sampled_from(["jet", "viridis", "gray", "Jet", "nosuch", "", "jet_r"]), garbage),
    "--shard": st.one_of(st.sampled_from(["0/1", "0/2", "1/2", "2/2", "-1/2", "0/0", "1/0", "0/-1", "/", "0/",
                                          "/1", "a/b", "0/1/2", "0.5/1", "0/" + "9" * 5000]), garbage),
    "--labels": st.one_of(st.just("@things/labels4"), PATHS),
    "--config": st.one_of(st.just("@things/preset.toml"), PATHS),
    "--weights": st.one_of(st.just("@things/weights.safetensors"), PATHS),
    "--root": st.one_of(st.just("@images"), PATHS),
    "--files-from": st.one_of(st.just("@things/list"), PATHS), "--weights-key": garbage,
}
BASE = {"--model": TINY, "--resize": "16", "--crop": "16", "--mean": "0.5", "--std": "0.25", "--device": "cpu"}


@st.composite
def option_sets(draw) -> list[str]:
    """The inputs and the options of the tiny model, with one to three options replaced or added by fuzzed
    values, and cheap methods (or fuzzed method names)."""
    chosen = draw(st.lists(st.sampled_from(sorted(OPTIONS)), min_size=1, max_size=3, unique=True))
    values = dict(BASE)
    for name in chosen:
        values[name] = draw(OPTIONS[name])
    if draw(st.booleans()):
        values["--device"] = draw(devices)
    argv = list(itertools.chain.from_iterable(values.items()))
    if "--files-from" not in values or draw(st.integers(0, 3)) == 0:
        argv.insert(0, draw(st.sampled_from(["@images", "@images", "@images", "@images/img00.png", "@things",
                                             "@things/fifo", "@things/loop", "no/such/folder"])))
    names = [draw(method_option) for _ in range(draw(st.integers(0, 2)))]
    for name in names:
        argv += ["-m", name]
    return argv + caps(names)


ON_TINY = ["@images", *TINY_OPTS, "--device", "cpu"]


@fuzz(200)
@given(argv=option_sets(), out=OUTS)
@example(argv=["@images", "--model", TINY, "--resize", "16", "--crop", "16", "--mean", "nan", "--device", "cpu"],
         out=None)
@example(argv=[*ON_TINY, "--batch-size", "²"], out=None)
@example(argv=[*ON_TINY, "--chunk", "9" * 5000], out=None)
@example(argv=[*ON_TINY, "--target", "²"], out=None)
@example(argv=[*ON_TINY, "--target", "--5"], out=None)
@example(argv=[*ON_TINY, "--labels", "@things/loop"], out=None)
@example(argv=ON_TINY, out="@things/broken")
def test_option_values(space, argv, out):
    space.explain(*argv, out=out)


# ---------------------------------------------------------------------------------------- method parameters

# Valid values that would be slow (a million samples) are not drawn: an int parameter gets small values or
# hostile ones. Methods that repeat passes get these small counts first; an example's own -p items come after.
CAPS = {"smoothgrad": {"samples": 2}, "integrated-gradients": {"steps": 2, "max_steps": 4},
        "gradient-shap": {"samples": 2}, "rise": {"masks": 8}, "lime": {"samples": 8}, "kernel-shap": {"samples": 8}}


def selected(names) -> tuple[str, ...]:
    """The methods that ``-m names`` (or a preset's method list) runs; () when the run refuses them."""
    from salcli.config import parse_methods
    from salcli.errors import SalcliError

    try:
        return parse_methods(names) if names else ("vanilla",)
    except SalcliError:
        return ()


def caps(names) -> list[str]:
    return [x for name in selected(names) for key, value in CAPS.get(name, {}).items()
            for x in ("-p", f"{name}.{key}={value}")]


HOSTILE = ["", " ", "nan", "NaN", "inf", "-inf", "1e309", "-1e309", "-0.0", "true", "false", "yes", "none",
           "None", "0", "-1", "1.5", "2.0", "1e3", "0x10", "1_0", "²", "١", "1,2", "[1]", "{}", "\x00", "'2'",
           str(MAX_COUNT + 1), str(2**63), str(10**30), "9" * 5000, "0." + "0" * 400 + "1"]


def param_values(kind) -> st.SearchStrategy[str]:
    hostile = st.one_of(st.sampled_from(HOSTILE), garbage, float_text)
    if kind is bool:
        valid = st.sampled_from(["true", "false", "1", "0", "yes", "no", "True", "FALSE"])
    elif kind is int:
        valid = st.integers(-2, 8).map(str)
        hostile = capped(hostile, 8)
    elif kind is float:
        valid = st.one_of(st.floats(-1, 2).map(repr), st.floats(allow_nan=False).map(repr))
    elif getattr(kind, "__origin__", None) is not None or str(kind).startswith("typing.Literal"):
        choices = list(getattr(kind, "__args__", ()))
        valid = st.sampled_from(choices or ["x"])
        hostile = st.one_of(hostile, st.sampled_from([c.upper() for c in choices] + [c + " " for c in choices]))
    else:  # a path (gradient-shap.references)
        valid = st.sampled_from(["", "@images", "none", "no/such/folder", "@things/empty", "@things/dir",
                                 "@things/fifo", "@things/loop", "@things/broken", ".", "a\x00b"])
    return st.one_of(valid, valid, hostile)


PARAMS = {name: param_fields(registry.get(name)) for name in registry.names()}
PARAMETRIZED = sorted(name for name, fields in PARAMS.items() if fields)


@st.composite
def method_runs(draw) -> list[str]:
    """One to three methods (any in the registry, their repeated passes capped) and ``-p`` items: their real
    keys with valid or hostile values, misspelt keys and methods, malformed items."""
    chosen = draw(st.lists(st.sampled_from(registry.names()), min_size=1, max_size=3, unique=True))
    if draw(st.integers(0, 3)) == 0:
        chosen.append(draw(st.sampled_from(PARAMETRIZED)))  # a parametrized method more often
    argv = [*ON_TINY, "-m", ",".join(dict.fromkeys(chosen)), *caps(chosen)]
    items = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.integers(0, 9))
        params = [n for n in chosen if PARAMS[n]] or PARAMETRIZED
        method = draw(st.sampled_from(params if kind < 7 else PARAMETRIZED))
        fields = {f[0]: f[1] for f in PARAMS[method]}
        key = draw(st.sampled_from(sorted(fields)))
        value = draw(param_values(fields[key]))
        spelt = draw(st.sampled_from([method, method.upper(), method.replace("-", "_"), method + "x"])) \
            if kind == 8 else method
        if kind == 9:
            items.append(draw(st.sampled_from([f"{method}.{key}", f"{method}={value}", f".{key}={value}",
                                               f"{method}.={value}", f"{method}.{key}x={value}", "=", ".",
                                               f"{method}..{key}={value}", f"{method}.{key}={value}={value}"])))
        else:
            items.append(f"{spelt}.{key}={value}")
    for item in items:
        argv += ["-p", item]
    return argv


@fuzz(120)
@given(argv=method_runs())
@example(argv=[*ON_TINY, "-m", "smoothgrad", "-p", "smoothgrad.samples=2", "-p", "smoothgrad.noise=nan"])
def test_method_parameters(space, argv):
    space.explain(*argv)


# -------------------------------------------------------------------------------------------- TOML presets


def toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan" if math.copysign(1, value) > 0 else "-nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def toml_document(doc: dict, prefix: tuple[str, ...] = ()) -> str:
    """A TOML document for ``doc``: plain keys first, then one ``[table]`` per dict value (nested tables as
    ``[a."b"]``), every key quoted."""
    lines = [f"{toml_string(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for key, table in doc.items():
        if isinstance(table, dict):
            header = ".".join(map(toml_string, (*prefix, key)))
            lines += ["", f"[{header}]", toml_document(table, (*prefix, key))]
    return "\n".join(lines)


toml_scalars = st.one_of(garbage, st.integers(), st.sampled_from(INT_EDGES), st.floats(), st.booleans(),
                         st.dates(), st.datetimes(), st.datetimes(timezones=st.just(dt.timezone.utc)), st.times())
toml_any = st.recursive(toml_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                              st.dictionaries(garbage, inner, max_size=3)),
                        max_leaves=6)


def valid_or_any(valid: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(valid, valid, toml_any)


ints = lambda lo, hi: st.one_of(st.integers(lo, hi), st.sampled_from(INT_EDGES))  # noqa: E731
cheap_ints = lambda lo, hi, most: ints(lo, hi).map(lambda n: most if most < n <= 10 * MAX_SIDE else n)  # noqa: E731
float_or_list = st.one_of(st.floats(), st.lists(st.one_of(st.floats(), st.integers(-2, 2)), max_size=4))
PREPROCESS = {
    "resize": cheap_ints(8, 64, MAX_SIDE), "crop": cheap_ints(1, 24, 64), "mean": float_or_list,
    "std": float_or_list, "channels": ints(0, 4), "interpolation": st.sampled_from(["bilinear", "bicubic",
                                                                                    "nearest", "lanczos", ""]),
}
PRESET = {
    "description": garbage,
    "model": st.one_of(st.just(TINY), st.just(TINY), st.sampled_from(["builtin:fashion-mnist", "", "nosuch.py:f",
                                                                     "builtin:nosuch", "torchvision:nosuch",
                                                                     "a\x00b.py:build", "@things/loop/n.py:f"])),
    "weights": st.one_of(st.sampled_from(["", "DEFAULT", "no/such.safetensors", "w.pt", "."]), PATHS),
    "weights_key": garbage,
    "trust_checkpoint": st.booleans(),
    "labels": st.one_of(st.lists(garbage, min_size=4, max_size=4), st.sampled_from(["imagenet", "no/such.txt"]),
                        PATHS),
    "method": st.one_of(st.lists(method_names, max_size=3), method_names),
    "target": st.one_of(st.sampled_from(TARGETS), st.integers(-2, 5)),
    "layer": st.sampled_from(LAYERS),
    "device": devices,
    "batch_size": st.one_of(st.just("auto"), cheap_ints(-1, 4, 4)),
    "chunk": st.one_of(st.just("auto"), cheap_ints(-1, 64, MAX_BATCH)),
    "workers": cheap_ints(-1, 1, 1),
    "precision": st.sampled_from(["fp32", "bf16", "fp16"]),
    "optimize": st.booleans(),
    "max_failures": st.one_of(ints(-1, 3), st.sampled_from(["5%", "nan", "inf", "1e400", "101%"])),
    "seed": ints(0, 10),
    "colormap": st.sampled_from(["jet", "viridis", "nosuch", ""]),
    "alpha": st.floats(),
    "overlay_on": st.sampled_from(["original", "input", "other"]),
    "overlay_size": ints(0, 600),
    "sign": st.sampled_from(["all", "positive", "negative", "absolute", "none"]),
    "scale": st.one_of(st.sampled_from(["image", "run", "1", "nan", "0"]), st.floats()),
}
PRESET.update({key: toml_any for key in KEYS if key not in PRESET and key not in ("preprocess", "methods")})
# (a key the schema gains is fuzzed too; [preprocess] and [methods.NAME] tables are drawn apart)
MISSPELT = ["resize", "crop", "mean", "batch-size", "Seed", "methodz", "param", "overlay-size", "devices", ""]
CLEAN = {  # values that run
    "description": garbage, "trust_checkpoint": st.booleans(),
    "labels": st.lists(st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=8),
                       min_size=4, max_size=4, unique_by=str.lower),
    "method": st.lists(st.sampled_from(CHEAP + ["Saliency", "GradCAM", "smoothgrad", "rise"]), min_size=1,
                       max_size=2),
    "target": st.one_of(st.just("pred"), st.integers(0, 3)), "layer": st.sampled_from(["features", "features.4"]),
    "device": st.just("cpu"), "batch_size": st.one_of(st.just("auto"), st.integers(1, 4)),
    "chunk": st.one_of(st.just("auto"), st.integers(1, 64)), "workers": st.integers(0, 1),
    "precision": st.sampled_from(["fp32", "bf16"]), "optimize": st.booleans(),
    "max_failures": st.one_of(st.integers(0, 3), st.sampled_from(["5%", "100%"])), "seed": st.integers(0, 2**63 - 1),
    "colormap": st.sampled_from(["jet", "viridis", "gray"]), "alpha": st.floats(0, 1),
    "overlay_on": st.sampled_from(["original", "input"]), "overlay_size": st.integers(16, 600),
    "sign": st.sampled_from(["all", "positive", "negative", "absolute"]),
    "scale": st.one_of(st.sampled_from(["image", "run"]), st.floats(1e-3, 1e3)),
}
CLEAN_PREPROCESS = {"resize": st.integers(16, 64), "crop": st.integers(8, 16),
                    "mean": st.one_of(st.floats(-1, 1), st.lists(st.floats(-1, 1), min_size=3, max_size=3)),
                    "std": st.one_of(st.floats(0.1, 2), st.lists(st.floats(0.1, 2), min_size=3, max_size=3)),
                    "interpolation": st.sampled_from(["bilinear", "bicubic", "nearest"])}


@st.composite
def method_tables(draw, hostile: bool = True) -> dict:
    tables = {}
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.one_of(st.sampled_from(PARAMETRIZED), st.sampled_from(registry.names()),
                              st.sampled_from(["GradCAM", "Saliency", "nosuch", ""]) if hostile else st.nothing()))
        fields = dict((f[0], f[1]) for f in PARAMS.get(name, []))
        table = {}
        keys = sorted(fields) + (["nosuch", ""] if hostile else [])
        for key in draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)) if keys else ():
            kind = fields.get(key)
            valid = {int: st.integers(1, 4), float: st.floats(0.01, 0.9), bool: st.just(False)}.get(kind)
            if valid is None and kind is not None and hasattr(kind, "__args__"):
                valid = st.sampled_from(list(kind.__args__))
            valid = valid if valid is not None else st.just("")
            table[key] = draw(valid_or_any(valid) if hostile else valid)
        tables[name] = table
    return tables


@st.composite
def presets(draw) -> dict:
    """A preset for the tiny model. A third hold only values that run; the rest mix values of the right type
    (some out of range) with values of any TOML type, misspelt keys and tables that are not tables."""
    hostile = draw(st.integers(0, 2)) > 0
    doc = {"model": TINY} if draw(st.integers(0, 5)) or not hostile else {}
    doc["preprocess"] = {"resize": 16, "crop": 16, "mean": 0.5, "std": 0.25}
    values, pre = (PRESET, PREPROCESS) if hostile else (CLEAN, CLEAN_PREPROCESS)
    pick = (lambda strategy: draw(valid_or_any(strategy))) if hostile else draw
    for key in draw(st.lists(st.sampled_from(sorted(values)), max_size=6, unique=True)):
        doc[key] = pick(values[key])
    for key in draw(st.lists(st.sampled_from(sorted(pre)), max_size=3, unique=True)):
        doc["preprocess"][key] = pick(pre[key])
    if not hostile and doc["preprocess"]["crop"] > doc["preprocess"]["resize"]:
        doc["preprocess"]["crop"] = doc["preprocess"]["resize"]
    if hostile and draw(st.integers(0, 9)) == 0:
        doc["preprocess"] = draw(toml_any)  # not a table, or a table of anything
    if hostile and draw(st.integers(0, 4)) == 0:
        doc[draw(st.one_of(st.sampled_from(MISSPELT), garbage))] = draw(toml_any)
    if hostile and draw(st.integers(0, 6)) == 0 and isinstance(doc["preprocess"], dict):
        doc["preprocess"][draw(st.one_of(st.sampled_from(["size", "Resize", "channel"]), garbage))] = draw(toml_any)
    tables = draw(method_tables(hostile))
    if tables:
        doc["methods"] = tables
        if "method" not in doc and draw(st.booleans()):  # run the methods the tables are about
            doc["method"] = [n for n in tables if n in PARAMS] or ["vanilla"]
    if hostile and draw(st.integers(0, 9)) == 0:
        doc["methods"] = draw(toml_any)  # a list of methods, or anything
    chosen = doc.get("method", ["vanilla"])
    chosen = selected(chosen) if isinstance(chosen, (str, list)) else ()
    if any(name in CAPS for name in chosen):
        doc.setdefault("methods", {})
        for name in chosen if isinstance(doc["methods"], dict) else ():
            if name in CAPS and isinstance(doc["methods"].get(name, {}), dict):
                doc["methods"][name] = {**CAPS[name], **doc["methods"].get(name, {})}
    return doc


def too_costly(doc: dict) -> bool:
    """Valid method tables that ask for many passes (the caps cover the methods the fuzzer selects by name)."""
    tables = doc.get("methods") if isinstance(doc.get("methods"), dict) else {}
    for table in tables.values():
        for key, value in (table.items() if isinstance(table, dict) else ()):
            number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
            if key in ("samples", "steps", "max_steps", "masks", "grid", "channels") and 16 < number <= MAX_COUNT:
                return True
    return False


def preset_text(doc: dict) -> str:
    text = toml_document(doc) + "\n"
    tomllib.loads(text)  # the emitter writes valid TOML; a failure here is the test's own bug
    return text


@fuzz(160)
@given(doc=presets())
@example(doc={"model": TINY, "preprocess": {"resize": 16, "crop": 16}, "methods": {"smoothgrad": {"samples": [1]}}})
@example(doc={"model": TINY, "preprocess": {"resize": 16, "crop": 16}, "methods": {"smoothgrad": {"noise": {}}}})
@example(doc={"model": TINY, "preprocess": {"resize": 16, "crop": 16}, "target": "²"})
@example(doc={"model": TINY, "preprocess": {"resize": 16, "crop": 16},
              "methods": {"smoothgrad": {"samples": dt.date(1979, 5, 27)}}})
def test_preset_documents(space, doc):
    if too_costly(doc):
        event("skipped: valid and costly")
        return
    device = [] if "device" in doc else ["--device", "cpu"]
    space.explain("@images", *device, config=preset_text(doc))


VALID_PRESET = preset_text({"model": TINY, "method": ["vanilla"], "seed": 3, "alpha": 0.5,
                            "preprocess": {"resize": 16, "crop": 16, "mean": [0.5, 0.5, 0.5], "std": 0.25},
                            "methods": {"smoothgrad": {"samples": 2, "noise": 0.1}}}).encode()


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(VALID_PRESET)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.integers(0, 2))
        if op == 0 and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == 1:
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        else:
            del data[at:at + draw(st.integers(1, 8))]
    return bytes(data)


@fuzz(80)
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode), mutated()))
@example(data=b"seed = " + b"9" * 5000)
@example(data=b"labels = " + b"[" * 3000 + b"]" * 3000)
@example(data=b"\xff\xfe\x00")
@example(data=b"")
def test_preset_bytes(space, data):
    space.explain(*ON_TINY, config=data)


# ----------------------------------------------------------------------------------- found by the fuzzer

FOUND_OPTIONS = [  # each raised a Python exception (a traceback, exit 1 or 70) before it was fixed
    ["--batch-size", "²"],  # '²'.isdigit() is True, int('²') raises ValueError
    ["--chunk", "²"],
    ["--batch-size", "9" * 5000],  # int() reads at most 4300 digits
    ["--target", "²"],
    ["--target", "--5"],  # lstrip('-') took both dashes
    ["--target", "9" * 5000],
]


@pytest.mark.parametrize("extra", FOUND_OPTIONS, ids=[" ".join(e)[:30] for e in FOUND_OPTIONS])
def test_found_by_fuzzing_options(cli, images_dir, tmp_path, extra):
    out = tmp_path / "o"
    result = cli("explain", images_dir, "-o", out, *TINY_OPTS, "--device", "cpu", *extra, expect=2)
    assert extra[0] in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


FOUND_PRESETS = [  # (document, what the message names)
    ('[methods.smoothgrad]\nsamples = [1]', "smoothgrad.samples"),  # int([1]): TypeError
    ('[methods.smoothgrad]\nnoise = {a = 1}', "smoothgrad.noise"),  # float({}): TypeError
    ('[methods.smoothgrad]\nsamples = 1979-05-27', "smoothgrad.samples"),  # int(date): TypeError
    ('target = "²"', "--target"),
    ("seed = " + "9" * 5000, "not valid TOML"),  # tomllib raised ValueError (integer string conversion limit)
    ("labels = " + "[" * 3000 + "]" * 3000, "not valid TOML"),  # tomllib raised RecursionError
]


@pytest.mark.parametrize("body, named", FOUND_PRESETS, ids=[b[:30] for b, _ in FOUND_PRESETS])
def test_found_by_fuzzing_presets(cli, images_dir, tmp_path, body, named):
    preset = tmp_path / "p.toml"
    preset.write_text(f"model = {toml_string(TINY)}\n{body}\n")
    out = tmp_path / "o"
    result = cli("explain", images_dir, "-o", out, "--config", preset, "--device", "cpu", expect=2)
    assert named in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not out.exists()


@pytest.mark.parametrize("device", ["cuda:²", "cuda:١", "cuda:٣"])
def test_found_by_fuzzing_device_digits(device):
    """'cuda:²' passed check_device ('²'.isdigit()) and raised ValueError in resolve_device on a GPU machine;
    'cuda:١' (an Arabic-Indic one) would have run on GPU 1. A device index is ASCII digits."""
    from salcli.config import check_device
    from salcli.errors import UsageError

    with pytest.raises(UsageError, match="--device|device="):
        check_device(device)


def test_found_by_fuzzing_one_number_for_mean_and_std(cli, images_dir, tmp_path):
    """The schema takes ``mean = 0.5`` (one value for every channel), and merging the preset then iterated over
    the float: TypeError."""
    preset = tmp_path / "p.toml"
    preset.write_text(f"model = {toml_string(TINY)}\n[preprocess]\nresize = 16\ncrop = 16\nmean = 0.5\nstd = 0.25\n")
    cli("explain", images_dir, "-o", tmp_path / "o", "--config", preset, "--device", "cpu")
    from conftest import manifest

    assert len(manifest(tmp_path / "o")) == 6


@pytest.mark.parametrize("option", ["--labels", "--weights", "--files-from", "--root", "preset labels",
                                    "preset weights", "preset model"])
def test_found_by_fuzzing_a_symlink_to_itself(cli, images_dir, tmp_path, option):
    """Path.resolve() raised RuntimeError ("Symlink loop") on a link that points to itself, given as a path
    option or as a path inside a preset."""
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    out = tmp_path / "o"
    if option.startswith("preset"):
        key = option.split()[1]
        value = "loop/net.py:build" if key == "model" else "./loop"
        (tmp_path / "p.toml").write_text(f'{key} = "{value}"\n')
        result = cli("explain", images_dir, "-o", out, "--config", tmp_path / "p.toml", "--device", "cpu", expect=2)
    else:
        inputs = [] if option == "--files-from" else [images_dir]
        result = cli("explain", *inputs, "-o", out, *TINY_OPTS, "--device", "cpu", option, tmp_path / "loop",
                     expect=2)
    assert "cannot be resolved" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not out.exists()


@pytest.mark.parametrize("where", ["broken", "loop", "broken/x", "loop/x", "file/x", "file/x/y"])
def test_found_by_fuzzing_out_below_a_file_or_a_dangling_link(cli, images_dir, tmp_path, where):
    """-o through a broken or looping symbolic link raised FileExistsError from mkdir, and below a file
    NotADirectoryError."""
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "broken").symlink_to(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = cli("explain", images_dir, "-o", tmp_path / where, *TINY_OPTS, "--device", "cpu", expect=2)
    assert "-o/--out" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "file").read_text() == "x" and not (tmp_path / "nowhere").exists()


def test_found_by_probing_sanity_out_a_file(cli, images_dir, tmp_path):
    """``sanity -o FILE`` raised FileExistsError when writing its results, after the whole test had run."""
    (tmp_path / "file").write_text("x")
    result = cli("sanity", images_dir, *TINY_OPTS, "--device", "cpu", "-m", "vanilla", "--limit", "1",
                 "--max-steps", "2", "-o", tmp_path / "file", expect=2)
    assert "a file, not a folder" in result.stderr and (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize("extra", [["--steps", "0"], ["--steps", "-1"], ["--steps", "100000000"],
                                   ["--batch-size", "0"], ["--batch-size", "-3"]])
def test_found_by_probing_evaluate_counts(cli, images_dir, tmp_path, extra):
    """evaluate --steps 0 raised ZeroDivisionError, -1 a RuntimeError, and 100000000 ran for hours; --batch-size 0
    raised ValueError from range(), and -3 evaluated no image and exited 0."""
    cli("explain", images_dir, "-o", tmp_path / "o", *TINY_OPTS, "--device", "cpu")
    result = cli("evaluate", tmp_path / "o", "--no-stability", "--device", "cpu", *extra, expect=2)
    assert extra[0] in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("where", ["--weights", "--model", "-p references", "preset labels", "preset weights",
                                   "preset model"])
def test_found_by_fuzzing_a_nul_byte_in_a_path(cli, images_dir, tmp_path, where):
    """A NUL byte in a path (TOML allows "\\u0000" in a string) made Path.resolve() raise ValueError."""
    out = tmp_path / "o"
    if where.startswith("preset"):
        key = where.split()[1]
        value = "a\\u0000b.py:build" if key == "model" else "./a\\u0000b"
        (tmp_path / "p.toml").write_text(f'{key} = "{value}"\n')
        args = ["--config", tmp_path / "p.toml"]
    elif where == "--model":
        args = ["--model", "a\x00b.py:build", *TINY_OPTS[2:]]
    elif where == "--weights":
        args = [*TINY_OPTS, "--weights", "a\x00b"]
    else:
        args = [*TINY_OPTS, "-m", "gradient-shap", "-p", "gradient-shap.references=a\x00b"]
    result = cli("explain", images_dir, "-o", out, *args, "--device", "cpu", expect=2)
    assert "embedded null byte" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not out.exists()


def test_found_by_fuzzing_a_nul_byte_in_a_file_list(cli, tmp_path):
    """--files-from LIST whose line holds a NUL byte: os.stat raised ValueError ("embedded null byte") out of
    images.discover (fixed there, in discovery). That line is one failed image now, not a traceback."""
    (tmp_path / "list").write_bytes(b"\x00\x01\x02\n")
    result = cli("explain", "-o", tmp_path / "o", *TINY_OPTS, "--device", "cpu", "--files-from", tmp_path / "list",
                 expect=None)
    assert result.exit_code in (1, 2) and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("option", ["--labels", "--weights", "--config", "--root", "--files-from", "-o",
                                    "-p references"])
def test_found_by_fuzzing_a_name_too_long(cli, images_dir, tmp_path, option):
    """A path of more than 255 characters in one name: pathlib's exists()/is_file()/is_dir() raised OSError
    (ENAMETOOLONG) in find_config, read_labels, the checkpoint loader, the engine and OUT's check."""
    long = "9" * 300
    out = tmp_path / "o"
    if option == "-o":
        args = ["-o", long, *TINY_OPTS]
    elif option == "-p references":
        args = ["-o", out, *TINY_OPTS, "-m", "gradient-shap", "-p", f"gradient-shap.references={long}"]
    else:
        args = ["-o", out, *TINY_OPTS, option, long]
    inputs = [] if option == "--files-from" else [images_dir]
    result = cli("explain", *inputs, *args, "--device", "cpu", expect=2)
    assert "too long" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not out.exists()


@pytest.mark.parametrize("preset, named", [
    ("[preprocess]\nstd = 2.2329975195187725e-292", "'preprocess.std'"),  # the fuzzer's case
    ("[preprocess]\nmean = [1e300, 0.5, 0.5]", "'preprocess.mean.0'"),
    (None, "--std"), (None, "--mean")])
def test_found_by_fuzzing_normalization_that_overflows(cli, images_dir, tmp_path, preset, named):
    """A std of 1e-292 (positive and finite) or a mean of 1e300 made every input inf in float32 and every score
    NaN; writing the manifest then raised "Out of range float values are not JSON compliant"."""
    out = tmp_path / "o"
    if preset is None:
        value = "1e-300" if named == "--std" else "1e300"
        args = [*TINY_OPTS[:4], named, value, "--std" if named == "--mean" else "--mean", "0.5"]
    else:
        (tmp_path / "p.toml").write_text(f"model = {toml_string(TINY)}\n{preset}\nresize = 16\ncrop = 16\n")
        args = ["--config", tmp_path / "p.toml"]
    result = cli("explain", images_dir, "-o", out, *args, "--device", "cpu", expect=2)
    assert named in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not out.exists()


@pytest.mark.parametrize("method", ["vanilla", "integrated-gradients"])
def test_found_by_fuzzing_a_model_that_returns_nan(cli, images_dir, tmp_path, method):
    """A model whose logits are NaN (or whose inputs overflow) made writer.close() raise ValueError ("Out of
    range float values are not JSON compliant") after the images were recorded as errors: a traceback. Each
    image should fail on its own (exit 1), or the run say why. Integrated gradients' completeness gap was NaN
    too (found by the property tests): a record field that is not finite is written null."""
    (tmp_path / "nan.py").write_text(
        "import torch\nfrom tiny import TinyCNN\n\n\nclass NaN(TinyCNN):\n    def forward(self, x):\n"
        "        return super().forward(x) * float('nan')\n\n\ndef build():\n    torch.manual_seed(0)\n"
        "    return NaN()\n")
    result = cli("explain", images_dir, "-o", tmp_path / "o", "--model", f"{tmp_path / 'nan.py'}:build",
                 *TINY_OPTS[2:], "--device", "cpu", "-m", method, expect=None)
    assert result.exit_code in (1, 2, 3) and "Traceback" not in result.stderr
    rows = [json.loads(line) for line in (tmp_path / "o" / "manifest.jsonl").read_text().splitlines()]
    assert rows and all(r["score"] is None and r["status"] == "error" for r in rows)  # each image fails on its own
