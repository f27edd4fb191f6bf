"""Every evaluation measure pinned against an independent implementation, on the same maps and masks.

References: Quantus 0.6.0 (its metrics called with their normalise/abs flags off, so they see the same map), SciPy's
``spearmanr``, scikit-image's ``structural_similarity``, and closed forms computed by hand (a model whose logit is
a weighted sum of the pixels, so every point of a deletion or insertion curve is known exactly). The observed
agreement (max absolute difference) is recorded beside each tolerance; tolerances sit a little above it.

The tests that name a one-line mistake ((a) deletion AUC ranked as higher-is-better, (b) the stability shift compared
along the height axis, (c) negative mass counted in the energy) were checked to fail with that mistake made.
"""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import PHOTOS

from salcli import measures
from salcli import metrics as m
from salcli.evaluation import RANDOM, _summarize
from salcli.measures.deletion import Deletion
from salcli.measures.deletion_road import DeletionRoad
from salcli.measures.insertion import Insertion
from salcli.measures.localization import Localization
from salcli.measures.stability import Stability
from salcli.methods.base import image_seed

# Observed agreement (max |salcli - reference|), Quantus 0.6.0 / NumPy 2.4 / SciPy 1.17 / scikit-image 0.26, CPU:
ENERGY_TOL = 2e-7  # observed 4.4e-8: Quantus sums the float32 map in float32, salcli in float64
IOU_TOL = 1e-12  # observed 2.8e-17
CURVE_TOL = 1e-7  # observed 0 (deletion curve vs PixelFlipping: the same float32 forward passes)
AUC_TOL = 1e-7  # observed 3.1e-8 (salcli's AUC of the float32 curve)
# salcli's conjugate gradients (stopped at residual <= 1e-6 x the image's range) vs Quantus's exact sparse solve.
# Gaps of 1e-5 are 1000x below the noise (std 0.01) ROAD adds to the imputed pixels on purpose.
# 12x12 noise, random removal: observed 3.3e-16 at 10%, 2.1e-6 at 30%, 3.3e-6 at 50%, 1.8e-5 at 70%
ROAD_SCATTERED_TOL = {0.1: 5e-5, 0.3: 5e-5, 0.5: 5e-5, 0.7: 5e-5}
# one compact removed region: observed 3.5e-6 (12 px, 30%), 4.3e-6 (12 px, 60%), 1.5e-5 (24 px), 6.1e-5 (64 px)
ROAD_BLOB_TOL = 2e-4
ROAD_PHOTO_TOL = 5e-4  # observed 1.7e-4: chelsea at 224 px, float32, a blob of half the pixels removed
ROAD_CONVERGED_TOL = 1e-9  # a tolerance of 1e-13 in float64: the same equation, to rounding
# the deletion-ROAD measure's curve vs Quantus's exact imputation + the same noise, 8x8, random map, 8 steps:
# observed 1.6e-6 (curve), 1.1e-7 (AUC); with 60 Jacobi sweeps it was 1.7e-4 and 2.6e-5
ROAD_CURVE_TOL = 2e-5
ROAD_AUC_TOL = 2e-6
SENS_TOL = 1e-7  # observed 2.6e-8 (norms of float32 maps)
SIM_TOL = 1e-12  # Spearman observed 1.1e-16 (stability's: 0), SSIM 1.0e-15
ANALYTIC_TOL = 3e-7  # closed forms in float64 vs the float32 forward pass; observed 6.6e-8 (AUC 3.6e-8)
BLUR_TOL = 5e-7  # salcli's gaussian_blur (float32) vs the formula in float64; observed 2.0e-7

QUIET = dict(disable_warnings=True, display_progressbar=False)


@pytest.fixture(scope="module")
def quantus():
    return pytest.importorskip("quantus")


