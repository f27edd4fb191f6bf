"""Property tests (hypothesis) of salcli's pure parts: what holds for every input, not for a few chosen ones.

1. Display normalization (``maps``) and overlay drawing (``render``, ``overlay.draw``): for any finite map of any
   shape and dtype (1xN, Nx1, constant, all-zero, 1e-30 to 1e30, float16/32/64), the display values are finite,
   in [0, 1] ([-1, 1] with the sign kept for ``all``), shaped like the map, monotone in the magnitude under one
   range and invariant under positive scaling; NaN and infinite maps are refused with their counts; an overlay
   is uint8 (H', W', 3) at the size ``geometry.display_size`` promises, plus the caption/legend strip.
2. Shards (``images.shard``/``shard_of``): for any N >= 1 and any keys, the shards are disjoint, cover every
   image, and an image's shard depends only on its key (not on the other keys or their order).
3. Settings fingerprints (``provenance.method_settings``): each setting that changes a method's outputs changes
   its fingerprint (one field at a time), and the settings that do not (batch size, workers, chunk, device at
   fp32, OUT, quiet, shard, ...) leave it alone.
4. Manifest round trips: any record (Unicode keys and strings with control characters, ints, finite floats,
   None) written through the run's writer (``OutputWriter`` -> journal -> merged manifest) reads back equal,
   with its fields in the same order and every contract field present.
5. Record fields in a real run of the builtin model: ``score`` is the target's logit, ``prob`` the softmax of
   the predicted class (recomputed here from the model and the same preprocessing).

Deterministic (``derandomize``, no example database) with small default example counts, so the file runs in
seconds; set SALCLI_FUZZ_EXAMPLES=N for N examples per property, drawn afresh each run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import SAMPLES, Cli, manifest
from limits import time_limit
from salcli import geometry, images, maps, overlay, provenance, render
from salcli.config import OVERLAY_ON, SIGN_MODES, Preprocess, RunConfig
from salcli.images import ImageItem, printable, shard, shard_of
from salcli.maps import MapNotFinite, check_finite, display_range, display_scale, display_values
from salcli.outputs import _dumps

EXAMPLES = int(os.environ.get("SALCLI_FUZZ_EXAMPLES") or 0)


def props(default: int):
    """Hypothesis settings: ``default`` examples, deterministic and without a database; with
    SALCLI_FUZZ_EXAMPLES=N, N examples drawn at random (a failure prints its reproduction blob)."""
    return settings(max_examples=EXAMPLES or default, derandomize=not EXAMPLES, database=None, deadline=None,
                    print_blob=bool(EXAMPLES),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example, HealthCheck.filter_too_much])


# ============================================================================================== 1. display
DTYPES = (np.float16, np.float32, np.float64)
# 10**k for which small integers (|n| <= 1000) times 10**k stay finite and normal-ish in the dtype
EXPONENTS = {np.dtype(np.float16): (-4, 1), np.dtype(np.float32): (-35, 35), np.dtype(np.float64): (-300, 300)}
SHAPES = st.one_of(st.tuples(st.just(1), st.integers(1, 40)),  # 1 x N
                   st.tuples(st.integers(1, 40), st.just(1)),  # N x 1
                   st.tuples(st.integers(1, 12), st.integers(1, 12)))


def _floats(dtype: np.dtype, **kw):
    return st.floats(width=dtype.itemsize * 8, allow_nan=False, allow_infinity=False, **kw)


@st.composite
def finite_maps(draw, dtypes=DTYPES, kinds=("any", "scaled", "scaled", "constant", "zero"), max_exp=300):
    """A finite map: any value of the dtype (subnormals, -0.0, the largest), small integers times 10**k (1e-30
    to 1e30 and beyond where the dtype holds them, |k| <= ``max_exp``), a constant, or zeros."""
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    shape = draw(SHAPES)
    kind = draw(st.sampled_from(kinds))
    if kind == "any":
        return draw(hnp.arrays(dtype, shape, elements=_floats(dtype)))
    if kind == "constant":
        return np.full(shape, draw(_floats(dtype)), dtype)
    if kind == "zero":
        return np.zeros(shape, dtype)
    base = draw(hnp.arrays(np.int64, shape, elements=st.integers(-1000, 1000)))
    low, high = EXPONENTS[dtype]
    k = draw(st.integers(max(low, -max_exp), min(high, max_exp)))
    return (base * 10.0 ** k).astype(dtype)


def _magnitude(m: np.ndarray, mode: str) -> np.ndarray:
    """What a mode shows, computed here independently of ``maps._magnitudes``."""
    a = m.astype(np.float64)
    return {"positive": np.maximum(a, 0), "negative": np.maximum(-a, 0)}.get(mode, np.abs(a))


def check_display(m: np.ndarray, mode: str, percentile: float = 99.0) -> np.ndarray:
    """Every property of one map's display at its own range; returns the display values."""
    before = m.copy()
    lo, hi = display_range(m, mode, percentile)
    assert math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo <= hi, (lo, hi)
    if mode != "absolute":
        assert lo == 0.0
    v = display_values(m, mode, lo, hi)
    assert v.shape == m.shape and v.dtype == np.float32
    assert np.isfinite(v).all()
    a = _magnitude(m, mode)
    if mode == "all":
        assert v.min() >= -1.0 and v.max() <= 1.0
        assert np.all(v[m == 0] == 0), "0 must map to 0"
        assert np.all(v[m > 0] >= 0) and np.all(v[m < 0] <= 0), "the sign must be kept"
    else:
        assert v.min() >= 0.0 and v.max() <= 1.0
        if lo == 0:
            assert np.all(v[a == 0] == 0)
    if mode == "positive":
        assert np.all(v[m <= 0] == 0)
    if mode == "negative":
        assert np.all(v[m >= 0] == 0)
    if hi > lo:  # the strongest pixel is saturated (hi is at most the maximum); in absolute mode the weakest is 0
        top = np.unravel_index(np.argmax(a), a.shape)
        assert abs(float(v[top])) == 1.0, (float(v[top]), lo, hi)
        if mode == "absolute":
            assert float(v[np.unravel_index(np.argmin(a), a.shape)]) == 0.0
    else:
        assert np.all(v == 0), "an empty range shows nothing"
    _assert_monotone(m, mode, v)
    np.testing.assert_array_equal(m, before)  # the caller's map is left as it was
    return v


