"""Insertion AUC (Petsiuk et al. 2018): the probability of the target as the most salient pixels are put back
into a blurred copy (kernel 11, σ 5), first to last; higher is better."""

from __future__ import annotations

from . import Batch, Measure, Metric, register
from .deletion import curve_auc


@register
class Insertion(Measure):
    name = "insertion"
    order = 40
    curves = {"insertion": "Insertion (from a blur)"}
    metrics = (Metric("insertion_auc", "insertion AUC, blur", "area under the insertion curve from a blur"),)

    def measure(self, batch: Batch) -> dict[str, list]:
        return curve_auc(batch, "insertion", "insertion_auc", "insertion", "blur")