def quiet(call, *args, **kwargs):
    """Run a Quantus metric without its warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(call(*args, **kwargs), dtype=np.float64)


def boxes(rng, b, h, w, smallest=2, largest=7) -> np.ndarray:
    """b random box masks (b, h, w) bool, none empty."""
    s = np.zeros((b, h, w), bool)
    for i in range(b):
        hh, ww = rng.integers(smallest, largest, 2)
        y0, x0 = rng.integers(0, h - hh + 1), rng.integers(0, w - ww + 1)
        s[i, y0:y0 + hh, x0:x0 + ww] = True
    return s


def localization(maps: np.ndarray, masks: np.ndarray, tolerance: float = 0.0, top_k: float = 0.2) -> dict:
    """The registered localization measure on (B, H, W) maps, as ``salcli evaluate`` runs it."""
    batch = measures.Batch(keys=[f"{i}.png" for i in range(len(maps))], x=None, maps=torch.from_numpy(maps),
                           target=None, seed=0, engine=None, method="m", masks=list(masks),
                           options=SimpleNamespace(tolerance=tolerance, top_k=top_k))
    return Localization().measure(batch)


@pytest.fixture(scope="module")
def loc_data():
    """48 tie-free float32 maps on 16x16 with box masks; the maps lean toward the box (40% are hits)."""
    rng = np.random.default_rng(0)
    b, h, w = 48, 16, 16
    s = boxes(rng, b, h, w)
    a = (rng.normal(size=(b, h, w)) + 1.5 * s * rng.random((b, 1, 1))).astype(np.float32)
    x = rng.normal(size=(b, 1, h, w)).astype(np.float32)
    return SimpleNamespace(a=a, s=s, x=x, y=np.zeros(b, int), s4=s[:, None].astype(np.float32))


# ---------------------------------------------------------------------------------------------- pointing game
def test_pointing_game_at_tolerance_zero_is_quantus_pointing_game(quantus, loc_data):
    d = loc_data
    ref = quiet(quantus.PointingGame(abs=False, normalise=False, **QUIET), model=None, x_batch=d.x, y_batch=d.y,
                a_batch=d.a[:, None], s_batch=d.s4, device="cpu")
    ours = np.array(localization(d.a, d.s, tolerance=0.0)["pointing_game"])
    assert 0.2 < ours.mean() < 0.8  # both outcomes occur
    np.testing.assert_array_equal(ours, ref)  # exact


def _hand_pointing(a: np.ndarray, s: np.ndarray, tolerance: float) -> bool:
    """The first maximum in row-major order, and the Euclidean distance in pixels to the nearest object pixel."""
    h, w = a.shape
    best = max(range(h * w), key=lambda p: (a[p // w, p % w], -p))
    y, x = divmod(best, w)
    return min(math.hypot(yy - y, xx - x) for yy in range(h) for xx in range(w) if s[yy, xx]) <= tolerance


@pytest.mark.parametrize("tolerance", [0.0, 1.0, 1.5, 2.0, 3.2, 6.0])
def test_pointing_game_tolerance_is_the_euclidean_distance_in_pixels(loc_data, tolerance):
    d = loc_data
    ours = localization(d.a, d.s, tolerance=tolerance)["pointing_game"]
    assert ours == [float(_hand_pointing(d.a[i], d.s[i], tolerance)) for i in range(len(d.a))]


def test_pointing_game_tolerance_boundary_is_inclusive():
    s = np.zeros((12, 12), bool)
    s[2, 2] = True
    a = np.zeros((12, 12), np.float32)
    a[5, 6] = 1.0  # 3 rows and 4 columns away: distance 5
    assert not m.pointing_hit(a, s, 4.999)
    assert m.pointing_hit(a, s, 5.0)


def test_pointing_game_on_a_plateau_maximum_differs_from_quantus(quantus):
    """A difference in definition, pinned so that it stays visible: on a map whose maximum is a plateau
    (occlusion windows, LIME's segments), salcli points at the first maximum in row-major order (np.argmax);
    Quantus counts a hit when any maximum lies in the mask."""
    a = np.zeros((1, 8, 8), np.float32)
    a[0, 2:6, 2:6] = 1.0  # a 4x4 plateau; its first pixel (2, 2) is outside the mask
    s = np.zeros((1, 8, 8), bool)
    s[0, 5, 5] = True
    ref = quiet(quantus.PointingGame(abs=False, normalise=False, **QUIET), model=None,
                x_batch=np.zeros((1, 1, 8, 8), np.float32), y_batch=np.zeros(1, int), a_batch=a[:, None],
                s_batch=s[:, None].astype(np.float32), device="cpu")
    assert ref[0] == 1.0
    assert not m.pointing_hit(a[0], s[0], 0.0)
    assert not m.pointing_hit(a[0], s[0], 4.2)
    assert m.pointing_hit(a[0], s[0], 4.25)  # a tolerance of 3√2 = 4.243 px reaches the plateau's far corner


# ---------------------------------------------------------------------------------------------- energy
def test_energy_is_relevance_mass_accuracy_of_the_positive_part(quantus, loc_data):
    d = loc_data
    ours = np.array(localization(d.a, d.s)["energy"])
    rma = quiet(quantus.RelevanceMassAccuracy(abs=False, normalise=False, **QUIET), model=None, x_batch=d.x,
                y_batch=d.y, a_batch=np.clip(d.a, 0, None)[:, None], s_batch=d.s4, device="cpu")
    al = quiet(quantus.AttributionLocalisation(abs=False, normalise=False, positive_attributions=True, **QUIET),
               model=None, x_batch=d.x, y_batch=d.y, a_batch=d.a[:, None], s_batch=d.s4, device="cpu")
    assert np.abs(ours - rma).max() < ENERGY_TOL
    assert np.abs(ours - al).max() < ENERGY_TOL


def test_energy_ignores_negative_mass_outside_the_object(quantus):
    """(c): large negative values outside the mask must not count (not as positive mass, not as negative)."""
    rng = np.random.default_rng(1)
    s = boxes(rng, 6, 16, 16)
    a = np.where(s, rng.uniform(0.5, 1.0, s.shape), -50.0 * rng.uniform(0.5, 1.0, s.shape)).astype(np.float32)
    ours = np.array([m.energy_inside(a[i], s[i]) for i in range(len(a))])
    assert np.all(ours == 1.0)
    rma = quiet(quantus.RelevanceMassAccuracy(abs=False, normalise=False, **QUIET), model=None,
                x_batch=np.zeros((6, 1, 16, 16), np.float32), y_batch=np.zeros(6, int),
                a_batch=np.clip(a, 0, None)[:, None], s_batch=s[:, None].astype(np.float32), device="cpu")
    np.testing.assert_allclose(rma, 1.0, atol=ENERGY_TOL)
    # what the mistakes would give: |a| as mass puts most of it outside, the raw sum is negative
    assert all(np.abs(a[i])[s[i]].sum() / np.abs(a[i]).sum() < 0.1 for i in range(len(a)))
    assert all(a[i].astype(np.float64).sum() < 0 for i in range(len(a)))
    # negative mass inside does not count either; the positive share is what is left
    b = np.where(s[0], 1.0, 0.0)
    b.reshape(-1)[np.flatnonzero(s[0])[0]] = -100.0  # negative inside
    b.reshape(-1)[np.flatnonzero(~s[0])[0]] = 1.0  # one positive unit outside
    inside = float(s[0].sum() - 1)
    assert m.energy_inside(b, s[0]) == pytest.approx(inside / (inside + 1.0), abs=1e-15)


def test_energy_of_a_map_without_positive_mass_is_zero():
    s = np.zeros((8, 8), bool)
    s[2:4, 2:4] = True
    assert m.energy_inside(-np.ones((8, 8)), s) == 0.0


# ---------------------------------------------------------------------------------------------- top-k IoU
@pytest.mark.parametrize("k", [0.05, 0.2, 0.5])
def test_top_k_iou_from_quantus_top_k_intersection(quantus, loc_data, k):
    """Quantus's TopKIntersection is |top n ∩ mask| / n; IoU = i / (n + |mask| - i) with n = round(k * pixels)."""
    d = loc_data
    n = int(round(k * d.a[0].size))
    tki = quiet(quantus.TopKIntersection(k=n, abs=False, normalise=False, **QUIET), model=None, x_batch=d.x,
                y_batch=d.y, a_batch=d.a[:, None], s_batch=d.s4, device="cpu")
    inter = tki * n
    ref = inter / (n + d.s.reshape(len(d.s), -1).sum(1) - inter)
    ours = np.array(localization(d.a, d.s, top_k=k)["iou"])
    assert np.abs(ours - ref).max() < IOU_TOL


# ---------------------------------------------------------------------------------------------- analytic localization
def test_a_map_equal_to_the_mask_scores_perfectly_and_its_inverse_scores_zero():
    s = np.zeros((8, 8), bool)
    s[2:6, 3:7] = True  # 16 of 64 pixels: k = 0.25 is the mask's fraction
    out = localization(np.stack([s, ~s]).astype(np.float32), np.stack([s, s]), tolerance=0.0, top_k=0.25)
    assert out == {"pointing_game": [1.0, 0.0], "energy": [1.0, 0.0], "iou": [1.0, 0.0]}


# ---------------------------------------------------------------------------------------------- deletion (zero fill)
def _tiny_cnn(channels: int) -> torch.nn.Module:
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(channels, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16, 3))
    return net.eval()


