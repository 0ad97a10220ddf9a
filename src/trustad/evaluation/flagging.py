"""Flag inputs of a category's image sets, and the flag columns of a result.

The flags live in each (category, shots, seed)'s trust engine (``evaluation.trust``). The
inputs they read are built here so that the values of image-only flags (the noise level)
are computed once per image set; the measured flags' columns are read off the fields the
engine gave the clean and the current test images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from torch import Tensor

from ..flags import FlagInputs
from ..flags.columns import columns_from_values
from ..model import Assessment, TrustEngine
from .rows import Split

# Image sets whose image-only flag values are kept: the clean set and the attacked set in
# use (a probe attack's set serves every shot count of its seed).
MEMO_SETS = 2


class ScoredSet(NamedTuple):
    """What the flags read of a set of test images, in test order."""

    distances: list[Tensor]
    features: list[Tensor]
    images: Sequence[Tensor]


class FlagInputCache:
    """Flag inputs per image set; image-only flag values are shared by every batch with the
    same images (the noise level of a set is computed once)."""

    def __init__(self) -> None:
        # id(images) -> (the images, kept alive so that its id stays its own; memo)
        self._memos: dict[int, tuple[Sequence[Tensor], dict[str, Tensor]]] = {}

    def inputs(self, scored: ScoredSet) -> FlagInputs:
        images = scored.images
        if id(images) not in self._memos:
            if len(self._memos) >= MEMO_SETS:
                del self._memos[next(iter(self._memos))]
            self._memos[id(images)] = (images, {})
        return FlagInputs(
            scored.distances, scored.features, list(images), memo=self._memos[id(images)][1]
        )


def flag_columns(
    names: Sequence[str], trust: TrustEngine, clean: Assessment, current: Assessment, split: Split
) -> dict[str, float]:
    """``flag_auroc_<name>``, ``flag_tpr_<name>`` and ``flag_ffr_<name>`` of each measured
    flag on the evaluation images: this condition's against the clean ones."""
    idx = split.evaluation
    flags = {n: trust.flags_[n] for n in names if n in trust.flags_ and n in current.flag_values}
    clean_values = {n: clean.flag_values[n][idx] for n in flags}
    current_values = {n: current.flag_values[n][idx] for n in flags}
    return columns_from_values(flags, clean_values, current_values)


def flag_rate_columns(fields: Assessment, split: Split) -> dict[str, float]:
    """``flag_rate_<name>``: the share of evaluation images each fitted flag fires on (on
    clean and benign conditions, its false-flag rate)."""
    idx = split.evaluation
    return {f"flag_rate_{n}": float(v[idx].mean()) for n, v in fields.flagged.items() if len(idx)}
