"""The model-parameter randomization test's measures (Adebayo et al. 2018), reported by `salcli sanity`: the mean
Spearman rank correlation and SSIM of each map with the same method's map once every layer of the model is
re-initialized, on absolute values (the paper's absolute-value variant; no change for maps that are >= 0).
Lower is better: a faithful map changes when the model does. The cascade itself lives in ``sanity.py``."""

from __future__ import annotations

from . import LOWER, Measure, Metric, register


@register
class Randomization(Measure):
    name = "randomization"
    order = 70
    command = "sanity"
    metrics = (
        Metric("randomization_similarity", "final Spearman", "mean Spearman rank correlation with the maps of "
               "the fully randomized model", better=LOWER, vs_random=False, command="sanity"),
        Metric("ssim_final", "final SSIM", "mean SSIM with the maps of the fully randomized model", better=LOWER,
               vs_random=False, gate=False, command="sanity"),
    )

    # No ``measure``: these metrics come from sanity's cascade, which calls ``compare``; evaluate never runs a
    # sanity measure (``measures("evaluate")`` leaves it out).

    @staticmethod
    def compare(original, randomized) -> tuple[float, float]:
        """(Spearman, SSIM) of two (H, W) maps, on absolute values."""
        import numpy as np

        from .. import metrics as m

        a, b = np.abs(original), np.abs(randomized)
        return m.spearman(a, b), m.ssim(a, b)
