"""Display normalization, overlays and channel reduction (pure array work)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from salcli.errors import UsageError
from salcli.maps import display_scale, max_abs_channels, sum_channels
from salcli.render import MIN_SIDE, overlay


# ---------------------------------------------------------------------------------------------- display_scale
def test_display_scale_robust_to_one_extreme_pixel():
    rng = np.random.default_rng(0)
    m = rng.uniform(0.0, 1.0, (32, 32)).astype(np.float32)
    m[5, 7] = 1e6
    d = display_scale(m)
    assert d.shape == (32, 32) and d.dtype == np.float32
    assert d.min() >= 0.0 and d.max() <= 1.0
    assert d[5, 7] == 1.0
    # a plain max-normalization would squash every other pixel to ~1e-6
    assert np.median(d) > 0.4
    assert (d > 0.1).mean() > 0.8
    # order is kept below the clip
    flat_m, flat_d = m.ravel(), d.ravel()
    low = flat_m < np.percentile(flat_m, 90)
    assert np.all(np.diff(flat_d[low][np.argsort(flat_m[low])]) >= 0)


def test_display_scale_zero_map_gives_zeros():
    d = display_scale(np.zeros((8, 8), np.float32))
    assert d.shape == (8, 8) and np.all(d == 0)


def test_display_scale_constant_map_gives_zeros():
    # the docstring: "A constant or all-zero map gives zeros."
    d = display_scale(np.full((8, 8), 3.5, np.float32))
    assert np.all(d == 0), f"constant map rendered as {np.unique(d)}"


def test_display_scale_nan_and_inf_safe():
    m = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    m[0, 0], m[0, 1], m[0, 2] = np.nan, np.inf, -np.inf
    d = display_scale(m)
    assert np.isfinite(d).all()
    assert d.min() >= 0.0 and d.max() <= 1.0
    assert d[0, 0] == 0.0
    assert d[7, 7] == 1.0 and d[4, 4] > 0.3
    assert np.all(display_scale(np.full((4, 4), np.nan, np.float32)) == 0)


def test_display_scale_signed_maps_by_magnitude():
    rng = np.random.default_rng(1)
    m = rng.normal(size=(16, 16)).astype(np.float32)
    np.testing.assert_array_equal(display_scale(m), display_scale(-m))
    np.testing.assert_array_equal(display_scale(m), display_scale(np.abs(m)))
    s = np.array([[-4.0, 4.0], [0.0, 1.0]], np.float32)
    d = display_scale(s, percentile=100.0)
    np.testing.assert_allclose(d, [[1.0, 1.0], [0.0, 0.25]])


# ---------------------------------------------------------------------------------------------- overlay
def _pixels(h, w, c, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def _smap(h, w, seed=0):
    return np.random.default_rng(seed + 100).uniform(0, 1, (h, w)).astype(np.float32)


@pytest.mark.parametrize("h,w,c", [(28, 28, 1), (28, 28, 3), (16, 20, 3), (224, 224, 3), (300, 250, 3)])
def test_overlay_integer_upscale_to_min_side(h, w, c):
    out = overlay(_pixels(h, w, c), _smap(h, w))
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    factor = out.shape[0] // h
    assert out.shape[:2] == (h * factor, w * factor)
    assert min(out.shape[:2]) >= MIN_SIDE >= 224
    assert factor == max(1, -(-MIN_SIDE // min(h, w)))  # the smallest integer factor that reaches MIN_SIDE
    # each input pixel is a uniform square (nearest upscaling)
    if factor > 1:
        block = out[:factor, :factor]
        assert (block == block[0, 0]).all()


def test_overlay_28px_gives_224():
    out = overlay(_pixels(28, 28, 1), _smap(28, 28))
    assert out.shape == (224, 224, 3)


def test_overlay_caption_adds_rows():
    px, m = _pixels(28, 28, 3), _smap(28, 28)
    plain = overlay(px, m)
    captioned = overlay(px, m, caption="pred T-shirt/top 97% | map for Trouser")
    assert captioned.dtype == np.uint8 and captioned.shape[2] == 3
    assert captioned.shape[1] == plain.shape[1]
    assert captioned.shape[0] > plain.shape[0]
    np.testing.assert_array_equal(captioned[: plain.shape[0]], plain)
    strip = captioned[plain.shape[0]:]
    assert strip.max() > 0  # some text was drawn
    long = overlay(px, m, caption="x" * 500)  # a long caption is cut to fit, not an error
    assert long.shape == captioned.shape


def test_overlay_alpha_zero_is_the_picture():
    px = _pixels(28, 28, 3)
    out = overlay(px, _smap(28, 28), alpha=0.0)
    np.testing.assert_array_equal(out, px.repeat(8, axis=0).repeat(8, axis=1))
    gray = _pixels(28, 28, 1)
    out = overlay(gray, _smap(28, 28), alpha=0.0)
    np.testing.assert_array_equal(out, np.repeat(gray, 3, axis=2).repeat(8, axis=0).repeat(8, axis=1))


def test_overlay_alpha_one_is_the_heatmap():
    px = _pixels(28, 28, 3)
    m = np.zeros((28, 28), np.float32)
    m[10, 10] = 1.0
    m[20, 20] = 0.5
    m[:, 0] = 0.0
    out = overlay(px, m, colormap="gray", alpha=1.0, min_side=28)
    assert out.shape == (28, 28, 3)
    assert (out[10, 10] == 255).all()
    assert (out[0, 0] == 0).all()
    assert 0 < out[20, 20, 0] < 255


def test_overlay_shape_mismatch_raises():
    with pytest.raises(ValueError):
        overlay(_pixels(28, 28, 3), _smap(14, 14))


def test_overlay_unknown_colormap_suggests():
    with pytest.raises(UsageError) as err:
        overlay(_pixels(8, 8, 3), _smap(8, 8), colormap="viridiss")
    msg = str(err.value)
    assert "viridiss" in msg and "'viridis'" in msg


# ---------------------------------------------------------------------------------------------- channel reduction
def test_max_abs_channels_known_tensor():
    g = torch.tensor([[[[1.0, -5.0], [0.0, 2.0]],
                       [[-3.0, 4.0], [0.5, -2.5]],
                       [[2.0, 0.0], [-0.25, 1.0]]]])  # (1, 3, 2, 2)
    g = torch.cat([g, -2 * g])  # (2, 3, 2, 2)
    out = max_abs_channels(g)
    assert out.shape == (2, 2, 2) and out.dtype == torch.float32
    torch.testing.assert_close(out[0], torch.tensor([[3.0, 5.0], [0.5, 2.5]]))
    torch.testing.assert_close(out[1], torch.tensor([[6.0, 10.0], [1.0, 5.0]]))


def test_max_abs_channels_detaches_and_casts():
    g = torch.tensor([[[[-1.5]], [[0.5]]]], dtype=torch.float64, requires_grad=True)
    out = max_abs_channels(g * 2)
    assert out.dtype == torch.float32 and not out.requires_grad
    assert out.item() == 3.0


def test_sum_channels_keeps_sign():
    g = torch.tensor([[[[1.0, -5.0]], [[-3.0, 4.0]]]])  # (1, 2, 1, 2)
    torch.testing.assert_close(sum_channels(g), torch.tensor([[[-2.0, -1.0]]]))


# ---------------------------------------------------------------------------------------------- geometry
from salcli import geometry  # noqa: E402
from salcli.maps import MapNotFinite, display_range, display_values  # noqa: E402
from salcli.render import DIVERGING, colormap_lut, line_plot, overlay_on_original, strip_font_size  # noqa: E402


def _pixel_box(w, h, resize, crop, i, j):
    """The original-pixel box of map pixel (i, j), from the README's formula, written out here on its own."""
    s = resize / min(w, h)
    rw, rh = max(crop, round(w * s)), max(crop, round(h * s))
    left, top = (rw - crop) // 2, (rh - crop) // 2
    return ((left + j) * w / rw, (top + i) * h / rh, (left + j + 1) * w / rw, (top + i + 1) * h / rh)


