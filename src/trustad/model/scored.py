"""Images as the fitted detector scored them: what the trust engine's flags read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from torch import Tensor

from ..flags import FlagInputs
from .trust import FlagReference


class ScoredImages(NamedTuple):
    """Preprocessed images with their features, patch distances and scores."""

    distances: list[Tensor]
    features: list[Tensor]
    images: list[Tensor]
    scores: np.ndarray

    def pick(self, index: Sequence[int]) -> ScoredImages:
        return ScoredImages(
            [self.distances[i] for i in index],
            [self.features[i] for i in index],
            [self.images[i] for i in index],
            self.scores[list(index)],
        )

    def references(self) -> list[FlagReference]:
        """Flag references, one per group of equally-sized images."""
        groups: dict[tuple, list[int]] = {}
        for i, (d, x) in enumerate(zip(self.distances, self.images)):
            groups.setdefault((tuple(d.shape), tuple(x.shape)), []).append(i)
        out = []
        for index in groups.values():
            part = self.pick(index)
            inputs = flag_inputs(part.distances, part.features, part.images)
            out.append(FlagReference(inputs, part.scores))
        return out


def flag_inputs(
    dists: Sequence[Tensor], features: Sequence[Tensor], images: Sequence[Tensor] | None
) -> FlagInputs:
    """The flags' inputs of equally-sized images, on the CPU (flags that need the device
    move what they use)."""
    return FlagInputs(list(dists), list(features), None if images is None else list(images))