def _assert_monotone(m: np.ndarray, mode: str, v: np.ndarray) -> None:
    """A larger magnitude (a larger signed value for ``all``) never gets a smaller display value."""
    key = m.astype(np.float64).ravel() if mode == "all" else _magnitude(m, mode).ravel()
    order = np.argsort(key, kind="stable")
    assert np.all(np.diff(v.ravel()[order].astype(np.float64)) >= 0), "display values are not monotone"


@props(150)
@given(m=finite_maps(), mode=st.sampled_from(SIGN_MODES), percentile=st.sampled_from([99.0, 100.0, 50.0, 0.0]))
def test_display_values_are_finite_in_range_shaped_and_monotone(m, mode, percentile):
    check_display(m, mode, percentile)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("magnitude", [1e-30, 1e30])
@pytest.mark.parametrize("shape", [(1, 17), (17, 1), (6, 5)])
def test_display_of_huge_and_tiny_maps(dtype, magnitude, shape):
    rng = np.random.default_rng(0)
    m = (rng.normal(size=shape) * magnitude).astype(dtype)
    for mode in SIGN_MODES:
        v = check_display(m, mode)
        np.testing.assert_allclose(v, check_display(m.astype(np.float64) / magnitude, mode), atol=1e-5)


@props(80)
@given(m=finite_maps(), mode=st.sampled_from(SIGN_MODES),
       lo=st.floats(0, 1e30, allow_nan=False), width=st.floats(0, 1e30, allow_nan=False))
def test_a_shared_range_keeps_the_display_in_range_and_monotone(m, mode, lo, width):
    """``--scale run`` and ``--scale VALUE`` draw a map at a range that is not its own: still finite, in range,
    shaped like the map and monotone."""
    lo = 0.0 if mode != "absolute" else lo
    hi = lo + width
    v = display_values(m, mode, lo, hi)
    assert v.shape == m.shape and v.dtype == np.float32 and np.isfinite(v).all()
    assert v.min() >= (-1.0 if mode == "all" else 0.0) and v.max() <= 1.0
    if not hi > lo:
        assert np.all(v == 0)
    _assert_monotone(m, mode, v)


@props(100)
@given(m=finite_maps(kinds=("scaled", "scaled", "zero"), max_exp=250),
       mode=st.sampled_from(SIGN_MODES), power=st.integers(-60, 60), c=st.floats(1e-3, 1e3))
def test_display_is_scale_invariant(m, mode, power, c):
    """m and c*m (c > 0) display the same: exactly for a power of two (exact in float64), within float rounding
    for any c. Their ranges scale with c."""
    own = display_values(m, mode, *display_range(m, mode))
    m64 = m.astype(np.float64)
    exact = m64 * 2.0 ** power
    np.testing.assert_array_equal(display_values(exact, mode, *display_range(exact, mode)), own)
    scaled = m64 * c
    lo, hi = display_range(m, mode)
    slo, shi = display_range(scaled, mode)
    np.testing.assert_allclose([slo, shi], [c * lo, c * hi], rtol=1e-9, atol=0)
    np.testing.assert_allclose(display_values(scaled, mode, slo, shi), own, atol=1e-5)


@props(60)
@given(shape=SHAPES, dtype=st.sampled_from(DTYPES), data=st.data())
def test_constant_and_zero_maps(shape, dtype, data):
    """A constant map shows nothing in absolute mode (and display_scale); an all-zero map shows nothing in any
    mode; a constant non-zero map in mode all is its sign everywhere."""
    dtype = np.dtype(dtype)
    value = data.draw(_floats(dtype))
    m = np.full(shape, value, dtype)
    assert np.all(check_display(m, "absolute") == 0)
    assert np.all(display_scale(m) == 0)
    if value != 0:
        np.testing.assert_array_equal(check_display(m, "all"), np.full(shape, np.sign(value), np.float32))
    for mode in SIGN_MODES:
        assert np.all(check_display(np.zeros(shape, dtype), mode) == 0)


@props(60)
@given(m=finite_maps())
def test_sign_modes_relate(m):
    """negative(m) == positive(-m); absolute ignores the sign; the magnitudes of positive and negative add up to
    those of absolute; an unknown mode is refused."""
    neg = -m.astype(np.float64)
    np.testing.assert_array_equal(display_values(m, "negative", *display_range(m, "negative")),
                                  display_values(neg, "positive", *display_range(neg, "positive")))
    np.testing.assert_array_equal(display_values(m, "absolute", *display_range(m, "absolute")),
                                  display_values(neg, "absolute", *display_range(neg, "absolute")))
    for mode in SIGN_MODES:
        a = maps._magnitudes(m, mode)
        assert a.dtype == np.float64 and a.shape == m.shape and np.all(a >= 0)
    np.testing.assert_array_equal(maps._magnitudes(m, "positive") + maps._magnitudes(m, "negative"),
                                  maps._magnitudes(m, "absolute"))
    np.testing.assert_array_equal(maps._magnitudes(m, "all"), np.abs(m.astype(np.float64)))
    with pytest.raises(ValueError, match="unknown sign mode"):
        maps._magnitudes(m, "signed")


@st.composite
def non_finite_maps(draw):
    m = draw(finite_maps(kinds=("scaled", "zero")))
    flat = m.ravel().copy()
    positions = draw(st.lists(st.integers(0, flat.size - 1), min_size=1, max_size=flat.size, unique=True))
    for p in positions:
        flat[p] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return flat.reshape(m.shape)