def _footprint(w, h, display, box):
    """Overlay pixels whose centers fall in ``box`` (original coordinates)."""
    dw, dh = display
    xs = (np.arange(dw) + 0.5) * w / dw
    ys = (np.arange(dh) + 0.5) * h / dh
    return ((ys >= box[1]) & (ys < box[3]))[:, None] & ((xs >= box[0]) & (xs < box[2]))[None, :]


def test_geometry_known_numbers():
    g = geometry.geometry(300, 200, 64, 48)  # short side 200 -> 64: 96 x 64; crop 48 at (24, 8)
    assert (g.resized, g.left, g.top, g.crop) == ((96, 64), 24, 8, 48)
    assert g.box == pytest.approx((75.0, 25.0, 225.0, 175.0))
    assert not g.full and geometry.geometry(28, 28, 28, 28).full
    assert geometry.display_size(300, 200, 150) == (150, 100)  # capped
    assert geometry.display_size(20, 23, 512) == (240, 276)  # small: x12 until the short side reaches 224
    assert geometry.display_size(20, 23, 100) == (80, 92)  # ... but never past the cap
    assert geometry.display_size(400, 300, 512) == (400, 300)  # as it is


@pytest.mark.parametrize("w,h,resize,crop,cap,i,j", [
    (300, 200, 64, 48, 150, 5, 40),  # landscape, resize != crop, shown at half size
    (310, 200, 64, 48, 512, 10, 47),  # W' - crop odd (99 - 48): the crop's left edge rounds down
    (330, 200, 64, 47, 512, 46, 20),  # W s = 105.6 rounds up to 106
    (200, 310, 40, 32, 512, 30, 1),  # portrait, near the crop's bottom-left corner
    (20, 23, 16, 12, 512, 0, 11),  # small: upscaled x12, crop's top-right pixel
    (640, 427, 256, 224, 512, 100, 223),  # ImageNet geometry on a real photo's size
    (1000, 600, 256, 224, 64, 112, 0),  # shown much smaller than the map: the map is box-averaged first
])
def test_geometry_round_trip_one_hot_pixel_lands_on_its_box(w, h, resize, crop, cap, i, j):
    m = np.zeros((crop, crop), np.float32)
    m[i, j] = 1.0
    picture = np.full((h, w, 3), 40, np.uint8)
    out = overlay_on_original(picture, (w, h), m, resize, colormap="gray", alpha=1.0, legend=False, max_side=cap)
    display = geometry.display_size(w, h, cap)
    assert out.shape == (display[1], display[0], 3)
    box = _pixel_box(w, h, resize, crop, i, j)
    expected = _footprint(w, h, display, box)
    lit = out[:, :, 0] > 200  # white heat; the grey border never exceeds 199
    if display[0] >= crop * w / geometry.resized_size(w, h, resize, crop)[0]:  # the map is shown at least 1:1
        assert expected.any() and np.array_equal(lit, expected)
    else:  # averaged: inside the crop, the brightest overlay pixel is the one over the box
        crop_area = _footprint(w, h, display, geometry.geometry(w, h, resize, crop).box)
        v, u = np.unravel_index(np.argmax(np.where(crop_area, out[:, :, 0].astype(int), -1)), out.shape[:2])
        assert out[v, u, 0] > out[crop_area, 0].min()
        cx, cy = (u + 0.5) * w / display[0], (v + 0.5) * h / display[1]
        step = w / display[0]
        assert box[0] - step <= cx <= box[2] + step and box[1] - step <= cy <= box[3] + step