def _curve_batch(x, maps, target, steps, forward, seed=0):
    return measures.Batch(keys=[f"img{i}.png" for i in range(len(x))], x=x, maps=maps, target=target, seed=seed,
                          engine=SimpleNamespace(forward=forward, chunk=7), method="m", masks=[None] * len(x),
                          options=SimpleNamespace(steps=steps))


@pytest.mark.parametrize("channels,size,features_in_step", [(1, 8, 4), (1, 8, 1), (3, 12, 36)])
def test_deletion_is_quantus_pixel_flipping_with_a_zero_baseline(quantus, channels, size, features_in_step):
    """Quantus's PixelFlipping (baseline 0, softmax) gives the curve after each step, without the intact point, and
    counts features per channel (the map is broadcast over channels, so 36 features = 12 pixels of an RGB image);
    salcli's deletion with steps = pixels / (features_in_step / channels) is the same curve with p(x) in front,
    and its AUC is the trapezoid on [0, 1]: (trapz(quantus, dx=1) + (p0 + p1) / 2) / steps."""
    net = _tiny_cnn(channels)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, channels, size, size, generator=g)
    maps = torch.rand(4, size, size, generator=g)
    target = torch.tensor([0, 1, 2, 1])
    steps = channels * size * size // features_in_step
    batch = _curve_batch(x, maps, target, steps, net)
    aucs = np.array(Deletion().measure(batch)["deletion_auc"])
    ours = torch.stack(batch.curves["deletion"]).double().numpy()
    ref = quiet(quantus.PixelFlipping(features_in_step=features_in_step, perturb_baseline=0.0, abs=False,
                                      normalise=False, **QUIET),
                model=net, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=maps.numpy()[:, None], device="cpu",
                softmax=True)
    assert ref.shape == (4, steps) and ours.shape == (4, steps + 1)
    with torch.no_grad():
        p0 = torch.softmax(net(x), 1)[torch.arange(4), target].double().numpy()
    assert np.abs(ours[:, 0] - p0).max() < CURVE_TOL
    assert np.abs(ours[:, 1:] - ref).max() < CURVE_TOL
    # (Quantus's own calculate_auc calls np.trapz, which NumPy 2 removed; the trapezoid is written out here)
    ref_auc = (np.trapezoid(ref, dx=1, axis=1) + (ours[:, 0] + ours[:, 1]) / 2) / steps
    assert np.abs(aucs - ref_auc).max() < AUC_TOL


