"""Nearest bank rows of a category's test patches, kept per (test set, support image).

A unit's memory bank is the rows of its support images' views, image after image, and the
nearest row of a patch in it is the best of the nearest rows in each image's part, the
earlier part winning ties (``detector.merge_nearest``): exactly the search over the whole
bank. The grid scores the same test features (clean, or attacked once per seed and eps)
against banks that share support images (seed 0's shot counts are nested; clean features
meet every support set of the category), so each (test set, support image) part is searched
once and merged per unit: about half of the grid's similarity products on 16 training images.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from ..detector import merge_nearest, nearest_rows, query_rows


class NearestParts:
    """Per test set (a hashable key: "clean", or an attack's (condition, eps, seed)) and
    support image: the best similarity and first index of every test patch in that image's
    part of the bank."""

    def __init__(self) -> None:
        self._queries: dict[Hashable, Tensor] = {}
        self._parts: dict[tuple[Hashable, Path], tuple[Tensor, Tensor]] = {}

    def indices(
        self,
        key: Hashable,
        features: Sequence[Tensor],
        bank: Tensor,
        paths: Sequence[Path],
        sizes: Sequence[int],
    ) -> list[Tensor]:
        """Each test image's nearest rows (P,) in ``bank``, made of the parts of ``paths``
        with ``sizes`` rows each, in that order."""
        if sum(sizes) != len(bank):
            raise ValueError(f"parts of {sum(sizes)} rows for a bank of {len(bank)}")
        if key not in self._queries:
            self._queries[key] = query_rows_of(features, bank)
        queries = self._queries[key]
        parts, start = [], 0
        for path, size in zip(paths, sizes, strict=True):
            if (key, path) not in self._parts:
                self._parts[key, path] = nearest_rows(queries, bank[start : start + size])
            parts.append(self._parts[key, path])
            start += size
        per_image = [f[..., 0].numel() for f in features]
        return list(merge_nearest(parts, sizes).split(per_image))

    def forget(self, key: Hashable) -> None:
        """Drop what is kept for a test set that no unit scores again."""
        self._queries.pop(key, None)
        for part in [p for p in self._parts if p[0] == key]:
            del self._parts[part]


def query_rows_of(features: Sequence[Tensor], bank: Tensor) -> Tensor:
    """The normalised query rows of every image, image after image."""
    return torch.cat([query_rows(f, bank) for f in features])