@pytest.mark.parametrize("w,h,resize,crop", [(90, 60, 32, 24), (61, 97, 30, 30), (50, 50, 40, 20)])
def test_geometry_matches_what_prepare_crops(w, h, resize, crop):
    from PIL import Image

    from salcli.config import Preprocess
    from salcli.images import prepare

    # each pixel holds its own coordinates: nearest resampling copies the original pixel a crop pixel's center
    # falls in, which must lie in that crop pixel's box
    yy, xx = np.mgrid[0:h, 0:w]
    im = Image.fromarray(np.stack([xx, yy, np.zeros_like(xx)], axis=2).astype(np.uint8))
    px = prepare(im, Preprocess(resize=resize, crop=crop, interpolation="nearest"))
    g = geometry.geometry(w, h, resize, crop)
    x0, y0, x1, y1 = g.box
    step_x, step_y = (x1 - x0) / crop, (y1 - y0) / crop
    for i in range(crop):
        for j in range(crop):
            x, y = int(px[i, j, 0]), int(px[i, j, 1])
            assert x0 + j * step_x - 1e-9 <= x + 0.5 <= x0 + (j + 1) * step_x + 1e-9, (i, j)
            assert y0 + i * step_y - 1e-9 <= y + 0.5 <= y0 + (i + 1) * step_y + 1e-9, (i, j)