@props(80)
@given(m=non_finite_maps())
def test_non_finite_maps_are_refused_with_their_counts(m):
    nan, inf = int(np.isnan(m).sum()), int(np.isinf(m).sum())
    with pytest.raises(MapNotFinite) as caught:
        check_finite(m)
    assert isinstance(caught.value, ValueError)
    assert f"{nan} NaN and {inf} infinite value(s) of {m.size}" in str(caught.value)
    # display_scale counts them as 0 and still gives a finite picture in [0, 1]
    d = display_scale(m)
    assert d.shape == m.shape and np.isfinite(d).all() and d.min() >= 0 and d.max() <= 1
    # and no overlay is drawn for such a map
    with pytest.raises(MapNotFinite):
        render.overlay(np.zeros((*m.shape, 3), np.uint8), m)


@props(60)
@given(m=finite_maps())
def test_finite_maps_pass_check_finite(m):
    check_finite(m)  # no exception


# ---------------------------------------------------------------------------------------------- overlays
def _strip(width: int, caption: str | None, legend: bool) -> int:
    """The height of the caption/legend strip ``render._with_strip`` adds under an overlay ``width`` wide."""
    rows = (1 if caption else 0) + (1 if legend else 0)
    return rows * round(render.strip_font_size(width) * 1.45) + 4 if rows else 0


COLORMAPS = st.sampled_from(["jet", "viridis", "gray", "turbo"])
# captions as ``overlay.caption`` words them from class names; a name holding a newline is a known bug (below)
CAPTIONS = st.one_of(st.none(), st.text(max_size=40).filter(lambda t: "\n" not in t))


@props(50)
@given(m=finite_maps(dtypes=(np.float32, np.float64)), channels=st.sampled_from([1, 3]), seed=st.integers(0, 99),
       mode=st.sampled_from(SIGN_MODES), colormap=COLORMAPS, alpha=st.floats(0, 1), caption=CAPTIONS,
       legend=st.booleans(), max_side=st.integers(16, 400), min_side=st.integers(1, 300))
def test_overlay_on_the_input_is_uint8_at_the_promised_size(m, channels, seed, mode, colormap, alpha, caption,
                                                           legend, max_side, min_side):
    h, w = m.shape
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)
    out = render.overlay(pixels, m, colormap, alpha, caption, min_side, mode=mode, legend=legend, max_side=max_side)
    dw, dh = geometry.display_size(w, h, max_side, min_side)
    assert out.dtype == np.uint8 and out.shape == (dh + _strip(dw, caption, legend), dw, 3)


@props(40)
@given(width=st.integers(1, 700), height=st.integers(1, 700), crop=st.integers(1, 24), extra=st.integers(0, 24),
       channels=st.sampled_from([1, 3]), data=st.data(), mode=st.sampled_from(SIGN_MODES), colormap=COLORMAPS,
       alpha=st.floats(0, 1), caption=CAPTIONS, legend=st.booleans(), max_side=st.integers(16, 512))
def test_overlay_on_the_original_is_uint8_at_the_promised_size(width, height, crop, extra, channels, data, mode,
                                                              colormap, alpha, caption, legend, max_side):
    m = data.draw(finite_maps(dtypes=(np.float32,)).map(lambda a: np.resize(a, (crop, crop))))
    pw, ph = geometry.capped_size(width, height, max_side)  # the picture as images.picture gives it
    picture = np.random.default_rng(width * 7 + height).integers(0, 256, (ph, pw, channels), dtype=np.uint8)
    out = render.overlay_on_original(picture, (width, height), m, crop + extra, colormap, alpha, caption,
                                     mode=mode, legend=legend, max_side=max_side)
    dw, dh = geometry.display_size(width, height, max_side)
    assert out.dtype == np.uint8 and out.shape == (dh + _strip(dw, caption, legend), dw, 3)


@props(30)
@given(m=finite_maps(dtypes=(np.float32,), kinds=("scaled", "zero")), on=st.sampled_from(OVERLAY_ON),
       size=st.integers(16, 300), sign=st.sampled_from(SIGN_MODES), scale=st.sampled_from(["image", "run", "0.5"]),
       width=st.integers(1, 300), height=st.integers(1, 300), text=CAPTIONS)
def test_overlay_draw_is_uint8_for_any_display(m, on, size, sign, scale, width, height, text):
    """The pipeline's entry point (``overlay.draw``) for every display setting: uint8 RGB at the documented size
    (the legend strip is always drawn)."""
    n = max(m.shape)
    m = np.resize(m, (n, n))
    display = overlay.Display(on=on, size=size, sign=sign, scale=scale)
    rng = np.random.default_rng(n)
    pw, ph = geometry.capped_size(width, height, size)
    item = {"picture": rng.integers(0, 256, (ph, pw, 3), dtype=np.uint8), "size": (width, height),
            "pixels": rng.integers(0, 256, (n, n, 1), dtype=np.uint8)}
    out = overlay.draw(display, n, sign, m, item, text)
    dw, dh = geometry.display_size(*((width, height) if on == "original" else (n, n)), size)
    assert out.dtype == np.uint8 and out.shape == (dh + _strip(dw, text, True), dw, 3)


def test_a_caption_with_a_newline_still_draws():
    """A class name holding a newline (a preset's labels list, a checkpoint's labels) is drawn on one line: Pillow
    refuses to measure multiline text, and every overlay of that class used to fail to write."""
    facts = {"pred": 0, "pred_label": "T-shirt\ntop", "prob": 0.9, "target": 0, "target_label": "T-shirt\ntop"}
    out = render.overlay(np.zeros((28, 28, 1), np.uint8), np.ones((28, 28), np.float32),
                         caption=overlay.caption(facts), legend=True)
    assert out.dtype == np.uint8 and out.ndim == 3
    assert "\n" not in overlay.caption(facts)


@props(30)
@given(m=finite_maps(dtypes=(np.float32, np.float64)), seed=st.integers(0, 99))
def test_alpha_zero_leaves_the_picture_as_it_is(m, seed):
    h, w = m.shape
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    out = render.overlay(pixels, m, "jet", 0.0, None, 1, mode="absolute")
    np.testing.assert_array_equal(out, pixels)


