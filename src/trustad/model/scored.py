"""Images as the fitted detector scored them: what the trust engine's flags read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from torch import Tensor

from ..flags import FlagInputs
from .trust import FlagReference, TrustEngine


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

    def references(self, seed: int = 0) -> list[FlagReference]:
        """Flag references, one per group of equally-sized images."""
        out = []
        for index in shape_groups(self.distances, self.images):
            part = self.pick(index)
            inputs = flag_inputs(part.distances, part.features, part.images)
            out.append(FlagReference(inputs, part.scores, seed))
        return out


def shape_groups(
    distances: Sequence[Tensor], images: Sequence[Tensor] | None = None
) -> list[list[int]]:
    """Indices of the images that share their grid and image shapes (flags read a batch of
    one shape), in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for i, d in enumerate(distances):
        shape = None if images is None else tuple(images[i].shape)
        groups.setdefault((tuple(d.shape), shape), []).append(i)
    return list(groups.values())


def grouped_flag_values(
    trust: TrustEngine,
    scores: np.ndarray,
    distances: Sequence[Tensor],
    features: Sequence[Tensor],
    images: Sequence[Tensor] | None,
) -> dict[str, np.ndarray]:
    """The fitted flags' values of images of any sizes, one batch per shape, in order."""
    out: dict[str, np.ndarray] = {}
    for idx in shape_groups(distances, images):
        inputs = flag_inputs(
            [distances[i] for i in idx],
            [features[i] for i in idx],
            None if images is None else [images[i] for i in idx],
        )
        for name, values in trust.flag_values(scores[idx], inputs).items():
            out.setdefault(name, np.zeros(len(scores)))[idx] = values
    return out


def flag_inputs(
    dists: Sequence[Tensor], features: Sequence[Tensor], images: Sequence[Tensor] | None
) -> FlagInputs:
    """The flags' inputs of equally-sized images, on the CPU (flags that need the device
    move what they use)."""
    return FlagInputs(list(dists), list(features), None if images is None else list(images))
