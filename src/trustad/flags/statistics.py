"""Flags computed from what the detector already has: no extra backbone pass.

Map statistics read the patch-distance grid as a whole, not only its top 1% (which is all
the image score sees): an attack that perturbs every pixel tends to move every patch's
distance to the memory bank, while a real defect moves a few. Feature statistics compare
patch-feature norms with those of clean calibration images.

Statistics of the map's shape alone (top-1% over median, spatial entropy, roughness between
neighbouring patches) were measured too and left out: near chance, or on different sides of
chance on different data (benchmarks/results/flags.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import BaseFlag, FlagInputs

# Patches of the clean calibration images above this quantile count as "beyond the normal
# range" (their own share is then 1 - quantile by construction).
NORMAL_RANGE_QUANTILE = 0.95
# Width of the sigmoid that replaces the hard exceedance count for gradient-based attackers,
# as a fraction of the spread (inter-quartile range) of clean patch distances.
SOFT_WIDTH = 0.1
_TINY = 1e-8


def _flat(d: Tensor) -> Tensor:
    return d.reshape(len(d), -1)


class MedianDistanceFlag(BaseFlag):
    """Median patch distance to the memory bank: the level of the whole map."""

    name = "median"
    advice = "the whole image is far from the good images (lighting, focus, another product?): check the set-up"

    def compute(self, inputs: FlagInputs) -> Tensor:
        return _flat(inputs.distances).median(dim=1).values


class ExceedanceFlag(BaseFlag):
    """Share of patches whose distance lies beyond the normal range, the 95th percentile of
    all patch distances of the clean calibration images."""

    name = "exceed"
    advice = "an unusual share of the image lies outside the good images' range: check lighting and framing"
    uses_reference = True

    def reference(self, clean: FlagInputs) -> None:
        d = clean.distances.detach().float().reshape(-1)
        self.limit_ = float(torch.quantile(d, NORMAL_RANGE_QUANTILE))
        q1, q3 = torch.quantile(d, torch.tensor([0.25, 0.75]))
        self.width_ = float(max(SOFT_WIDTH * float(q3 - q1), _TINY))

    def compute(self, inputs: FlagInputs) -> Tensor:
        return (_flat(inputs.distances) > self.limit_).float().mean(dim=1)

    def surrogate(self, inputs: FlagInputs) -> Tensor:
        return torch.sigmoid((_flat(inputs.distances) - self.limit_) / self.width_).mean(dim=1)


class FeatureNormFlag(BaseFlag):
    """Mean squared z-score of the patches' log feature norms against the clean calibration
    images' patches (either direction counts: an attack may grow or shrink norms)."""

    name = "feature_norm"
    advice = "the image's features are unlike the good images' (lighting, focus, another product?): check the set-up"
    needs = ("distances", "features")
    uses_reference = True

    def reference(self, clean: FlagInputs) -> None:
        log_norm = clean.features.detach().float().norm(dim=-1).clamp(min=_TINY).log()
        self.mu_ = float(log_norm.mean())
        self.sd_ = float(max(float(log_norm.std()), _TINY))

    def compute(self, inputs: FlagInputs) -> Tensor:
        log_norm = inputs.features.float().norm(dim=-1).clamp(min=_TINY).log()
        return (((log_norm - self.mu_) / self.sd_) ** 2).flatten(1).mean(dim=1)