# ============================================================================================== 2. shards
# Image keys: any text (control characters included), and keys as discovery makes them (``printable``) from any
# Python string (lone surrogates included) and from file names whose bytes are not UTF-8 (written \xNN)
KEYS = st.one_of(
    st.text(max_size=30),
    st.text(st.characters(exclude_categories=()), max_size=20).map(printable),  # lone surrogates too
    st.binary(max_size=20).map(lambda b: printable(os.fsdecode(b))),
    st.from_regex(r"[a-z]{1,6}(/[a-z0-9 ._-]{1,8}){0,3}\.(png|jpg)", fullmatch=True),
)
COUNTS = st.one_of(st.integers(1, 12), st.integers(1, 2 ** 63))


def _items(keys) -> list[ImageItem]:
    return [ImageItem(Path("/nowhere") / f"{i}.png", k) for i, k in enumerate(keys)]


@props(150)
@given(keys=st.lists(KEYS, unique=True, max_size=40), count=COUNTS, data=st.data())
def test_shards_partition_the_images_by_key(keys, count, data):
    items = _items(keys)
    for k in keys:
        s = shard_of(k, count)
        assert isinstance(s, int) and 0 <= s < count
        assert s == shard_of(k, count)  # deterministic
    by_key = {k: shard_of(k, count) for k in keys}
    indices = sorted(set(by_key.values())) if count > 12 else range(count)
    slices = {i: shard(items, i, count) for i in indices}
    # disjoint, and together the whole set: every image in exactly one slice, its own
    seen = [item.key for s in slices.values() for item in s]
    assert sorted(seen) == sorted(keys)
    for i, s in slices.items():
        assert all(by_key[item.key] == i for item in s)
        assert s == [item for item in items if item in s]  # in the items' order
    if count > 12:  # a slice no key falls in is empty
        empty = data.draw(st.integers(0, count - 1).filter(lambda i: i not in slices))
        assert shard(items, empty, count) == []
    # each key's slice depends only on the key: not on the order of the items, nor on the other items
    perm = data.draw(st.permutations(items))
    subset = data.draw(st.lists(st.sampled_from(items), unique=True)) if items else []
    for i, s in slices.items():
        assert shard(perm, i, count) == [item for item in perm if item in s]
        assert shard(subset, i, count) == [item for item in subset if item in s]
    # adding files moves none of the others
    added = [k for k in data.draw(st.lists(KEYS, max_size=5, unique=True)) if k not in by_key]
    grown = [*items, *(ImageItem(Path("/added") / f"{j}.png", k) for j, k in enumerate(added))]
    for i, s in slices.items():
        assert [item for item in shard(grown, i, count) if item.key in by_key] == s


@props(50)
@given(key=KEYS)
def test_one_shard_takes_everything_and_the_hash_is_sha256(key):
    assert shard_of(key, 1) == 0
    digest = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    assert shard_of(key, 2 ** 64) == digest


# ============================================================================================== 3. fingerprints
BASE_METHODS = ("vanilla", "smoothgrad", "integrated-gradients", "gradcam")


@pytest.fixture(scope="module")
def resolved():
    """The builtin model resolved once (about a second); the properties vary a light stand-in built from it."""
    from salcli.pipeline import SilentReporter
    from salcli.resolve import resolve

    return resolve(RunConfig(methods=BASE_METHODS, device="cpu", optimize=False), SilentReporter())


@dataclasses.dataclass(frozen=True)
class Standin:
    """What ``method_settings`` reads of a ``Resolved``, with the same attribute names."""

    config: RunConfig
    preprocess: Preprocess
    labels: tuple[str, ...] | None
    model: Any  # .checksums, .weights
    target: int | None
    layer: str | None
    methods: tuple

    @classmethod
    def of(cls, r) -> "Standin":
        return cls(r.config, r.preprocess, r.labels, SimpleNamespace(checksums=dict(r.model.checksums),
                                                                     weights=r.model.weights),
                   r.target, r.layer, tuple(r.methods))

    def with_config(self, **changes) -> "Standin":
        return dataclasses.replace(self, config=dataclasses.replace(self.config, **changes))

    def with_model(self, **changes) -> "Standin":
        return dataclasses.replace(self, model=SimpleNamespace(**{**vars(self.model), **changes}))

    def with_preprocess(self, **changes) -> "Standin":
        return dataclasses.replace(self, preprocess=dataclasses.replace(self.preprocess, **changes))


def test_the_standin_fingerprints_like_the_resolved_run(resolved):
    real = provenance.method_settings(resolved)
    assert provenance.method_settings(Standin.of(resolved)) == real
    assert set(real) == set(BASE_METHODS)
    assert len(set(real.values())) == len(real), "each method has its own fingerprint"
    assert all(re.fullmatch(r"[0-9a-f]{16}", v) for v in real.values())


TEXT = st.text(max_size=20)


def _other(strategy, base):
    return strategy.filter(lambda v: v != base)


