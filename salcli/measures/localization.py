"""Localization against an object mask: pointing game (Zhang et al. 2016: a hit when the map's maximum lies within
the tolerance of the object), energy-based pointing game (Wang et al. 2020, Score-CAM: the share of the map's
positive mass inside the object), IoU of the top-k region."""

from __future__ import annotations

from . import Batch, Measure, Metric, register


@register
class Localization(Measure):
    name = "localization"
    order = 10
    needs = frozenset({"mask"})
    metrics = (
        Metric("pointing_game", "pointing game", "hit rate: the map's maximum lies within the tolerance of the object"),
        Metric("energy", "energy", "share of the map's positive mass inside the object"),
        Metric("iou", "IoU top-k", "IoU of the top-k fraction of pixels with the object", gate=False),
    )

    def measure(self, batch: Batch) -> dict[str, list]:
        from .. import metrics as m

        out: dict[str, list] = {"pointing_game": [], "energy": [], "iou": []}
        for i, mask in enumerate(batch.masks):
            if mask is None or not mask.any():
                for values in out.values():
                    values.append(None)
                continue
            s = batch.maps[i].numpy()
            out["pointing_game"].append(float(m.pointing_hit(s, mask, batch.options.tolerance)))
            out["energy"].append(m.energy_inside(s, mask))
            out["iou"].append(m.top_k_iou(s, mask, batch.options.top_k))
        return out
