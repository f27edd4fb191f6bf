"""Deletion AUC with ROAD's fill (Rong et al. 2022): removed pixels take noisy linear imputation from their
neighbours (noise 0.01), a fill that stays close to the data; lower is better. The noise of an image is drawn
from a generator seeded by (seed, its relative path): its AUC does not depend on the batch it was scored in."""

from __future__ import annotations

from . import LOWER, Batch, Measure, Metric, register
from .deletion import curve_auc


@register
class DeletionRoad(Measure):
    name = "deletion_road"
    order = 30
    curves = {"deletion_road": "Deletion (ROAD noisy linear imputation)"}
    metrics = (Metric("deletion_road_auc", "deletion AUC, ROAD",
                      "area under the deletion curve, ROAD noisy linear imputation", better=LOWER),)

    def measure(self, batch: Batch) -> dict[str, list]:
        import torch

        from ..methods.base import image_seed

        generators = [torch.Generator().manual_seed(image_seed(batch.seed, "road:" + k)) for k in batch.keys]
        return curve_auc(batch, "deletion_road", "deletion_road_auc", "deletion", "road", generators)