# Each setting that changes every method's outputs -> how to change it on a stand-in, from a hypothesis ``data``.
# (The display settings change the overlay PNGs, an output too.)
OUTPUT_SETTINGS = {
    "model": lambda s, d: s.with_config(model=d.draw(_other(TEXT, s.config.model))),
    "weights": lambda s, d: s.with_config(weights=d.draw(_other(st.one_of(TEXT, st.just("DEFAULT")),
                                                                s.config.weights))),
    "weights file content (sha256)": lambda s, d: s.with_model(checksums={
        **s.model.checksums, **{k: d.draw(_other(st.from_regex(r"[0-9a-f]{64}", fullmatch=True), v))
                                for k, v in s.model.checksums.items()}}),
    "weights_key": lambda s, d: s.with_model(weights={**(s.model.weights or {}),
                                                      "key": d.draw(st.text(min_size=1, max_size=12))}),
    "preprocess.resize": lambda s, d: s.with_preprocess(resize=d.draw(_other(st.integers(s.preprocess.crop, 4096),
                                                                             s.preprocess.resize))),
    "preprocess.crop": lambda s, d: s.with_preprocess(crop=d.draw(_other(st.integers(1, s.preprocess.resize),
                                                                         s.preprocess.crop))),
    "preprocess.mean": lambda s, d: s.with_preprocess(mean=(d.draw(_other(st.floats(-10, 10),
                                                                          s.preprocess.mean[0])),)),
    "preprocess.std": lambda s, d: s.with_preprocess(std=(d.draw(_other(st.floats(1e-6, 10), s.preprocess.std[0])),)),
    "preprocess.channels": lambda s, d: s.with_preprocess(channels=3),
    "preprocess.interpolation": lambda s, d: s.with_preprocess(interpolation=d.draw(st.sampled_from(
        ["bicubic", "nearest"]))),
    "target": lambda s, d: dataclasses.replace(s, target=d.draw(st.integers(0, 9))),
    "layer": lambda s, d: dataclasses.replace(s, layer=d.draw(_other(st.one_of(st.none(), TEXT), s.layer))),
    "seed": lambda s, d: s.with_config(seed=d.draw(_other(st.integers(-2 ** 63, 2 ** 64), s.config.seed))),
    "precision bf16": lambda s, d: s.with_config(precision="bf16"),
    "labels": lambda s, d: dataclasses.replace(s, labels=d.draw(_other(st.one_of(
        st.none(), st.lists(TEXT, min_size=1, max_size=12).map(tuple)), s.labels))),
    "colormap": lambda s, d: s.with_config(colormap=d.draw(st.sampled_from(["viridis", "gray", "turbo", "bwr"]))),
    "alpha": lambda s, d: s.with_config(alpha=d.draw(_other(st.floats(0, 1), s.config.alpha))),
    "overlay_on": lambda s, d: s.with_config(overlay_on="input"),
    "overlay_size": lambda s, d: s.with_config(overlay_size=d.draw(_other(st.integers(16, 8192),
                                                                          s.config.overlay_size))),
    "sign": lambda s, d: s.with_config(sign=d.draw(st.sampled_from(["positive", "negative", "absolute"]))),
    "scale": lambda s, d: s.with_config(scale=d.draw(st.one_of(st.just("run"), st.floats(1e-9, 1e9).map(str)))),
    "overlays": lambda s, d: s.with_config(overlays=False),  # --no-overlays: no overlay stored
    "map_dtype": lambda s, d: s.with_config(map_dtype="float16"),  # other bytes in every format
    "layer_maps": lambda s, d: s.with_config(layer_maps="native"),  # the CAM family's maps at the layer's size
}


@pytest.mark.parametrize("name", list(OUTPUT_SETTINGS))
@props(8)
@given(data=st.data())
def test_every_setting_that_changes_outputs_changes_every_fingerprint(resolved, name, data):
    base = Standin.of(resolved)
    before = provenance.method_settings(base)
    after = provenance.method_settings(OUTPUT_SETTINGS[name](base, data))
    from salcli.methods import registry

    for method in before:
        if name == "layer" and not registry.get(method).needs_layer:
            # the layer is the CAM family's: vanilla's map does not depend on it, so its outputs are kept
            assert after[method] == before[method], f"changing the layer changes {method}'s fingerprint"
            continue
        if name == "layer_maps" and not registry.get(method).layer_map:
            # only a layer's map is stored at another size: vanilla's and smoothgrad's outputs are kept
            assert after[method] == before[method], f"--layer-maps changes {method}'s fingerprint"
            continue
        assert after[method] != before[method], f"changing {name} does not change {method}'s fingerprint"


def _param_value(kind, default, data):
    import typing

    choices = typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else ()
    if choices:
        return data.draw(st.sampled_from(choices))
    if kind is bool:
        return not default
    if kind is int:
        return data.draw(st.integers(1, 5000))
    if kind is float:
        return data.draw(st.floats(0, 100))
    return data.draw(TEXT)


@pytest.mark.parametrize("method", ["smoothgrad", "integrated-gradients"])
@props(20)
@given(data=st.data())
def test_a_methods_parameters_change_its_fingerprint_alone(resolved, method, data):
    """A parameter of one method changes that method's fingerprint, and no other's."""
    from salcli.errors import UsageError
    from salcli.methods import registry

    cls = registry.get(method)
    fields = registry.param_fields(cls)
    key, kind, default = data.draw(st.sampled_from(fields))
    value = _param_value(kind, default, data)
    assume(value != default)
    try:
        changed = registry.create(method, {key: value})
    except UsageError:
        assume(False)  # a value the parameters refuse together (e.g. too few steps for the adaptive rule)
    base = Standin.of(resolved)
    methods = tuple(changed if m.name == method else m for m in base.methods)
    before = provenance.method_settings(base)
    after = provenance.method_settings(dataclasses.replace(base, methods=methods))
    for name in before:
        assert (after[name] != before[name]) == (name == method), (name, key, value)


def test_reference_images_replaced_under_the_same_folder_change_the_fingerprint(resolved, tmp_path):
    """gradient-shap's baselines come from --references: the folder's contents are part of the fingerprint, so a
    nightly run whose reference images were replaced recomputes the maps instead of keeping stale ones."""
    from salcli.methods import registry

    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "a.png").write_bytes(b"one")
    base = Standin.of(resolved)
    shap = registry.create("gradient-shap", {"references": str(refs)})
    standin = dataclasses.replace(base, methods=(*base.methods, shap))
    first = provenance.method_settings(standin)
    assert provenance.method_settings(standin) == first
    (refs / "a.png").write_bytes(b"two")
    second = provenance.method_settings(standin)
    assert second["gradient-shap"] != first["gradient-shap"]
    assert {k: v for k, v in second.items() if k != "gradient-shap"} == \
        {k: v for k, v in first.items() if k != "gradient-shap"}
    (refs / "b.png").write_bytes(b"three")
    assert provenance.method_settings(standin)["gradient-shap"] != second["gradient-shap"]


