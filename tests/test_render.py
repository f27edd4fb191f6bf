"""Display normalization, overlays and channel reduction (pure array work)."""

from __future__ import annotations

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
