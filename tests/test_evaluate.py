"""Evaluation measures on constructed cases with known answers, and `salcli evaluate` end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import ROOT, SAMPLES, Cli, manifest
from torch import nn

from salcli import measures, metrics

MASKS = ROOT / "sample_masks" / "fashion-mnist"


@pytest.fixture
def blob():
    mask = np.zeros((20, 20), bool)
    mask[4:10, 5:12] = True
    return mask


def test_a_map_equal_to_the_mask_is_perfect_and_its_inverse_the_worst(blob):
    good, bad = blob.astype(float), (~blob).astype(float)
    assert metrics.pointing_hit(good, blob, tolerance=0) and not metrics.pointing_hit(bad, blob, tolerance=3)
    assert metrics.energy_inside(good, blob) == 1.0 and metrics.energy_inside(bad, blob) == 0.0
    k = blob.mean()
    assert metrics.top_k_iou(good, blob, k) == 1.0 and metrics.top_k_iou(bad, blob, k) == 0.0


def test_pointing_tolerance_counts_pixels(blob):
    near = np.zeros((20, 20))
    near[12, 8] = 1  # 3 px below the object's last row (9)
    assert not metrics.pointing_hit(near, blob, tolerance=2.9) and metrics.pointing_hit(near, blob, tolerance=3)


class Linear(nn.Module):
    """Two classes: logit_0 = w·x, logit_1 = 0, so p_0 = sigmoid(w·x)."""

    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, x):
        z = (x * self.w).sum(dim=(1, 2, 3))
        return torch.stack([z, torch.zeros_like(z)], dim=1)


def test_deletion_curve_of_a_linear_model_is_known_in_closed_form():
    torch.manual_seed(0)
    w, x = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4)
    contrib = (w * x)[0, 0]
    curve = metrics.perturbation_curve(Linear(w), x, contrib[None], torch.tensor([0]), "deletion", "zero", steps=16)
    order = torch.argsort(contrib.flatten(), descending=True)
    remaining = [contrib.flatten()[order[n:]].sum() for n in range(17)]
    expected = torch.sigmoid(torch.stack(remaining))
    torch.testing.assert_close(curve[0], expected, atol=1e-6, rtol=0)
    # deleting the most positive contributions first is the steepest descent: no ordering does better
    random_order = metrics.perturbation_curve(Linear(w), x, torch.rand(1, 4, 4), torch.tensor([0]), "deletion",
                                              "zero", steps=16)
    assert metrics.auc(curve) <= metrics.auc(random_order)


def test_insertion_starts_at_the_fill_and_ends_at_the_input():
    torch.manual_seed(1)
    w, x = torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8)
    curve = metrics.perturbation_curve(Linear(w), x, torch.rand(1, 8, 8), torch.tensor([0]), "insertion", "blur", 8)
    from salcli.methods.baselines import gaussian_blur

    assert float(curve[0, 0]) == pytest.approx(float(torch.sigmoid((w * gaussian_blur(x)).sum())), abs=1e-6)
    assert float(curve[0, -1]) == pytest.approx(float(torch.sigmoid((w * x).sum())), abs=1e-6)


def test_auc_of_known_curves():
    assert float(metrics.auc(torch.ones(1, 11))) == pytest.approx(1.0)
    assert float(metrics.auc(torch.linspace(1, 0, 11)[None])) == pytest.approx(0.5)


def test_noisy_linear_imputation_fills_a_ramp_with_the_ramp():
    ramp = torch.linspace(0, 1, 16).view(1, 1, 1, 16).expand(1, 1, 16, 16).clone()
    removed = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    removed[..., 5:11, 5:11] = True
    filled = metrics.noisy_linear_imputation(ramp, removed, noise=0.0)
    torch.testing.assert_close(filled, ramp, atol=1e-5, rtol=0)


def test_rank_correlation_and_ssim():
    a = np.arange(25, dtype=float).reshape(5, 5)
    assert metrics.spearman(a, a * 3 + 1) == pytest.approx(1.0)
    assert metrics.spearman(a, -a) == pytest.approx(-1.0)
    assert metrics.spearman(a, np.ones_like(a)) == 0.0
    assert metrics.ssim(a, a) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    assert metrics.ssim(a, rng.random((5, 5))) < 0.5


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run of gradcam and vanilla on one image per class (10 of the 30 samples, a third of the time), copied
    with its Class/file.png path so that the masks still match. The middle one of each class's three, by name, is
    chosen so that Grad-CAM beats the random map on energy, as over all 30 samples (the README's trust table):
    measured 0.66 against 0.48 here; not on every subset (the first of each class: 0.41 against 0.44)."""
    inputs = tmp_path_factory.mktemp("eval") / "fashion-mnist"
    for folder in sorted((SAMPLES / "fashion-mnist").iterdir()):
        files = sorted(folder.glob("*.png"))
        (inputs / folder.name).mkdir(parents=True)
        shutil.copy(files[len(files) // 2], inputs / folder.name)
    out = inputs.parent / "out"
    Cli()("explain", inputs, "-o", out, "-m", "gradcam", "-m", "vanilla", "-q")
    return out


def evaluate(cli, *args, expect=0):
    """`salcli evaluate` with 8 points per deletion/insertion curve: these tests check the table, the files and
    the gates, not the curves' resolution (the curves themselves are tested above)."""
    return cli("evaluate", *args, "--steps", 8, expect=expect)


def images(run_dir) -> list[str]:
    return sorted({r["image"] for r in manifest(run_dir)})


def test_evaluate_writes_metrics_table_and_plots(cli, run_dir):
    result = evaluate(cli, run_dir, "--masks", MASKS, "--json")
    doc = json.loads(result.stdout)
    rows = {r["method"]: r for r in doc["methods"]}
    assert set(rows) == {"gradcam", "vanilla", "random"}
    n = len(images(run_dir))
    for row in rows.values():
        assert row["images"] == n
        for col in ("pointing_game", "energy", "iou", "deletion_auc", "deletion_road_auc", "insertion_auc"):
            assert 0.0 <= row[col] <= 1.0
    assert rows["gradcam"]["energy"] > rows["random"]["energy"]
    assert set(rows["gradcam"]["beats_random"]) >= {"pointing_game", "energy", "deletion_auc", "insertion_auc"}
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 * n and all(json.loads(line)["image"] for line in lines)
    for plot in ("deletion", "deletion_road", "insertion"):
        assert (run_dir / "plots" / f"{plot}.png").stat().st_size > 1000
    assert json.loads((run_dir / "evaluation.json").read_text())["methods"]


def test_gates_exit_4_with_one_line_per_failure(cli, run_dir):
    result = evaluate(cli, run_dir, "--masks", MASKS, "-m", "gradcam", "--no-stability", "--min-energy", "1.01",
                      "--max-deletion-auc", "0", expect=4)
    failed = [line for line in result.stderr.splitlines() if "gate failed" in line]
    assert len(failed) == 2 and "energy of gradcam" in result.stderr and "bar 1.01" in result.stderr
    evaluate(cli, run_dir, "--masks", MASKS, "-m", "gradcam", "--no-stability", "--min-energy", "0.1")
    # a gate on a metric that was not measured (no masks) fails instead of passing silently
    assert "not measured" in evaluate(cli, run_dir, "-m", "gradcam", "--no-stability", "--min-pointing-game",
                                      "0.5", expect=4).stderr


def test_boxes_csv_give_localization(cli, run_dir, tmp_path):
    csv = tmp_path / "boxes.csv"
    keys = images(run_dir)
    csv.write_text("image,x0,y0,x1,y1\n" + "".join(f"{k},4,4,24,24\n" for k in keys[:3]))
    doc = json.loads(evaluate(cli, run_dir, "--boxes", csv, "--no-stability", "--json").stdout)
    assert doc["skipped_unannotated"] == len(keys) - 3
    assert all(r["pointing_game"] is not None for r in doc["methods"])


def test_evaluate_usage_errors(cli, run_dir, tmp_path):
    assert "run.json" in evaluate(cli, tmp_path, expect=2).stderr
    assert "no maps" in evaluate(cli, run_dir, "-m", "rise", expect=2).stderr
    evaluate(cli, run_dir, "--masks", tmp_path / "nope", expect=2)


# ---------------------------------------------------------------------------------------------- edges
# Each of these pins a behaviour that a one-line change in metrics.py or measures/ would alter (found by
# scripts/mutation.py: the mutants these tests kill survived every other test).
def test_measure_edges_empty_masks_small_masses_and_default_k():
    s = np.zeros((4, 5))
    with pytest.raises(ValueError, match="^empty mask$"):
        metrics.pointing_hit(s, np.zeros((4, 5), bool), 0)
    mask = np.zeros((4, 5), bool)
    mask[0, :2] = True
    small = np.zeros((4, 5))
    small[0, 0], small[3, 4] = 0.3, 0.1  # total positive mass 0.4 < 1
    assert metrics.energy_inside(small, mask) == pytest.approx(0.75)
    ramp = np.arange(20, dtype=np.float64)[::-1].reshape(4, 5).copy()  # 19, 18, ... in row-major order
    assert metrics.top_k_iou(ramp, mask) == metrics.top_k_iou(ramp, mask, 0.2)  # top 4 of 20: IoU 2/4
    assert metrics.top_k_iou(ramp, mask) == pytest.approx(0.5)
    assert metrics.top_k_iou(ramp, mask, 0.05) == pytest.approx(0.5)  # top 1 of 20, the mask's 2 pixels
    # ties: the top k are the first pixels in row-major order (a stable sort); on these 1000 values NumPy's
    # default sort picks others
    tied = np.random.default_rng(0).integers(0, 3, (20, 50)).astype(np.float64)
    first = np.zeros(1000, bool)
    first[np.argsort(-tied.reshape(-1), kind="stable")[:200]] = True
    assert set(np.argsort(-tied.reshape(-1))[:200]) != set(np.flatnonzero(first))  # the default sort differs here
    assert metrics.top_k_iou(tied, first.reshape(20, 50), 0.2) == 1.0


def test_ssim_of_constant_and_narrow_maps():
    const = np.full((8, 8), 3.0)
    rng = np.random.default_rng(1)
    assert np.isfinite(metrics.ssim(const, rng.random((8, 8))))
    assert metrics.ssim(const, const) == pytest.approx(1.0)
    tall = rng.random((12, 3))  # narrower than the 7-pixel window: the window shrinks to the map
    assert metrics.ssim(tall, tall) == pytest.approx(1.0)
    assert metrics.ssim(tall.T, tall.T) == pytest.approx(1.0)


def test_road_curve_without_generators_uses_the_global_generator():
    x = torch.randn(2, 1, 6, 6)
    curve = metrics.perturbation_curve(lambda t: t.flatten(1)[:, :3], x, torch.rand(2, 6, 6), torch.tensor([0, 1]),
                                       "deletion", "road", steps=3)
    assert curve.shape == (2, 4) and torch.isfinite(curve).all()


def test_curves_respect_the_engines_chunk():
    """The perturbed inputs go through the model ``engine.chunk`` at a time (what bounds memory on a GPU)."""
    from types import SimpleNamespace

    from salcli.measures.deletion import Deletion

    seen = []

    def forward(t):
        seen.append(len(t))
        return t.flatten(1)[:, :2]

    x = torch.randn(2, 1, 4, 4)
    batch = measures.Batch(keys=["a", "b"], x=x, maps=torch.rand(2, 4, 4), target=torch.tensor([0, 1]), seed=0,
                           engine=SimpleNamespace(forward=forward, chunk=1), method="m", masks=[None, None],
                           options=SimpleNamespace(steps=4))
    Deletion().measure(batch)
    assert seen and max(seen) == 1 and sum(seen) == 2 * 5


def test_localization_skips_images_without_a_mask_and_scores_the_others():
    from types import SimpleNamespace

    from salcli.measures.localization import Localization

    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    maps = torch.zeros(3, 4, 4)
    maps[:, :2, :2] = 1.0  # the mask itself
    batch = measures.Batch(keys=["a", "b", "c"], x=None, maps=maps, target=None, seed=0, engine=None, method="m",
                           masks=[None, np.zeros((4, 4), bool), mask], options=SimpleNamespace(tolerance=0, top_k=0.25))
    out = Localization().measure(batch)
    assert out == {"pointing_game": [None, None, 1.0], "energy": [None, None, 1.0], "iou": [None, None, 1.0]}


def _counting(monkeypatch):
    """Count the applications of ROAD's 3x3 neighbour sum (3 before the iterations, then 1 per iteration)."""
    calls = [0]
    inner = metrics._neighbours

    def counted(y):
        calls[0] += 1
        return inner(y)

    monkeypatch.setattr(metrics, "_neighbours", counted)
    return calls


def test_road_solver_starts_from_the_mean_of_each_images_kept_pixels():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 6, 6, generator=g, dtype=torch.float64) * torch.tensor([1.0, 10.0]).view(2, 1, 1, 1)
    removed = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
    removed[0, 0, :3] = True
    removed[1, 0] = True
    removed[1, 0, 4, 4] = False  # one pixel kept: the start is its value
    y = metrics.noisy_linear_imputation(x, removed, noise=0.0, max_iterations=0)
    for i in range(2):
        kept = ~removed[i, 0]
        for c in range(3):
            start = x[i, c][kept].mean()
            assert torch.allclose(y[i, c][removed[i, 0]], start.expand(int(removed[i].sum())), atol=1e-12)
            assert torch.equal(y[i, c][kept], x[i, c][kept])


def test_road_solver_stops_when_solved_and_its_rule_does_not_depend_on_the_images_scale(monkeypatch):
    calls = _counting(monkeypatch)
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    nothing = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    assert torch.equal(metrics.noisy_linear_imputation(x, nothing, noise=0.0), x) and calls[0] == 3
    blob = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    blob[..., 2:6, 1:7] = True
    counts = []
    for scale in (2.0 ** -12, 1.0, 2.0 ** 12):  # powers of two: the same numbers, exactly scaled
        calls[0] = 0
        metrics.noisy_linear_imputation(x * scale, blob, noise=0.0)
        counts.append(calls[0])
    assert counts[0] == counts[1] == counts[2] and 3 < counts[1] < 3 + 4 * 8
    calls[0] = 0
    metrics.noisy_linear_imputation(x, blob, noise=0.0, tolerance=0.0)  # never solved exactly: up to the limit
    assert calls[0] == 3 + 4 * 8
    calls[0] = 0
    metrics.noisy_linear_imputation(x, blob, noise=0.0, max_iterations=3)
    assert calls[0] == 3 + 3
    # each image against its own range: a wide-range image beside it does not loosen the other's rule
    calls[0] = 0
    metrics.noisy_linear_imputation(x, blob, noise=0.0)
    alone = calls[0]
    wide = torch.cat([x, 2000 * torch.rand(1, 1, 8, 8, dtype=torch.float64) - 1000])
    few = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    few[0] = blob[0]
    few[1, 0, 0, 0] = True
    calls[0] = 0
    metrics.noisy_linear_imputation(wide, few, noise=0.0)
    assert calls[0] == alone


def test_road_noise_only_when_asked():
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    x = torch.rand(1, 1, 5, 5)
    removed = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    removed[..., 1:3, 1:3] = True
    metrics.noisy_linear_imputation(x, removed, noise=0.0, generators=[g])
    assert torch.equal(g.get_state(), state)  # no noise asked for: nothing drawn
    noisy = metrics.noisy_linear_imputation(x, removed, generators=[g])
    clean = metrics.noisy_linear_imputation(x, removed, noise=0.0)
    assert not torch.equal(noisy, clean) and torch.equal(noisy[~removed.expand_as(x)], x[~removed.expand_as(x)])


def test_curve_defaults_messages_and_one_dimensional_auc(monkeypatch):
    seen = []

    def forward(t):
        seen.append(len(t))
        return t.flatten(1)[:, :2]

    x = torch.randn(4, 1, 4, 4)
    curve = metrics.perturbation_curve(forward, x, torch.rand(4, 4, 4), torch.zeros(4, dtype=torch.long),
                                       "deletion", "zero")
    assert curve.shape == (4, 33) and seen == [64, 64, 4]  # 32 steps by default, 64 inputs per model call
    for mode, fill, message in (("insertion", "road", "^the road fill is for deletion$"),
                                ("deletion", "noise", "^unknown fill 'noise'; use zero, blur or road$"),
                                ("sideways", "zero", "^mode is deletion or insertion$")):
        with pytest.raises(ValueError, match=message):
            metrics.perturbation_curve(forward, x, torch.rand(4, 4, 4), torch.zeros(4, dtype=torch.long), mode, fill)
    assert float(metrics.auc(torch.tensor([1.0, 0.0]))) == pytest.approx(0.5)  # one curve, not a batch
    # ROAD's imputation runs ``chunk`` inputs at a time too
    calls = []
    inner = metrics.noisy_linear_imputation
    monkeypatch.setattr(metrics, "noisy_linear_imputation", lambda t, *a, **k: calls.append(len(t)) or inner(t, *a, **k))
    metrics.perturbation_curve(forward, x[:1], torch.rand(1, 4, 4), torch.zeros(1, dtype=torch.long), "deletion",
                               "road", steps=2, chunk=1)
    assert calls == [1, 1, 1]


def test_boxes_from_coco_json_and_csv(tmp_path):
    """COCO JSON (bbox = x, y, w, h; images by id) and CSV (x0, y0, x1, y1) give the same boxes; a missing file or
    a CSV without the columns is a usage error naming --boxes. (The COCO path was untested: found by
    scripts/mutation.py evaluation.)"""
    from salcli.errors import UsageError
    from salcli.evaluation import _read_boxes

    coco = tmp_path / "boxes.JSON"  # the suffix in any case
    coco.write_text(json.dumps({"images": [{"id": 7, "file_name": "a/x.png"}, {"id": 8, "file_name": "b.png"}],
                                "annotations": [{"image_id": 7, "bbox": [1, 2, 10, 20]},
                                                {"image_id": 7, "bbox": [0, 0, 3, 3]},
                                                {"image_id": 8, "bbox": [5, 5, 1, 1]}]}))
    expected = {"a/x.png": ("boxes", [(1, 2, 11, 22), (0, 0, 3, 3)]), "b.png": ("boxes", [(5, 5, 6, 6)])}
    assert _read_boxes(coco) == expected
    csv = tmp_path / "boxes.csv"
    csv.write_text("image,x0,y0,x1,y1\na/x.png,1,2,11,22\na/x.png,0,0,3,3\nb.png,5,5,6,6\n")
    assert _read_boxes(csv) == {k: ("boxes", [tuple(map(float, b)) for b in v[1]]) for k, v in expected.items()}
    (tmp_path / "empty.json").write_text("{}")
    assert _read_boxes(tmp_path / "empty.json") == {}
    with pytest.raises(UsageError) as missing:
        _read_boxes(tmp_path / "nope.csv")
    assert missing.value.render({}).startswith("--boxes ") and "no such file" in str(missing.value)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,a,b\nx.png,1,2\n")
    with pytest.raises(UsageError) as columns:
        _read_boxes(bad)
    assert columns.value.render({}).startswith("--boxes ") and "expected columns image,x0,y0,x1,y1" in str(columns.value)


# ---------------------------------------------------------------------------------------------- evaluation.py
# Pinned by hand (scripts/mutation.py evaluation: these survived the end-to-end tests above).
def test_box_masks_go_through_the_images_resize_and_crop_pixel_for_pixel():
    from salcli.config import Preprocess
    from salcli.evaluation import mask_at_input

    # a 10 x 8 picture, short side 8 -> 16 (x2: 20 x 16), center crop 16: columns 2..17 of the resized picture
    pre = Preprocess(resize=16, crop=16, mean=(0.5,), std=(0.25,), channels=3, interpolation="bilinear")
    box = (2, 1, 5, 4)  # x in [2, 5), y in [1, 4) of the original: resized [4, 10) x [2, 8), cropped [2, 8)
    expected = np.zeros((16, 16), bool)
    expected[2:8, 2:8] = True
    got = mask_at_input(("boxes", [box]), (10, 8), pre)
    assert got.dtype == bool and np.array_equal(got, expected)  # nearest, not the image's bilinear: no halo
    # an array mask given at another size than the picture is first brought to the picture's size (nearest)
    small = np.zeros((4, 5), bool)  # (H, W) = half the picture's
    small[1, 1:3] = True  # picture pixels x in [2, 6), y in [2, 4): resized x [4, 12), y [4, 8): cropped [2, 10)
    expected = np.zeros((16, 16), bool)
    expected[4:8, 2:10] = True
    assert np.array_equal(mask_at_input(small, (10, 8), pre), expected)
    full = np.zeros((8, 10), bool)
    full[1:4, 2:5] = True  # the box above, as an array at the picture's size
    assert np.array_equal(mask_at_input(full, (10, 8), pre), mask_at_input(("boxes", [box]), (10, 8), pre))


def test_the_random_baseline_is_seeded_by_the_run_seed_and_the_key_only():
    from salcli.evaluation import random_map

    a = random_map("cat/1.png", 0, (5, 6))
    assert a.shape == (5, 6) and float(a.min()) >= 0.0 and float(a.max()) < 1.0
    assert torch.equal(a, random_map("cat/1.png", 0, (5, 6)))  # the same draw every time, whatever ran before
    torch.rand(3)  # the global generator moves; the baseline does not
    assert torch.equal(a, random_map("cat/1.png", 0, (5, 6)))
    assert not torch.equal(a, random_map("cat/2.png", 0, (5, 6)))
    assert not torch.equal(a, random_map("cat/1.png", 1, (5, 6)))


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """Two runs (seeds 0 and 1) of vanilla on three copies of one picture under different names."""
    inputs = tmp_path_factory.mktemp("twins") / "imgs"
    inputs.mkdir()
    picture = sorted((SAMPLES / "fashion-mnist" / "Bag").glob("*.png"))[0]
    for name in ("a.png", "b.png", "c.png"):
        shutil.copy(picture, inputs / name)
    outs = {}
    for seed in (0, 1):
        outs[seed] = inputs.parent / f"out{seed}"
        Cli()("explain", inputs, "-o", outs[seed], "-m", "vanilla", "--seed", seed, "-q")
    return outs


def per_image(out) -> dict[tuple[str, str], dict]:
    return {(r["image"], r["method"]): r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def test_evaluate_seeds_the_random_map_and_road_by_image_and_run(cli, twins):
    rows = {}
    for seed, out in twins.items():
        evaluate(cli, out, "--no-stability")
        doc = json.loads((out / "evaluation.json").read_text())
        rows[seed] = per_image(out)
        # every measure that needs no recomputed map is given for the random map too
        assert set(rows[seed][("a.png", "random")]) == set(rows[seed][("a.png", "vanilla")])
        assert set(doc["mean_curves"]) == {"vanilla", "random"}
        assert set(doc["mean_curves"]["vanilla"]) == {"deletion", "deletion_road", "insertion"}
    first = rows[0]
    # the same picture: vanilla's map and its deletion curve are the same under each name...
    assert first[("a.png", "vanilla")]["deletion_auc"] == first[("b.png", "vanilla")]["deletion_auc"]
    # ...the random map is drawn per image (its key)...
    assert len({first[(k, "random")]["deletion_auc"] for k in ("a.png", "b.png", "c.png")}) == 3
    # ...and per run (its seed), as ROAD's imputation noise is
    assert first[("a.png", "random")]["deletion_auc"] != rows[1][("a.png", "random")]["deletion_auc"]
    assert first[("a.png", "vanilla")]["deletion_road_auc"] != rows[1][("a.png", "vanilla")]["deletion_road_auc"]


def test_an_image_that_cannot_be_read_again_is_an_error_row_and_the_others_are_scored(cli, twins, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(twins[0], out)
    source = {r["image"]: r["source"] for r in manifest(out)}
    with open(source["a.png"], "r+b") as fh:  # damaged after the run
        fh.truncate(20)
    doc = json.loads(evaluate(cli, out, "--no-stability", "--json").stdout)
    rows = list(map(json.loads, (out / "metrics.jsonl").read_text().splitlines()))
    failed = [r for r in rows if r.get("error")]
    assert failed == [{"image": "a.png", "method": None, "error": failed[0]["error"]}]
    assert failed[0]["error"].startswith("cannot read the image again: ")
    assert {(r["image"], r["method"]) for r in rows if not r.get("error")} == {
        (k, m) for k in ("b.png", "c.png") for m in ("vanilla", "random")}
    assert {r["method"]: r["images"] for r in doc["methods"]} == {"vanilla": 2, "random": 2}
    for key in ("b.png", "c.png"):
        with open(source[key], "r+b") as fh:
            fh.truncate(20)
    doc = json.loads(evaluate(cli, out, "--no-stability", "--json").stdout)  # nothing left to score: no crash
    assert doc["methods"] == [] and len((out / "metrics.jsonl").read_text().splitlines()) == 3


def test_write_results_files_and_plots(tmp_path):
    from salcli import evaluation, render
    from salcli.outputs import SCHEMA_VERSION

    curves = {"vanilla": {"deletion": [1.0, 0.5, 0.0]}, "random": {"deletion": [1.0, 0.75, 0.5]}}
    summary = evaluation.EvalSummary(rows=[{"method": "vanilla", "images": 1}], per_image=[{"image": "a.png"}],
                                     skipped_unannotated=2, curves=curves)
    written = evaluation.write_results(tmp_path, summary)
    assert written == ["metrics.jsonl", "evaluation.json", "plots/deletion.png"]
    assert all((tmp_path / w).is_file() for w in written)
    assert json.loads((tmp_path / "evaluation.json").read_text()) == {
        "schema_version": SCHEMA_VERSION, "methods": [{"method": "vanilla", "images": 1}], "skipped_unannotated": 2,
        "mean_curves": curves}
    png = (tmp_path / "plots" / "deletion.png").read_bytes()
    title = measures.curve_titles()["deletion"]
    # what the README shows: the axes say what was changed and what was measured, the legend gives each AUC
    assert png == render.line_plot({m: c["deletion"] for m, c in curves.items()}, title,
                                   "fraction of pixels changed, most salient first",
                                   "probability of the target class", auc=True)
    from PIL import Image

    assert Image.open(tmp_path / "plots" / "deletion.png").text["Legend"] == (
        "vanilla (AUC 0.500) | random (AUC 0.750)")