def test_cut_away_border_is_grey_hatched_and_has_no_heat():
    w, h, resize, crop = 120, 60, 32, 32  # resized 64 x 32: the crop keeps the middle half of the width
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    m = np.ones((crop, crop), np.float32)
    out = overlay_on_original(picture, (w, h), m, resize, colormap="jet", alpha=0.5, legend=False, max_side=512,
                              min_side=1)
    assert out.shape == (60, 120, 3)
    outside = np.ones((60, 120), bool)
    outside[:, 30:90] = False  # box x in [16 * 120/64, 48 * 120/64) = [30, 90)
    border, inside = out[outside], out[~outside]
    assert (border[:, 0] == border[:, 1]).all() and (border[:, 1] == border[:, 2]).all()  # grey: no heat
    assert not (inside[:, 0] == inside[:, 2]).all()  # coloured inside
    flat = overlay_on_original(np.full((h, w, 3), 128, np.uint8), (w, h), m, resize, alpha=0.5, legend=False,
                               min_side=1)
    assert len(np.unique(flat[:, :30, 0])) == 2  # a flat picture's border: faded grey and the hatch lines
    assert len(np.unique(flat[:, 30:90].reshape(-1, 3), axis=0)) == 1  # inside: one colour, no hatch
    full = overlay_on_original(np.full((60, 60, 3), 128, np.uint8), (60, 60), m, 32, alpha=0.5, legend=False)
    assert len(np.unique(full.reshape(-1, 3), axis=0)) == 1  # a square picture loses nothing: no border


def test_overlay_size_caps_the_long_side_and_keeps_the_aspect():
    w, h = 1600, 900
    picture = np.zeros((h, w, 3), np.uint8)
    m = np.random.default_rng(0).normal(size=(224, 224)).astype(np.float32)
    out = overlay_on_original(picture, (w, h), m, 256, legend=False, max_side=300)
    assert out.shape == (169, 300, 3)
    with_strip = overlay_on_original(picture, (w, h), m, 256, caption="pred x", max_side=300)
    assert with_strip.shape[1] == 300 and with_strip.shape[0] > 169  # the strip adds rows, never width
    # the picture handed over may already be scaled down (images.picture): the output is the same size
    small = overlay_on_original(picture[::4, ::4], (w, h), m, 256, legend=False, max_side=300)
    assert small.shape == out.shape
    big = overlay(np.zeros((224, 224, 3), np.uint8), m, max_side=100)  # --overlay-on input obeys the cap too
    assert big.shape == (100, 100, 3)


# ---------------------------------------------------------------------------------------------- signed maps
def _halves():
    m = np.zeros((30, 30), np.float32)
    m[:, :10] = 2.0
    m[:, 20:] = -2.0
    return m


def test_signed_map_positive_red_negative_blue_zero_untouched():
    grey = np.full((30, 30, 3), 128, np.uint8)
    out = overlay(grey, _halves(), mode="all", min_side=30)
    assert tuple(out[5, 2]) == tuple(colormap_lut(DIVERGING)[255]) and out[5, 2, 0] > 200 > out[5, 2, 2]  # red
    assert tuple(out[5, 27]) == tuple(colormap_lut(DIVERGING)[0]) and out[5, 27, 2] > 200 > out[5, 27, 0]  # blue
    assert tuple(out[5, 15]) == (128, 128, 128)  # zero evidence: the picture as it is
    zero = overlay(grey, np.zeros((30, 30), np.float32), mode="all", min_side=30)
    assert (zero == 128).all()  # an all-zero map leaves the (grey) picture untouched
    colour = np.zeros((30, 30, 3), np.uint8)
    colour[..., 1] = 200  # a green picture is shown in grey under a signed map: red and blue mean only the sign
    g = overlay(colour, np.zeros((30, 30), np.float32), mode="all", min_side=30)
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()