# The settings that do not change what is computed or drawn: how a run is executed, where it writes, what it says.
NEUTRAL_SETTINGS = {
    "batch_size": st.one_of(st.just("auto"), st.integers(1, 4096)),
    "chunk": st.one_of(st.just("auto"), st.integers(1, 4096)),
    "workers": st.one_of(st.none(), st.integers(0, 64)),
    "device": st.sampled_from(["auto", "cpu", "cuda", "cuda:1", "mps"]),
    "optimize": st.booleans(),  # fp32 fast paths change how the model computes, never what (fastpath.py)
    "out": TEXT.map(Path),
    "quiet": st.booleans(),
    "json": st.booleans(),
    "overwrite": st.booleans(),
    "prune": st.booleans(),
    "shard": st.one_of(st.none(), st.integers(1, 64).flatmap(lambda n: st.tuples(st.integers(0, n - 1), st.just(n)))),
    "shard_source": st.one_of(st.none(), TEXT),
    "no_shard": st.booleans(),
    "max_failures": st.sampled_from(["0", "3", "5%"]),
    "files_from": st.one_of(st.none(), TEXT.map(Path)),
    "root": st.one_of(st.none(), TEXT.map(Path)),
    "inputs": st.lists(TEXT.map(Path), max_size=3).map(tuple),
    "config_file": st.one_of(st.none(), TEXT.map(Path)),
    "trust_checkpoint": st.booleans(),
    "format": st.sampled_from(["files", "parquet", "webdataset"]),  # where maps go, not what they hold
}


# The RunConfig fields an output depends on: each is tested above, through what ``resolve`` makes of it (the
# preprocessing, the labels, the methods and their params, the target, the layer, the weights' key and checksums)
OUTPUT_FIELDS = {"model", "weights", "weights_key", "preprocess", "labels", "methods", "params", "target", "layer",
                 "seed", "precision", "colormap", "alpha", "overlay_on", "overlay_size", "sign", "scale", "overlays",
                 "map_dtype", "layer_maps"}


def test_every_run_setting_is_classified():
    """A new RunConfig field must be added to OUTPUT_FIELDS (and its fingerprint tested) or NEUTRAL_SETTINGS."""
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    assert not OUTPUT_FIELDS & set(NEUTRAL_SETTINGS)
    assert fields == OUTPUT_FIELDS | set(NEUTRAL_SETTINGS), fields ^ (OUTPUT_FIELDS | set(NEUTRAL_SETTINGS))


@props(60)
@given(changes=st.fixed_dictionaries({}, optional=NEUTRAL_SETTINGS))
def test_settings_that_do_not_change_outputs_leave_the_fingerprints_alone(resolved, changes):
    base = Standin.of(resolved)
    assert provenance.method_settings(base.with_config(**changes)) == provenance.method_settings(base)


def _resolve(**changes):
    from salcli.pipeline import SilentReporter
    from salcli.resolve import resolve

    return resolve(RunConfig(**{"methods": BASE_METHODS, "device": "cpu", "optimize": False, **changes}),
                   SilentReporter())


@pytest.mark.slow  # six resolutions of the builtin model: about 4 s on two cores
def test_fingerprints_of_real_resolutions(resolved, tmp_path):
    """The same through ``resolve`` itself: the seed, the target, a parameter and bf16 change the fingerprints;
    a target named by its label or by its index is the same target; batch size, chunk, workers, device, OUT,
    quiet, json and shard do not."""
    base = provenance.method_settings(resolved)
    found = {}
    for name, changes in {"seed": {"seed": 1}, "target": {"target": "3"}, "bf16": {"precision": "bf16"}}.items():
        found[name] = provenance.method_settings(_resolve(**changes))
        assert all(found[name][m] != base[m] for m in base), changes
    param = provenance.method_settings(_resolve(params={"smoothgrad": {"samples": 7}}))
    assert {m for m in base if param[m] != base[m]} == {"smoothgrad"}
    assert provenance.method_settings(_resolve(target="Dress")) == found["target"]  # class 3 by its label
    neutral = _resolve(batch_size=3, chunk=5, workers=1, device="auto", optimize=True, out=tmp_path / "elsewhere",
                       quiet=True, json=True, shard=(1, 3), shard_source="--shard", overwrite=True,
                       max_failures="2")
    assert provenance.method_settings(neutral) == base


# ============================================================================================== 4. manifest
CONTRACT_FIELDS = ("image", "method", "status", "error", "npy", "overlay", "pred", "pred_label", "prob", "target",
                   "target_label", "score")
# any Unicode without lone surrogates (what a UTF-8 file holds), control characters, \xNN escapes, JSON's own
# metacharacters and the tombstone's word
STRINGS = st.one_of(st.text(max_size=24), st.sampled_from(["", "\x00", "\n\r\t", "\\x80\\xff", '"pruned"', "\u2028\x85",
                                                           "{}\"\\", "é/ü.png"]),
                    st.binary(max_size=12).map(lambda b: printable(os.fsdecode(b))))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), STRINGS)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(STRINGS, inner, max_size=3)), max_leaves=6)
# not record()'s own parameters (key, method, settings), nor the fields that identify a record
FIELD_NAMES = STRINGS.filter(lambda k: k not in ("key", "method", "settings", "image", "status", "schema_version"))
IMAGE_KEYS = KEYS.map(printable)  # keys are always printable (discover)
METHOD_NAMES = st.sampled_from(["vanilla", "smoothgrad", "gradcam", "integrated-gradients"])