class WeightedSum(torch.nn.Module):
    """logits = [sum(x * w), 0]: p(class 0) = sigmoid(sum(x * w)), p(class 1) = 1 - that."""

    def __init__(self, w: np.ndarray):
        super().__init__()
        self.w = torch.from_numpy(w.astype(np.float32))

    def forward(self, x):
        z = (x * self.w).sum(dim=(1, 2, 3))
        return torch.stack([z, torch.zeros_like(z)], dim=1)


def _p(z: float, target: int) -> float:
    return 1 / (1 + math.exp(-z)) if target == 0 else 1 / (1 + math.exp(z))


def _order(sal: np.ndarray) -> list[int]:
    """Pixels most salient first; ties in row-major order."""
    flat = sal.reshape(-1)
    return sorted(range(flat.size), key=lambda p: (-float(flat[p]), p))


def _analytic_curve(x: np.ndarray, other: np.ndarray, w: np.ndarray, sal: np.ndarray, target: int, steps: int,
                    mode: str) -> np.ndarray:
    """Deletion: the first n pixels (by the map) take ``other``; insertion: they take x, the rest ``other``."""
    c, h, wd = x.shape
    order = _order(sal)
    out = []
    for i in range(steps + 1):
        n = round(i * h * wd / steps)
        changed = np.zeros(h * wd, bool)
        changed[order[:n]] = True
        changed = changed.reshape(h, wd)
        if mode == "deletion":
            img = np.where(changed, other, x)
        else:
            img = np.where(changed, x, other)
        out.append(_p(float((img.astype(np.float64) * w).sum()), target))
    return np.array(out)


def test_deletion_curve_and_auc_in_closed_form():
    rng = np.random.default_rng(3)
    h = w = 8
    mask = np.zeros((h, w), bool)
    mask[1:5, 2:6] = True
    weight = np.where(mask, 0.1, 0.02)[None].repeat(3, 0)  # (3, 8, 8)
    x = rng.uniform(-1, 2, (2, 3, h, w)).astype(np.float32)
    maps = np.stack([mask.astype(np.float32), rng.random((h, w)).astype(np.float32)])  # the mask itself (ties)
    target = [0, 1]
    for steps in (16, 5):  # 5: 64 / 5 pixels per step, rounded: 0, 13, 26, 38, 51, 64
        batch = _curve_batch(torch.from_numpy(x), torch.from_numpy(maps), torch.tensor(target), steps,
                             WeightedSum(weight))
        aucs = Deletion().measure(batch)["deletion_auc"]
        ours = torch.stack(batch.curves["deletion"]).double().numpy()
        for i in range(2):
            ref = _analytic_curve(x[i], np.zeros_like(x[i]), weight, maps[i], target[i], steps, "deletion")
            assert np.abs(ours[i] - ref).max() < ANALYTIC_TOL
            assert aucs[i] == pytest.approx(np.trapezoid(ref, dx=1 / steps), abs=ANALYTIC_TOL)
        if steps == 16:  # the mask map has deleted the whole object (16 of 64 pixels) after 4 steps of 4 pixels
            rest = float((x[0].astype(np.float64) * weight * ~mask).sum())
            assert ours[0][4] == pytest.approx(_p(rest, 0), abs=ANALYTIC_TOL)
            assert ours[0][0] == pytest.approx(_p(float((x[0].astype(np.float64) * weight).sum()), 0),
                                               abs=ANALYTIC_TOL)
        assert ours[:, -1] == pytest.approx([0.5, 0.5], abs=ANALYTIC_TOL)  # everything deleted: z = 0