def test_signed_opacity_grows_with_the_magnitude():
    grey = np.full((1, 5, 3), 128, np.uint8)
    m = np.array([[0.0, 0.25, 0.5, 1.0, 4.0]], np.float32)
    out = overlay(grey, m, mode="all", min_side=1, scale=(0.0, 1.0))
    blue = out[0, :, 2].astype(int)
    assert list(blue) == sorted(blue, reverse=True) and blue[0] == 128 and blue[3] == blue[4]  # clipped at 1


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_maps_are_refused_with_a_message(bad):
    m = _halves()
    m[3, 3] = bad
    with pytest.raises(MapNotFinite, match="NaN|infinite") as err:
        overlay(np.zeros((30, 30, 3), np.uint8), m, mode="all")
    assert "1" in str(err.value)
    with pytest.raises(MapNotFinite):
        overlay_on_original(np.zeros((30, 30, 3), np.uint8), (30, 30), m, 30)


@pytest.mark.parametrize("mode,left,right", [("positive", 255, 0), ("negative", 0, 255), ("absolute", 255, 255)])
def test_sign_modes_show_the_chosen_part(mode, left, right):
    out = overlay(np.zeros((30, 30, 3), np.uint8), _halves(), colormap="gray", alpha=1.0, mode=mode, min_side=30)
    assert out[5, 2, 0] == left and out[5, 27, 0] == right
    if mode != "absolute":
        assert out[5, 15, 0] == 0  # zero is the bottom of the scale


def test_display_range_modes():
    m = np.array([[-4.0, 1.0], [2.0, 0.5]], np.float32)
    assert display_range(m, "all", 100) == (0.0, 4.0)
    assert display_range(m, "positive", 100) == (0.0, 2.0)
    assert display_range(m, "negative", 100) == (0.0, 4.0)
    assert display_range(m, "absolute", 100) == (0.5, 4.0)
    np.testing.assert_allclose(display_values(m, "all", 0.0, 4.0), [[-1.0, 0.25], [0.5, 0.125]])
    np.testing.assert_allclose(display_values(m, "negative", 0.0, 2.0), [[1.0, 0.0], [0.0, 0.0]])
    assert not display_values(m, "all", 0.0, 0.0).any()


def test_common_scale_gives_the_same_colour_for_the_same_value():
    grey = np.full((4, 4, 3), 100, np.uint8)
    a = np.zeros((4, 4), np.float32)
    b = np.zeros((4, 4), np.float32)
    a[0, 0], b[0, 0] = 1.0, 1.0  # the same value ...
    b[3, 3] = 3.0  # ... in an image whose strongest value is larger
    for mode in ("all", "absolute"):
        own_a = overlay(grey, a, mode=mode, min_side=4)
        own_b = overlay(grey, b, mode=mode, min_side=4)
        assert not np.array_equal(own_a[0, 0], own_b[0, 0])  # each image its own scale: different colours
        scale = (0.0, 3.0)
        run_a = overlay(grey, a, mode=mode, min_side=4, scale=scale)
        run_b = overlay(grey, b, mode=mode, min_side=4, scale=scale)
        assert np.array_equal(run_a[0, 0], run_b[0, 0])  # one scale: one colour


