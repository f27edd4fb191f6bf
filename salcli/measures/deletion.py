"""Deletion AUC with the RISE protocol's fill (Petsiuk et al. 2018): the probability of the target as the most
salient pixels are replaced by zeros in normalized space, first to last; lower is better."""

from __future__ import annotations

from . import LOWER, Batch, Measure, Metric, register


def curve_auc(batch: Batch, curve_name: str, metric: str, mode: str, fill: str, generators=None) -> dict[str, list]:
    """Shared by the perturbation measures: the curve per image, kept for the mean curves, and its area."""
    from .. import metrics as m

    curve = m.perturbation_curve(batch.engine.forward, batch.x, batch.maps, batch.target, mode, fill,
                                 batch.options.steps, chunk=max(1, batch.engine.chunk), generators=generators)
    batch.curves.setdefault(curve_name, []).extend(curve)
    return {metric: [float(a) for a in m.auc(curve)]}


@register
class Deletion(Measure):
    name = "deletion"
    order = 20
    curves = {"deletion": "Deletion (zero fill)"}
    metrics = (Metric("deletion_auc", "deletion AUC, zero", "area under the deletion curve, zero fill",
                      better=LOWER),)

    def measure(self, batch: Batch) -> dict[str, list]:
        return curve_auc(batch, "deletion", "deletion_auc", "deletion", "zero")