def _blur_reference(img: np.ndarray, kernel: int = 11, sigma: float = 5.0) -> np.ndarray:
    """Separable Gaussian from the formula exp(-t^2 / 2 sigma^2), normalized; reflect padding (NumPy's 'reflect',
    the edge not repeated), or edge replication when the image is not larger than half the kernel."""
    half = kernel // 2
    t = np.arange(kernel) - half
    g = np.exp(-t ** 2 / (2 * sigma ** 2))
    g /= g.sum()
    mode = "reflect" if min(img.shape[-2:]) > half else "edge"
    p = np.pad(img.astype(np.float64), ((0, 0), (half, half), (half, half)), mode=mode)
    c, h, w = img.shape
    rows = np.stack([(p[:, :, j:j + kernel] * g).sum(-1) for j in range(w)], axis=-1)  # (c, h + 2 half, w)
    return np.stack([(rows[:, i:i + kernel, :] * g[:, None]).sum(1) for i in range(h)], axis=1)


@pytest.mark.parametrize("size", [12, 5])  # 5: replicate padding (the image is not larger than half the kernel)
def test_the_insertion_fill_is_a_gaussian_blur_of_kernel_11_sigma_5(size):
    from salcli.methods.baselines import gaussian_blur

    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 3, size, size)).astype(np.float32)
    ours = gaussian_blur(torch.from_numpy(x)).double().numpy()
    ref = np.stack([_blur_reference(x[i]) for i in range(2)])
    assert np.abs(ours - ref).max() < BLUR_TOL
    const = torch.full((1, 3, size, size), 0.7)
    assert torch.allclose(gaussian_blur(const), const, atol=1e-6)  # a constant image is its own blur


def test_insertion_curve_and_auc_in_closed_form():
    rng = np.random.default_rng(5)
    h = w = 12
    weight = 0.1 * rng.normal(size=(3, h, w))
    x = rng.uniform(-1, 1, (2, 3, h, w)).astype(np.float32)
    maps = rng.random((2, h, w)).astype(np.float32)
    target = [0, 1]
    steps = 12
    batch = _curve_batch(torch.from_numpy(x), torch.from_numpy(maps), torch.tensor(target), steps,
                         WeightedSum(weight))
    aucs = Insertion().measure(batch)["insertion_auc"]
    ours = torch.stack(batch.curves["insertion"]).double().numpy()
    for i in range(2):
        ref = _analytic_curve(x[i], _blur_reference(x[i]), weight, maps[i], target[i], steps, "insertion")
        assert ref[-1] == pytest.approx(_p(float((x[i].astype(np.float64) * weight).sum()), target[i]))
        assert np.abs(ours[i] - ref).max() < ANALYTIC_TOL
        assert aucs[i] == pytest.approx(np.trapezoid(ref, dx=1 / steps), abs=ANALYTIC_TOL)
    # insertion into a constant image: the blur is the image, the curve is flat at p(x)
    flat = np.full((1, 3, h, w), 0.3, np.float32)
    curve = m.perturbation_curve(WeightedSum(weight), torch.from_numpy(flat), torch.from_numpy(maps[:1]),
                                 torch.tensor([0]), "insertion", "blur", steps=4)
    assert torch.allclose(curve, curve[:, :1].expand_as(curve), atol=1e-6)