def test_legend_strip_is_drawn_and_readable_at_thumbnail_width():
    m = _halves()
    plain = overlay(np.zeros((30, 30, 3), np.uint8), m, mode="all", min_side=240)
    legend = overlay(np.zeros((30, 30, 3), np.uint8), m, mode="all", min_side=240, legend=True)
    assert legend.shape[1] == plain.shape[1] and legend.shape[0] > plain.shape[0]
    strip = legend[plain.shape[0]:]
    reds = (strip[..., 0] > 200) & (strip[..., 2] < 60)
    blues = (strip[..., 2] > 200) & (strip[..., 0] < 60)
    assert reds.any() and blues.any()  # the colorbar runs from blue to red
    assert np.argmax(blues.any(0)) < np.argmax(reds.any(0))  # blue on the left
    for width in (224, 512, 1024):  # the text is about 10 px or more once the overlay is shown 240 px wide
        assert strip_font_size(width) * 240 / width >= 10.5


def test_legend_labels_say_the_scale():
    from salcli.render import Legend, legend_labels

    assert legend_labels(Legend("all", 0.0, 0.0123)) == ("-0.012", "+0.012", "blue -  0  + red")
    assert legend_labels(Legend("absolute", 0.5, 3.0, "run scale")) == ("0.5", "3", "low - high, run scale")
    assert legend_labels(Legend("negative", 0.0, 2.0))[:2] == ("0", "-2")


def test_line_plot_auc_in_the_legend():
    import io

    from PIL import Image

    png = line_plot({"gradcam": [1.0, 0.2, 0.0, 0.0], "random": [1.0, 1.0, 1.0, 1.0]}, "Deletion", "x", "y", auc=True)
    assert Image.open(io.BytesIO(png)).info["Legend"] == "gradcam (AUC 0.233) | random (AUC 1.000)"  # trapezoids
    png = line_plot({"a": [0.0, 1.0]}, "t", "x", "y", x=[0.0, 4.0], auc=True)
    assert Image.open(io.BytesIO(png)).info["Legend"] == "a (AUC 2.000)"  # over the given x
    assert Image.open(io.BytesIO(line_plot({"a": [1.0, 0.0]}, "t", "x", "y"))).info["Legend"] == "a"


