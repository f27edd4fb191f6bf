"""The measures registry: columns, directions, gates, tables and docs all come from it; a new measure plugs in
with one module."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch
import pytest
from conftest import ROOT

from salcli import docs, gates, measures
from salcli.evaluation import RANDOM, _summarize


class Spread(measures.Measure):
    """A throwaway measure: the map's standard deviation (lower is better, gated, compared with random)."""

    name = "spread"
    order = 99
    metrics = (measures.Metric("spread", "spread", "standard deviation of the map", better=measures.LOWER),)

    def measure(self, batch):
        return {"spread": [float(np.std(batch.maps[i].numpy())) for i in range(len(batch.keys))]}


@pytest.fixture
def spread():
    measures.register(Spread)
    try:
        yield Spread
    finally:
        measures.unregister(Spread)


def test_a_registered_measure_becomes_a_column_a_direction_a_gate_and_a_readme_row(spread):
    rows = [{"image": "a", "method": "m", "spread": 0.2}, {"image": "b", "method": "m", "spread": 0.4},
            {"image": "a", "method": RANDOM, "spread": 0.5}, {"image": "b", "method": RANDOM, "spread": 0.5}]
    table = {r["method"]: r for r in _summarize(rows, ["m"])}
    assert table["m"]["spread"] == pytest.approx(0.3) and table["m"]["beats_random"]["spread"] is True
    assert measures.METRICS["spread"].gate_option == "max_spread"
    assert gates.check(list(table.values()), {"max_spread": 0.35}) == []
    [line] = gates.check(list(table.values()), {"max_spread": 0.25})
    assert "spread of m is 0.3000, above the bar 0.25" in line
    assert "| `spread` | evaluate | standard deviation of the map | lower ↓ | ✓/✗ | `--max-spread` |" in \
        docs.metric_table()
    assert "spread" in [m.name for m in measures.measures("evaluate")][-1]  # its order puts it last


def test_directions_decide_who_beats_the_random_map():
    rows = [{"image": "a", "method": "m", "deletion_auc": 0.2, "insertion_auc": 0.2, "energy": 0.9},
            {"image": "a", "method": RANDOM, "deletion_auc": 0.3, "insertion_auc": 0.3, "energy": 0.5}]
    beats = _summarize(rows, ["m"])[0]["beats_random"]
    assert beats == {"deletion_auc": True, "insertion_auc": False, "energy": True}


def test_counts_and_missing_values_aggregate_as_declared():
    rows = [{"image": "a", "method": "m", "stability": 0.2, "fragile": True},
            {"image": "b", "method": "m", "stability": 0.8, "fragile": False},
            {"image": "c", "method": "m"}]
    row = _summarize(rows, ["m"])[0]
    assert row["fragile"] == 1 and row["stability"] == pytest.approx(0.5) and row["pointing_game"] is None
    assert row["images"] == 3


def test_a_name_registered_twice_is_an_error(spread):
    class Again(Spread):
        name = "spread-again"

    with pytest.raises(ValueError, match="metric 'spread' is registered twice"):
        measures.register(Again)
    with pytest.raises(ValueError, match="measure 'localization' is registered twice"):
        measures.register(measures.MEASURES["localization"])


def test_every_gated_metric_is_an_option_of_its_command():
    from typer.main import get_command

    from salcli.cli import app

    group = get_command(app)
    for command in ("evaluate", "sanity"):
        flags = {o for p in group.commands[command].params for o in p.opts}
        assert {m.gate_flag for m in measures.gated(command)} <= flags
        assert {"--max-deletion-road-auc", "--min-stability"} <= flags if command == "evaluate" else True


def test_importing_the_registry_imports_neither_torch_nor_numpy():
    code = "import sys, salcli.measures as m; assert m.METRICS; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_readme_metric_table_is_generated_from_the_registry():
    text = (ROOT / "README.md").read_text()
    assert docs.between(text, docs.METRICS_BEGIN, docs.METRICS_END) == docs.metric_table(), \
        "run: python -m salcli.docs --write"


def test_gates_name_the_metric_the_method_the_value_and_the_bar():
    """gates.check on hand-made rows: the random baseline is passed over wherever it appears (and does not stop
    the check of the rows after it), each side of each bar, the words, and a metric not measured fails."""
    from salcli.errors import word

    rows = [{"method": "random", "energy": 0.0, "deletion_auc": 1.0},
            {"method": "gradcam", "energy": 0.4, "deletion_auc": 0.30},
            {"method": "vanilla", "energy": 0.6, "deletion_auc": 0.10, "pointing_game": None}]
    assert gates.check(rows, {"min_energy": None}) == []  # a gate not asked for, and the gates after it
    assert len(gates.check(rows, {"min_pointing_game": None, "min_energy": 0.5})) == 1
    failed = [word(f, {}) for f in gates.check(rows, {"min_energy": 0.5, "max_deletion_auc": 0.2})]
    assert failed == ["--min-energy: energy of gradcam is 0.4000, below the bar 0.5",
                      "--max-deletion-auc: deletion_auc of gradcam is 0.3000, above the bar 0.2"]
    # a value on the bar passes, on either side
    assert gates.check(rows, {"min_energy": 0.4, "max_deletion_auc": 0.3}) == []
    assert gates.check(rows, {"min_energy": 0.0, "max_deletion_auc": 1.0}) == []
    # the random rows are never gated, first or last
    assert gates.check(rows[::-1], {"min_energy": 0.41}) != [] and gates.check(rows[:1], {"min_energy": 0.9}) == []
    missing = [word(f, {}) for f in gates.check(rows, {"min_pointing_game": 0.5})]
    assert missing == ["--min-pointing-game: pointing_game of gradcam was not measured (bar 0.5)",
                       "--min-pointing-game: pointing_game of vanilla was not measured (bar 0.5)"]