# ---------------------------------------------------------------------------------------------- ROAD imputation
def _road_reference(x: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Quantus's noisy linear imputation (an exact sparse solve), noise 0; x (C, H, W), removed (H, W) bool."""
    from quantus.functions.perturb_func import noisy_linear_imputation

    return noisy_linear_imputation(x, np.flatnonzero(removed.reshape(-1)), noise=0.0)


def _ours_road(x: np.ndarray, removed: np.ndarray, **options) -> np.ndarray:
    return m.noisy_linear_imputation(torch.from_numpy(x)[None], torch.from_numpy(removed)[None, None], noise=0.0,
                                     **options)[0].numpy()


def _blob(h: int, fraction: float) -> np.ndarray:
    """The ``fraction`` of pixels nearest a point: what a blob-shaped map removes."""
    yy, xx = np.mgrid[:h, :h]
    d = (yy - h / 3) ** 2 + (xx - h / 2) ** 2
    removed = np.zeros(h * h, bool)
    removed[np.argsort(d.reshape(-1), kind="stable")[:int(fraction * h * h)]] = True
    return removed.reshape(h, h)


def test_road_imputation_matches_quantus_when_removed_pixels_are_scattered(quantus):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(3, 12, 12))
    for fraction, tol in ROAD_SCATTERED_TOL.items():
        removed = rng.random((12, 12)) < fraction
        ours, ref = _ours_road(x, removed), _road_reference(x, removed)
        np.testing.assert_array_equal(ours[:, ~removed], x[:, ~removed])  # kept pixels untouched
        assert np.abs(ours - ref).max() < tol


def test_road_imputation_on_a_blob_is_quantus_exact_solve(quantus):
    """ROAD's equation (each removed pixel = the 1/6, 1/12-weighted mean of its 8 neighbours) solved by salcli's
    conjugate gradients and by Quantus's sparse direct solve, where it is hardest: one compact removed region, on
    noise images and on a 224 px photo (float32, as evaluate runs it). The 60 Jacobi sweeps salcli used before
    were far off there: max |gap| 0.023-0.033 at 12 px, 0.17-0.27 at 64 px, 0.56-0.77 on the photo (mean 0.16-0.26
    over the removed pixels, against the image's std 0.73)."""
    from PIL import Image

    rng = np.random.default_rng(7)
    for h, fraction in ((12, 0.3), (12, 0.6), (24, 0.5), (64, 0.5)):
        x = rng.normal(size=(3, h, h))
        removed = _blob(h, fraction)
        assert np.abs(_ours_road(x, removed) - _road_reference(x, removed)).max() < ROAD_BLOB_TOL, (h, fraction)
    photo = np.asarray(Image.open(PHOTOS / "chelsea.jpg").convert("RGB").resize((224, 224)), np.float32) / 255
    x = ((photo - 0.45) / 0.25).transpose(2, 0, 1).copy()
    removed = _blob(224, 0.5)
    gap = np.abs(_ours_road(x, removed) - _road_reference(x.astype(np.float64), removed))
    assert gap.max() < ROAD_PHOTO_TOL
    # the same equation: to rounding once the tolerance is tight (float64)
    x = rng.normal(size=(3, 24, 24))
    removed = _blob(24, 0.5)
    gap = np.abs(_ours_road(x, removed, tolerance=1e-13) - _road_reference(x, removed)).max()
    assert gap < ROAD_CONVERGED_TOL


def test_deletion_road_measure_is_quantus_imputation_plus_the_same_seeded_noise(quantus):
    """The deletion-ROAD measure's curve, rebuilt from Quantus's exact imputation: at each of the steps + 1 points
    the image's generator (seeded by (seed, 'road:' + key)) draws one (C, H, W) normal sample, added at 0.01 to the
    removed pixels. With every pixel removed there is nothing to impute from: salcli fills 0 (Quantus's system is
    singular there)."""
    rng = np.random.default_rng(8)
    h = 8
    weight = rng.normal(size=(3, h, h))
    x = rng.normal(size=(2, 3, h, h)).astype(np.float32)
    maps = rng.random((2, h, h)).astype(np.float32)
    target, steps, seed = [0, 1], 8, 11
    batch = _curve_batch(torch.from_numpy(x), torch.from_numpy(maps), torch.tensor(target), steps,
                         WeightedSum(weight), seed=seed)
    aucs = DeletionRoad().measure(batch)["deletion_road_auc"]
    ours = torch.stack(batch.curves["deletion_road"]).double().numpy()
    for i in range(2):
        g = torch.Generator().manual_seed(image_seed(seed, "road:" + batch.keys[i]))
        order = _order(maps[i])
        ref = []
        for step in range(steps + 1):
            n = round(step * h * h / steps)
            removed = np.zeros(h * h, bool)
            removed[order[:n]] = True
            removed = removed.reshape(h, h)
            eps = torch.randn((3, h, h), generator=g).numpy().astype(np.float64)
            if n == 0:
                img = x[i].astype(np.float64)
            elif n == h * h:
                img = np.zeros_like(x[i], dtype=np.float64)
            else:
                img = _road_reference(x[i].astype(np.float64), removed)
            img = img + 0.01 * eps * removed
            ref.append(_p(float((img * weight).sum()), target[i]))
        ref = np.array(ref)
        assert np.abs(ours[i] - ref).max() < ROAD_CURVE_TOL
        assert aucs[i] == pytest.approx(np.trapezoid(ref, dx=1 / steps), abs=ROAD_AUC_TOL)


