"""salcli/maps.py against values worked out by hand: resizing, the display range's defaults and edges, and
non-finite values. (Properties over any map are in test_properties.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from salcli import maps


def test_resize_is_bilinear_with_half_pixel_centres():
    """align_corners=False: a 1x2 map [0, 1] doubled in width samples at x = (i + 0.5) / 2 - 0.5 in source pixels,
    clamped: [0, 0.25, 0.75, 1]. (align_corners=True would give [0, 1/3, 2/3, 1].)"""
    m = torch.tensor([[[0.0, 1.0]]])
    out = maps.resize(m, (1, 4))
    torch.testing.assert_close(out, torch.tensor([[[0.0, 0.25, 0.75, 1.0]]]))
    assert maps.resize(m, (1, 2)) is m  # already at the size: the same tensor


def test_display_range_defaults_are_absolute_at_the_99th_percentile():
    m = np.arange(1, 101, dtype=np.float64).reshape(10, 10)
    m[0, 0] = -1000.0  # one extreme pixel, by magnitude
    lo, hi = maps.display_range(m)
    assert (lo, hi) == maps.display_range(m, "absolute", 99.0)
    assert lo == 2.0 and hi == pytest.approx(np.percentile(np.abs(m), 99))
    assert hi < 1000.0  # the extreme pixel does not set the range
    assert maps.display_range(np.zeros((0, 3))) == (0.0, 0.0)  # an empty map: nothing to show


def test_an_unknown_sign_mode_lists_the_modes():
    with pytest.raises(ValueError, match="unknown sign mode 'both'; one of all, positive, negative, absolute"):
        maps.display_range(np.ones((2, 2)), "both")


def test_check_finite_says_what_a_nan_map_usually_means():
    with pytest.raises(maps.MapNotFinite, match=r"the map holds 1 NaN and 1 infinite value\(s\) of 4; no overlay is "
                       r"drawn for it \(a NaN map usually means the model's output was NaN or a method diverged\)"):
        maps.check_finite(np.array([[np.nan, np.inf], [0.0, 1.0]]))


def test_display_scale_counts_non_finite_values_as_zero_and_takes_the_percentile():
    m = np.array([[1.0, 2.0], [3.0, 4.0]])
    for bad in (np.inf, -np.inf, np.nan):
        with_bad = m.copy()
        with_bad[0, 0] = bad
        zero = m.copy()
        zero[0, 0] = 0.0
        np.testing.assert_array_equal(maps.display_scale(with_bad), maps.display_scale(zero))
    ramp = np.arange(11, dtype=np.float64).reshape(1, 11)
    np.testing.assert_allclose(maps.display_scale(ramp, percentile=50), np.clip(ramp / 5, 0, 1))
    np.testing.assert_allclose(maps.display_scale(ramp), np.clip(ramp / np.percentile(ramp, 99), 0, 1), rtol=1e-6)


def test_absolute_mode_spans_the_range_from_its_minimum():
    """|m| from lo to hi maps to 0..1: a map with an offset (RISE) keeps its contrast."""
    m = np.array([[2.0, 3.0, 4.0]])
    lo, hi = maps.display_range(m, "absolute", 100.0)
    assert (lo, hi) == (2.0, 4.0)
    np.testing.assert_allclose(maps.display_values(m, "absolute", lo, hi), [[0.0, 0.5, 1.0]])