# ---------------------------------------------------------------------------------------------- through the CLI
def _photo(path, w, h, seed=0):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _png(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def test_cli_overlays_on_the_original_by_default(cli, tmp_path):
    import json

    from conftest import TINY_OPTS, manifest

    _photo(tmp_path / "in" / "wide.png", 40, 25)
    out = tmp_path / "out"
    cli("explain", tmp_path / "in", "-o", out, *TINY_OPTS, "-q")
    rec = manifest(out)[0]
    assert (rec["width"], rec["height"]) == (40, 25)
    img = _png(out / rec["overlay"])
    assert img.shape[1] == 360  # 40 x 25 shown x9 (short side to 224 or more), the strip below
    # resized 26 x 16, crop 16 at left 5: the original's x in [7.7, 32.3) was seen; x9 -> overlay columns 69..290
    picture = img[:225]
    left, middle = picture[:, :66], picture[:, 75:285]
    assert (left[..., 0] == left[..., 1]).all() and (left[..., 1] == left[..., 2]).all()  # greyed border
    assert not ((middle[..., 0] == middle[..., 1]) & (middle[..., 1] == middle[..., 2])).all()
    assert (out / "original" / "wide.png.jpg").is_file()  # the picture the report shows
    run = json.loads((out / "run.json").read_text())
    assert run["overlay"]["on"] == "original" and run["overlay"]["size"] == 512
    assert run["geometry"]["resize"] == 16 and run["geometry"]["crop"] == 16 and run["geometry"]["map_size"] == [16, 16]
    assert np.load(out / rec["npy"]).shape == (16, 16)  # the map stays at the input resolution

    cli("explain", tmp_path / "in", "-o", tmp_path / "inp", *TINY_OPTS, "--overlay-on", "input", "-q")
    assert _png(tmp_path / "inp" / rec["overlay"]).shape[1] == 224  # the 16 px crop x14
    np.testing.assert_array_equal(np.load(tmp_path / "inp" / rec["npy"]), np.load(out / rec["npy"]))
    cli("explain", tmp_path / "in", "-o", tmp_path / "cap", *TINY_OPTS, "--overlay-size", "100", "-q")
    assert _png(tmp_path / "cap" / rec["overlay"]).shape[1] == 80  # x2 fits 100, x3 would not


def test_cli_sign_changes_signed_maps_only(cli, tmp_path):
    import json

    from conftest import TINY_OPTS

    for i in range(2):
        _photo(tmp_path / "in" / f"p{i}.png", 20, 20, seed=i)
    runs = {}
    for sign in ("all", "negative"):
        out = tmp_path / sign
        cli("explain", tmp_path / "in", "-o", out, *TINY_OPTS, "-m", "input-x-gradient", "-m", "vanilla",
            "--sign", sign, "-q")
        runs[sign] = out
    run = json.loads((runs["all"] / "run.json").read_text())
    assert run["overlay"]["modes"] == {"input-x-gradient": "all", "vanilla": "absolute"}
    ixg = _png(runs["all"] / "input-x-gradient" / "p0.png.png")
    assert ((ixg[..., 0] > 180) & (ixg[..., 2] < 90)).any() and ((ixg[..., 2] > 180) & (ixg[..., 0] < 90)).any()
    assert not np.array_equal(ixg, _png(runs["negative"] / "input-x-gradient" / "p0.png.png"))
    np.testing.assert_array_equal(_png(runs["all"] / "vanilla" / "p0.png.png"),
                                  _png(runs["negative"] / "vanilla" / "p0.png.png"))  # >= 0: --sign does not apply


@pytest.mark.parametrize("args,word", [(["--overlay-on", "crop"], "--overlay-on"), (["--sign", "both"], "--sign"),
                                       (["--scale", "0"], "--scale"), (["--scale", "global"], "--scale"),
                                       (["--overlay-size", "8"], "--overlay-size"),
                                       (["--scale", "run", "--shard", "0/2"], "--scale")])
def test_cli_display_options_usage_errors(cli, tmp_path, args, word):
    from conftest import TINY_OPTS

    _photo(tmp_path / "in" / "a.png", 20, 20)
    result = cli("explain", tmp_path / "in", "-o", tmp_path / "out", *TINY_OPTS, *args, expect=2)
    assert word in result.stderr and not (tmp_path / "out").exists()


def _redrawn(out, rec, scale):
    """The overlay of ``rec`` drawn afresh from its stored map at ``scale`` (what the run should have written)."""
    import json

    from salcli import overlay
    from salcli.config import Preprocess, RunConfig
    from salcli.images import ImageDataset, ImageItem
    from salcli.methods import get

    run = json.loads((out / "run.json").read_text())
    config = RunConfig.from_json(run["settings"])
    pre = Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in run["preprocess"].items()})
    display = overlay.Display.from_config(config)
    item = ImageDataset([ImageItem(Path(rec["source"]), rec["image"])], pre, display=display.size)[0]
    m = np.load(out / rec["npy"])
    mode = overlay.mode_of(get(rec["method"]), display, m)
    return overlay.draw(display, pre.resize, mode, m, item, overlay.caption(rec), tuple(scale))


def test_cli_scale_run_one_range_per_method_and_resume_redraws(cli, tmp_path):
    from PIL import Image

    from conftest import TINY_OPTS, manifest

    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    flat = np.full((20, 20, 3), 128, np.uint8)
    flat[8:12, 8:12] = 140  # nearly flat: a faint input x gradient map
    Image.fromarray(flat).save(folder / "a_flat.png")
    opts = [*TINY_OPTS, "-m", "input-x-gradient", "-m", "vanilla", "--scale", "run", "-q"]
    cli("explain", folder, "-o", out, *opts)
    first = {(r["image"], r["method"]): r for r in manifest(out)}
    _photo(folder / "b.png", 20, 20, seed=1)  # a nightly run finds two new, contrasted pictures
    _photo(folder / "c.png", 20, 20, seed=2)
    cli("explain", folder, "-o", out, *opts)
    records = manifest(out)
    assert {r["status"] for r in records if r["image"] == "a_flat.png"} == {"skipped"}  # no map recomputed
    for method in ("input-x-gradient", "vanilla"):
        mine = [r for r in records if r["method"] == method]
        expected = [min(r["display_range"][0] for r in mine), max(r["display_range"][1] for r in mine)]
        assert all(r["overlay_scale"] == expected for r in mine)  # one range for the method
        old = first[("a_flat.png", method)]["overlay_scale"]
        assert old != expected  # the new pictures changed the range: the old overlay had to be redrawn
        for r in mine:
            np.testing.assert_array_equal(_png(out / r["overlay"]), _redrawn(out, r, expected))
    # a rerun with nothing new redraws nothing and changes nothing
    before = {r["overlay"]: (out / r["overlay"]).stat().st_mtime_ns for r in records}
    cli("explain", folder, "-o", out, *opts)
    assert {r["overlay"]: (out / r["overlay"]).stat().st_mtime_ns for r in manifest(out)} == before