# ---------------------------------------------------------------------------------------------- stability
def _filtered_map(x: np.ndarray, kernel: np.ndarray, quantize: bool, circular: bool = True,
                  gains=(1.0,)) -> np.ndarray:
    """A 3x3 filter of sin(gain * x) (or of round(x)) summed over channels; ``gains`` per image (a high gain
    makes the map sensitive to noise). Circular: built from np.roll, so it commutes exactly with torch.roll;
    otherwise zero padding, which does not (the borders change)."""
    gain = np.resize(np.asarray(gains, np.float64), len(x)).reshape(-1, 1, 1, 1)
    r = np.round(x) if quantize else np.sin(gain * x)
    r = r.astype(np.float64).sum(1)
    if not circular:
        r = np.pad(r, ((0, 0), (1, 1), (1, 1)))
    out = np.zeros_like(r)
    for dy in range(3):
        for dx in range(3):
            out += kernel[dy, dx] * np.roll(r, (dy - 1, dx - 1), axis=(-2, -1))
    if not circular:
        out = out[:, 1:-1, 1:-1]
    return out.astype(np.float32)


class FakeEngine:
    """``attribute(method, x, target, keys)`` -> (B, H, W): a map that is a fixed function of the input."""

    chunk = 4

    def __init__(self, **how):
        self.kernel = np.random.default_rng(9).normal(size=(3, 3))
        self.how = how

    def attribute(self, method, x, target, keys):
        return torch.from_numpy(self.map(x.cpu().numpy()))

    def map(self, x: np.ndarray) -> np.ndarray:
        return _filtered_map(x, self.kernel, **self.how)


def _stability_batch(x, engine, seed=7):
    keys = [f"k{i}/img.png" for i in range(len(x))]
    target = torch.zeros(len(x), dtype=torch.long)
    return measures.Batch(keys=keys, x=x, maps=engine.attribute("m", x, target, keys), target=target, seed=seed,
                          engine=engine, method="m", masks=[None] * len(x), options=None)


def test_stability_shift_is_compared_along_the_width_axis():
    """(b): x is rolled one pixel along the width, so the shifted map is compared as b[:, 1:] vs base[:, :-1]. A map
    that commutes exactly with that roll and ignores 1% noise (a filter of round(x), x on integer levels) has
    stability 1 and max-sensitivity 0; compared along the height, it would not."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (3, 3, 10, 12), generator=g).float()
    engine = FakeEngine(quantize=True)
    out = Stability().measure(_stability_batch(x, engine))
    assert out["stability"] == pytest.approx([1.0] * 3, abs=1e-12)
    assert out["max_sensitivity"] == [0.0] * 3
    assert out["fragile"] == [False] * 3
    # the test can tell the axes apart: along the height the overlap does not match
    base = engine.attribute("m", x, None, None).numpy()
    b = engine.attribute("m", torch.roll(x, 1, dims=-1), None, None).numpy()
    assert max(m.spearman(base[i][:-1, :], b[i][1:, :]) for i in range(3)) < 0.5
    assert min(np.linalg.norm(b[i][1:, :] - base[i][:-1, :]) for i in range(3)) > 0.1


def test_max_sensitivity_is_quantus_max_sensitivity_over_the_two_perturbations(quantus):
    """Quantus's MaxSensitivity with nr_samples=1 per perturbation, the perturbation being exactly salcli's (the
    seeded 1% noise; the one-pixel roll, compared on the overlap through similarity_func), and no normalisation:
    salcli's max-sensitivity is the larger of the two. Stability is the mean of the two Spearman correlations."""
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 10, 12, generator=g)
    # zero padding: the roll changes the map at the borders; the second image's map is very sensitive to noise
    engine = FakeEngine(quantize=False, circular=False, gains=(1.0, 30.0, 1.0))
    batch = _stability_batch(x, engine)
    out = Stability().measure(batch)

    spread = (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3))).view(-1, 1, 1, 1)
    noise = torch.stack([torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(
        image_seed(batch.seed, "stability:" + k))) for k in batch.keys])
    noisy, shifted = (x + 0.01 * spread * noise).numpy(), torch.roll(x, 1, dims=-1).numpy()
    nb, h, w = batch.maps.shape

    def explain(model, inputs, targets, **kwargs):  # the engine's map, as Quantus's explain_func
        return engine.map(inputs)

    def on_overlap(a, b):  # Quantus passes a= and b= by name
        n = len(a)
        return (b.reshape(n, h, w)[..., 1:] - a.reshape(n, h, w)[..., :-1]).reshape(n, -1)

    common = dict(nr_samples=1, abs=False, normalise=False, **QUIET)
    a = batch.maps.numpy()[:, None]
    call = dict(model=None, x_batch=x.numpy(), y_batch=np.zeros(nb, int), a_batch=a, explain_func=explain,
                device="cpu")
    q_noise = quiet(quantus.MaxSensitivity(perturb_func=lambda arr, indices, **k: noisy.reshape(arr.shape),
                                           **common), **call)
    q_shift = quiet(quantus.MaxSensitivity(perturb_func=lambda arr, indices, **k: shifted.reshape(arr.shape),
                                           similarity_func=on_overlap, **common), **call)
    assert np.all(q_noise > 0) and np.all(q_shift > 0)
    assert q_noise[1] > q_shift[1] and q_noise[0] < q_shift[0]  # each term is the larger one somewhere
    assert np.abs(np.maximum(q_noise, q_shift) - np.array(out["max_sensitivity"])).max() < SENS_TOL

    base = batch.maps.numpy()
    mn, ms = explain(None, noisy, None), explain(None, shifted, None)
    ref = [np.mean([spearmanr(base[i].ravel(), mn[i].ravel()).statistic,
                    spearmanr(base[i][:, :-1].ravel(), ms[i][:, 1:].ravel()).statistic]) for i in range(nb)]
    assert np.abs(np.array(out["stability"]) - ref).max() < SIM_TOL


