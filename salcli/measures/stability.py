"""Stability: the mean Spearman rank correlation of a map with the maps of (a) the input plus Gaussian noise of 1%
of its range and (b) the input shifted one pixel right (compared on the overlap); max-sensitivity: the larger
relative L2 change of those two maps. Both maps are recomputed by the run's own engine (its model as it ran, its
chunk, references and seed). An image whose stability is below 0.5 is ``fragile``. Noise is seeded by
(seed, the image's relative path)."""

from __future__ import annotations

from . import LOWER, Batch, Measure, Metric, register

FRAGILE = 0.5


@register
class Stability(Measure):
    name = "stability"
    order = 60
    needs = frozenset({"engine"})
    metrics = (
        Metric("stability", "stability", "mean rank correlation with the maps of the input under 1% noise and a "
               "one-pixel shift", vs_random=False),
        Metric("max_sensitivity", "max sensitivity", "largest relative L2 change of the map under those changes",
               better=LOWER, vs_random=False, gate=False, table=False),
        Metric("fragile", "fragile", f"images whose stability is below {FRAGILE}", better=None, vs_random=False,
               gate=False, aggregate="count"),
    )

    def measure(self, batch: Batch) -> dict[str, list]:
        import numpy as np
        import torch

        from .. import metrics as m
        from ..methods.base import image_seed

        x, engine = batch.x, batch.engine
        spread = (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3))).view(-1, 1, 1, 1)
        noise = torch.stack([torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(
            image_seed(batch.seed, "stability:" + k))) for k in batch.keys]).to(x.device)
        noisy = engine.attribute(batch.method, x + 0.01 * spread * noise, batch.target, batch.keys).cpu()
        shifted = engine.attribute(batch.method, torch.roll(x, 1, dims=-1), batch.target, batch.keys).cpu()
        out: dict[str, list] = {"stability": [], "max_sensitivity": [], "fragile": []}
        for i in range(len(batch.keys)):
            base, a, b = batch.maps[i].numpy(), noisy[i].numpy(), shifted[i].numpy()
            rho = float(np.mean([m.spearman(base, a), m.spearman(base[:, :-1], b[:, 1:])]))
            norm = max(float(np.linalg.norm(base)), 1e-12)
            sens = max(float(np.linalg.norm(a - base)), float(np.linalg.norm(b[:, 1:] - base[:, :-1]))) / norm
            out["stability"].append(rho)
            out["max_sensitivity"].append(sens)
            out["fragile"].append(bool(rho < FRAGILE))
        return out