def test_cli_fixed_scale(cli, tmp_path):
    import json

    from conftest import TINY_OPTS, manifest

    _photo(tmp_path / "in" / "a.png", 20, 20)
    cli("explain", tmp_path / "in", "-o", tmp_path / "f", *TINY_OPTS, "-m", "input-x-gradient", "--scale", "1e-3",
        "-q")
    rec = manifest(tmp_path / "f")[0]
    assert json.loads((tmp_path / "f" / "run.json").read_text())["overlay"]["scale"] == "1e-3"
    assert "display_range" not in rec
    np.testing.assert_array_equal(_png(tmp_path / "f" / rec["overlay"]), _redrawn(tmp_path / "f", rec, (0.0, 1e-3)))


# ---------------------------------------------------------------------------------------------- contact sheet
def _contact_sheet():
    import importlib.util
    import sys

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("contact_sheet", ROOT / "scripts" / "contact_sheet.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("images", [5, 6])
def test_contact_sheet_labels_never_overlap_and_are_legible_at_readme_width(images):
    from conftest import SAMPLES

    from salcli import overlay
    from salcli.methods import get, names

    sheet_mod = _contact_sheet()
    classes = [p.name for p in sorted((SAMPLES / "fashion-mnist").iterdir())][:images]
    methods = names()
    signed = [False] + [overlay.mode_of(get(m), overlay.Display()) == "all" for m in methods]
    sheet = sheet_mod.layout(["original", *methods], classes, signed)
    boxes = [("text", t, b) for t, _, b in sheet.texts] + [("tile", f"{r},{c}", b) for r, c, b in sheet.tiles] \
        + [("bar", str(r), b) for r, b in sheet.bars]
    w, h = sheet.size
    for kind, what, box in boxes:
        assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h, (kind, what, box)
    for i, (k1, t1, b1) in enumerate(boxes):
        for k2, t2, b2 in boxes[i + 1:]:
            assert not _overlap(b1, b2), f"{k1} {t1!r} {b1} overlaps {k2} {t2!r} {b2}"
    assert {t for t, _, _ in sheet.texts} >= set(methods) | set(classes)  # every label whole, none cut
    scale = min(1.0, 800 / w)  # shown at the README's width
    assert sheet_mod.FONT * scale >= 12 and sheet_mod.SMALL * scale >= 9.5
    # a header too long for its column is cut to fit, not drawn over its neighbour
    long = sheet_mod.layout(["original", "vanilla"], ["a very long class name indeed", "b"], [False, False])
    heads = [b for t, s, b in long.texts if b[1] < 2 * sheet_mod.PAD + sheet_mod.FONT]
    assert len(heads) == 2 and not _overlap(*heads) and heads[0][2] - heads[0][0] <= 112


def test_cli_prune_removes_the_picture_too(cli, tmp_path):
    from conftest import TINY_OPTS

    for name in ("a", "b"):
        _photo(tmp_path / "in" / f"{name}.png", 20, 20)
    out = tmp_path / "out"
    cli("explain", tmp_path / "in", "-o", out, *TINY_OPTS, "-q")
    assert (out / "original" / "b.png.jpg").is_file()
    (tmp_path / "in" / "b.png").unlink()
    cli("explain", tmp_path / "in", "-o", out, *TINY_OPTS, "--prune", "-q")
    assert not (out / "original" / "b.png.jpg").exists() and (out / "original" / "a.png.jpg").is_file()