# ---------------------------------------------------------------------------------------------- edges
class Scripted:
    """An engine whose maps are given: ``attribute`` checks it is asked for the batch's method, target and keys,
    and returns ``noisy`` for the first call (the input under noise) and ``shifted`` for the second."""

    chunk = 4

    def __init__(self, batch_method, target, keys, noisy, shifted):
        self.expect = (batch_method, target, keys)
        self.answers = [noisy, shifted]

    def attribute(self, method, x, target, keys):
        assert (method, keys) == (self.expect[0], self.expect[2]) and target is self.expect[1]
        return self.answers.pop(0)


def _stability(maps, noisy, shifted, x=None):
    from salcli.measures.stability import Stability

    keys = [f"k{i}" for i in range(len(maps))]
    target = torch.zeros(len(maps), dtype=torch.long)
    x = torch.zeros(len(maps), 1, *maps.shape[-2:]) if x is None else x
    batch = measures.Batch(keys=keys, x=x, maps=maps, target=target, seed=0, method="vanilla", masks=[None] * len(keys),
                           engine=Scripted("vanilla", target, keys, noisy, shifted), options=None)
    return Stability().measure(batch)


def test_stability_asks_the_engine_for_the_batchs_method_target_and_keys_and_scales_by_the_maps_norm():
    g = torch.Generator().manual_seed(0)
    base = 0.001 * torch.rand(2, 6, 7, generator=g)  # a small map: its norm is far below 1
    shifted = torch.roll(base, 1, dims=-1)  # the same map, moved with the input: no change on the overlap
    out = _stability(base, 1.1 * base, shifted)
    assert out["max_sensitivity"] == pytest.approx([0.1, 0.1], rel=1e-5)  # relative to the map's own norm
    assert out["stability"] == pytest.approx([1.0, 1.0])


def test_stability_noise_lives_on_the_inputs_device():
    """The noise is moved to x's device (a CUDA input gets CUDA noise): on the meta device any CPU tensor mixed in
    would fail."""
    base = torch.rand(1, 5, 5)
    x = torch.zeros(1, 1, 5, 5, device="meta")
    out = _stability(base, base.clone(), torch.roll(base, 1, dims=-1), x=x)
    assert out["stability"] == pytest.approx([1.0])


def test_fragile_is_stability_strictly_below_one_half(monkeypatch):
    from salcli import metrics

    base = torch.rand(1, 5, 5)
    for rho, fragile in ((0.5, False), (0.4999, True), (0.9, False)):
        monkeypatch.setattr(metrics, "spearman", lambda a, b, rho=rho: rho)
        out = _stability(base, base.clone(), base.clone())
        assert out["stability"] == [rho] and out["fragile"] == [fragile]


def test_beating_the_random_map_needs_a_strictly_better_value():
    higher, lower = measures.METRICS["energy"], measures.METRICS["deletion_auc"]
    assert higher.better == measures.HIGHER and lower.better == measures.LOWER
    assert higher.beats(0.6, 0.5) and not higher.beats(0.5, 0.5) and not higher.beats(0.4, 0.5)
    assert lower.beats(0.4, 0.5) and not lower.beats(0.5, 0.5) and not lower.beats(0.6, 0.5)


def test_registry_defaults_unregister_and_the_base_class(spread):
    assert measures.metrics() == measures.metrics("evaluate")
    assert [m.name for m in measures.measures()] == [m.name for m in measures.measures("evaluate")]
    assert "spread" in [m.name for m in measures.metrics()]
    assert measures.curve_titles() == {"deletion": "Deletion (zero fill)",
                                       "deletion_road": "Deletion (ROAD noisy linear imputation)",
                                       "insertion": "Insertion (from a blur)"}
    assert measures.curve_titles("sanity") == {}
    measures.unregister(Spread)
    measures.unregister(Spread)  # a second time: nothing left to remove, no error
    assert "spread" not in measures.MEASURES and "spread" not in measures.METRICS
    assert "spread" not in [m.name for m in measures.metrics()]
    measures.register(Spread)  # the fixture unregisters it again

    class Bare(measures.Measure):
        pass

    with pytest.raises(NotImplementedError, match="^Bare.measure$"):
        Bare().measure(None)