# ---------------------------------------------------------------------------------------------- similarity
def test_spearman_is_scipy_spearmanr_with_ties():
    spearmanr = pytest.importorskip("scipy.stats").spearmanr

    rng = np.random.default_rng(10)
    worst = 0.0
    for _ in range(10):
        p = rng.integers(0, 5, (16, 16)).astype(np.float64)  # many ties
        q = p + rng.integers(0, 3, (16, 16))
        u = rng.random((16, 16))
        v = u + 0.3 * rng.random((16, 16))
        for a, b in ((p, q), (u, v), (p, -q)):
            worst = max(worst, abs(m.spearman(a, b) - spearmanr(a.ravel(), b.ravel()).statistic))
    assert worst < SIM_TOL
    assert m.spearman(np.ones((4, 4)), u[:4, :4]) == 0.0  # by definition here; SciPy returns nan


def test_ssim_is_scikit_image_on_min_max_scaled_maps():
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity

    def scale(z):
        return (z - z.min()) / (z.max() - z.min())

    rng = np.random.default_rng(11)
    worst = 0.0
    for _ in range(10):
        u = rng.random((16, 20)) * 5 - 2
        v = u + rng.random((16, 20))
        p = rng.integers(0, 5, (16, 20)).astype(np.float64)
        for a, b in ((u, v), (p, u), (u, -v)):
            ref = structural_similarity(scale(a), scale(b), win_size=7, data_range=1, use_sample_covariance=False,
                                        gaussian_weights=False)
            worst = max(worst, abs(m.ssim(a, b) - ref))
    assert worst < SIM_TOL
    assert m.ssim(u, u) == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------------------------------------- directions
def test_deletion_auc_is_lower_is_better_against_the_random_map():
    """(a): a map whose deletion AUC is below the random map's beats it (✓), one above it does not (✗)."""
    assert measures.METRICS["deletion_auc"].better == measures.LOWER
    assert measures.METRICS["deletion_road_auc"].better == measures.LOWER
    assert measures.METRICS["insertion_auc"].better == measures.HIGHER
    rows = [{"image": "a", "method": "good", "deletion_auc": 0.10, "deletion_road_auc": 0.20},
            {"image": "b", "method": "good", "deletion_auc": 0.20, "deletion_road_auc": 0.30},
            {"image": "a", "method": "bad", "deletion_auc": 0.50, "deletion_road_auc": 0.60},
            {"image": "b", "method": "bad", "deletion_auc": 0.60, "deletion_road_auc": 0.70},
            {"image": "a", "method": RANDOM, "deletion_auc": 0.30, "deletion_road_auc": 0.40},
            {"image": "b", "method": RANDOM, "deletion_auc": 0.40, "deletion_road_auc": 0.50}]
    table = {r["method"]: r for r in _summarize(rows, ["good", "bad"])}
    assert table["good"]["beats_random"] == {"deletion_auc": True, "deletion_road_auc": True}
    assert table["bad"]["beats_random"] == {"deletion_auc": False, "deletion_road_auc": False}