@st.composite
def records(draw):
    fields = draw(st.dictionaries(FIELD_NAMES, VALUES, max_size=6))
    fields["status"] = draw(st.sampled_from(["ok", "error", "skipped"]))  # a tombstone is left out on purpose
    for name in ("pred", "target"):
        if draw(st.booleans()):
            fields[name] = draw(st.integers(0, 999))
    for name in ("prob", "score"):
        if draw(st.booleans()):
            fields[name] = draw(st.floats(allow_nan=False, allow_infinity=False))
    return provenance.record(draw(IMAGE_KEYS), draw(METHOD_NAMES), draw(st.from_regex(r"[0-9a-f]{16}",
                                                                                      fullmatch=True)), **fields)


def _same(a, b) -> bool:
    """Equal, and dicts with their keys in the same order, all the way down."""
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return isinstance(b, float) and (a == b) and math.copysign(1, a) == math.copysign(1, b)
    return type(a) is type(b) and a == b


@props(25)
@given(recs=st.lists(records(), max_size=6), bucket=st.sampled_from([64 << 20, 1, 300]), data=st.data())
def test_records_round_trip_through_the_writer(recs, bucket, data):
    """Records added to an ``OutputWriter`` (journaled, fsync'ed) and merged into manifest.jsonl read back equal,
    field order included, sorted by (image, method), the last record of a pair winning; the journal's scan and a
    merge in spilled buckets agree."""
    from salcli import outputs
    from salcli.outputs import journal

    if recs:  # later records of the same (image, method): a rerun's, which must win
        for again in data.draw(st.lists(st.sampled_from(recs), max_size=3)):
            recs.append({**again, "status": data.draw(st.sampled_from(["ok", "error", "skipped"])),
                         "error": data.draw(STRINGS)})

    for r in recs:
        assert list(r)[:len(CONTRACT_FIELDS)] == list(CONTRACT_FIELDS)
        assert r["settings"] and r["schema_version"] == outputs.SCHEMA_VERSION
    want = {}
    for r in recs:
        want[(r["image"], r["method"])] = r
    expected = [want[k] for k in sorted(want)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        writer = outputs.OutputWriter(out)
        for r in recs:
            writer.add(r)
        writer.close()  # journals the records (fsync'ed)
        from_journal = outputs.read_manifest(out)  # before the merge: read from OUT/parts
        found, present = journal.scan(journal.sources(out, out / outputs.MANIFEST))
        merged = [json.loads(line) for line in journal.merged_lines(journal.sources(out, out / outputs.MANIFEST),
                                                                   bucket_bytes=bucket)]
        writer.write_manifest()
        writer.drop_journal()
        after = outputs.read_manifest(out)
        raw = (out / outputs.MANIFEST).read_text(encoding="utf-8")
    for got in (from_journal, merged, after):
        assert len(got) == len(expected)
        for a, b in zip(expected, got):
            assert _same(a, b), (a, b)
    assert set(found) == set(want) and all(_same(want[k], found[k]) for k in want)
    assert present == {image for image, _ in want}
    assert raw.count("\n") == len(expected)  # one line per record, whatever the strings hold


@props(60)
@given(recs=st.lists(records(), min_size=1, max_size=5))
def test_write_jsonl_and_dumps_round_trip(recs):
    from salcli import outputs

    for r in recs:
        line = outputs._dumps(r)
        assert "\n" not in line and "\r" not in line
        assert _same(json.loads(line), r)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        outputs.write_jsonl(out / outputs.MANIFEST, recs)
        got = outputs.read_manifest(out)
        store = outputs.RecordStore()
        for r in recs:
            store[(r["image"], r["method"])] = r
    last = {(r["image"], r["method"]): r for r in recs}
    assert all(_same(a, b) for a, b in zip([last[k] for k in sorted(last)], got)) and len(got) == len(last)
    assert all(_same(store[k], last[k]) for k in last)


@props(40)
@given(lines=st.lists(records().map(_dumps), max_size=5), data=st.data())
def test_the_journal_keeps_whole_lines_and_drops_a_line_cut_short(lines, data):
    from salcli.outputs import journal

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "parts" / "manifest-00000-of-00001.jsonl"
        j = journal.Journal(path)
        j.append(lines)
        j.close()
        cut = ""
        if lines:  # a kill in the middle of a line
            last = data.draw(st.sampled_from(lines))
            cut = last[: data.draw(st.integers(1, len(last) - 1))]
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(cut)
        j = journal.Journal(path)  # reopened by the next run: the cut line stays a line of its own
        j.append(lines[:1])
        j.close()
        got = [line for _, line in journal.read_lines(path)]
    assert got == lines + lines[:1]


# ============================================================================================== 5. record fields
PICKED = ["Ankle boot/t10k-00000.png", "Trouser/t10k-00002.png", "Coat/t10k-00006.png", "Pullover/t10k-00001.png"]
TARGET = 1  # Trouser: the prediction for one image, not for the others


def _logits(paths: list[Path]):
    """The builtin model's logits for ``paths``, recomputed here: the model as salcli loads it, the preprocessing
    its preset gives, in float64."""
    import torch

    from salcli import models

    pre, labels, _ = models.resolve_preset(RunConfig())
    loaded = models.load_model(RunConfig().model)
    x = np.stack([images.normalize(images.prepare(images.decode(p), pre), pre) for p in paths])
    module = loaded.module.double()
    with torch.no_grad():
        logits = module(torch.from_numpy(x).double()).numpy()
    return logits, labels


def test_score_is_the_targets_logit_and_prob_the_predicted_class_probability(tmp_path):
    """In a real run of the builtin model with ``--target`` a class that is not every image's prediction, each
    record's ``score`` is the logit of the target and ``prob`` the softmax probability of ``pred``, the top-1
    class (CONTRACT.md); ``pred``/``target`` and their labels agree with the model."""
    folder = SAMPLES / "fashion-mnist"
    paths = [folder / p for p in PICKED]
    out = tmp_path / "out"
    with time_limit(120, "salcli explain"):
        Cli()("explain", *paths, "-o", out, "-m", "vanilla", "--target", TARGET, "--device", "cpu", "-q")
    records = {r["image"]: r for r in manifest(out)}
    assert len(records) == len(paths)
    logits, labels = _logits(paths)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    differing = 0
    for i, name in enumerate(PICKED):
        r = records[name]  # keys are relative to the deepest folder holding every input
        pred = int(np.argmax(logits[i]))
        assert r["status"] == "ok" and r["method"] == "vanilla"
        assert r["pred"] == pred and r["pred_label"] == labels[pred]
        assert r["target"] == TARGET and r["target_label"] == labels[TARGET]
        assert r["score"] == pytest.approx(logits[i, TARGET], abs=1e-4), "score must be the target's logit"
        assert r["prob"] == pytest.approx(probs[i, pred], abs=1e-5), "prob must be the softmax of pred"
        if pred != TARGET:  # where they differ, the wrong class would be caught
            differing += 1
            assert abs(logits[i, pred] - logits[i, TARGET]) > 1e-2
            assert abs(probs[i, pred] - probs[i, TARGET]) > 1e-3
            assert r["score"] != pytest.approx(logits[i, pred], abs=1e-3)
            assert r["prob"] != pytest.approx(probs[i, TARGET], abs=1e-4)
    assert 0 < differing < len(paths), "the target should be the prediction for some images and not for others"


# ============================================================================================== pinned values
def _pinned_standin(**config) -> Standin:
    """A run's settings built from constants only (no paths, no weights file): its fingerprints are pinned."""
    from salcli.methods import registry

    return Standin(RunConfig(model="builtin", seed=3, **config),
                   Preprocess(resize=32, crop=28, mean=(0.5,), std=(0.25,), channels=1),
                   ("a", "b", "c"), SimpleNamespace(checksums={"weights": "0" * 64}, weights=None), 2, "features.3",
                   (registry.create("vanilla", {}), registry.create("gradcam", {}),
                    registry.create("smoothgrad", {"samples": 8})))


# A fingerprint is compared with the ones in the records of earlier runs: when the value changes for the same
# settings, every user's existing output folders are recomputed at their next run. So the values are pinned; a
# change that alters them on purpose (a new setting that changes maps) updates them here and says so in the notes.
PINNED = {
    (): {"vanilla": "e9e5bdacee135d1a", "gradcam": "bc910876175f65ff", "smoothgrad": "88902e34cdca50c5"},
    ("bf16",): {"vanilla": "86d5f761f9ab66ea", "gradcam": "28b10d7e602e38aa", "smoothgrad": "b1a838c0cd28e8a6"},
    ("weights_key",): {"vanilla": "cdf4ed1e3d3f7368", "gradcam": "77899e495fc59dc4",
                       "smoothgrad": "9d29c75d98f49c16"},
    ("no_overlays",): {"vanilla": "3db7c1385297d8d9", "gradcam": "32c22ab99bae72a9",
                       "smoothgrad": "32af625f17091dbd"},
    ("float16",): {"vanilla": "449c40ebf191cdee", "gradcam": "b54a2ec8323dac23", "smoothgrad": "d233e2da6943ab9f"},
    ("layer_maps",): {"vanilla": "e9e5bdacee135d1a", "gradcam": "ddbc7e0f18bd5039", "smoothgrad": "88902e34cdca50c5"},
}


def _pinned_cases(standin):
    return {
        (): standin,
        ("bf16",): standin.with_config(precision="bf16"),
        ("weights_key",): standin.with_model(weights={"key": "model_ema"}),
        ("no_overlays",): standin.with_config(overlays=False),
        ("float16",): standin.with_config(map_dtype="float16"),
        ("layer_maps",): standin.with_config(layer_maps="native"),
    }


def test_fingerprints_are_pinned():
    cases = {k: provenance.method_settings(v) for k, v in _pinned_cases(_pinned_standin()).items()}
    for key, expected in PINNED.items():
        assert cases[key] == expected, key
    assert {m: v for m, v in cases[("layer_maps",)].items() if m != "gradcam"} == {
        m: v for m, v in cases[()].items() if m != "gradcam"}  # --layer-maps changes only the layer's maps
    values = [fp for key, case in cases.items() for m, fp in case.items() if key != ("layer_maps",) or m == "gradcam"]
    assert len(set(values)) == len(values)  # every other case and method differs from every other


def test_reference_folder_fingerprint_is_pinned_and_sees_names_and_bytes(tmp_path):
    folder = tmp_path / "refs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(b"alpha")
    (folder / "sub" / "b.png").write_bytes(b"beta")
    first = provenance.folder_contents(str(folder))
    assert first == PINNED_FOLDER
    (folder / "a.png").rename(folder / "c.png")  # the same bytes under another name
    assert provenance.folder_contents(str(folder)) != first
    os.mkdir(folder / "x")
    raw = os.fsencode(str(folder / "x")) + b"/\xff.png"  # a name that is not UTF-8
    with open(raw, "wb") as fh:
        fh.write(b"gamma")
    assert len(provenance.folder_contents(str(folder))) == 16
    assert provenance.folder_contents(str(tmp_path / "none")) is None


PINNED_FOLDER = "faf873305a355045"


def test_a_record_writes_non_finite_floats_as_null():
    rec = provenance.record("a.png", "integrated-gradients", "f" * 16, status="ok", completeness_gap=float("nan"),
                            other=float("inf"), score=1.5, pred=2)
    assert rec["completeness_gap"] is None and rec["other"] is None and rec["score"] == 1.5 and rec["pred"] == 2


def test_fingerprint_reads_paths_as_text_and_params_name_the_reference_contents(tmp_path):
    from salcli.methods import registry

    assert provenance.fingerprint({"weights": Path("/w/model.pt")}) == provenance.fingerprint({"weights": "/w/model.pt"})
    (tmp_path / "a.png").write_bytes(b"alpha")
    values = provenance._params(registry.create("gradient-shap", {"references": str(tmp_path)}).params)
    assert values["references"] == str(tmp_path)
    assert values["references_contents"] == provenance.folder_contents(str(tmp_path)) is not None
