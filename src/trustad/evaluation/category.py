"""What a run computes once per category: test images, sizes, labels, masks, features,
support features, probes; shared by every unit of work of the category."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import overload

import numpy as np
import torch
from torch import Tensor

from ..backbone.preprocess import (
    load_rgb8,
    patch_mask,
    preprocess_mask,
    preprocess_uint8,
    to_unit,
)
from ..backbone.runtime import BackboneRuntime
from ..data import CategoryData, Sample, load_mask
from ..images import ImageReadError
from ..metrics import PooledTruth
from ..model import Assessment, FittedDetector, TrustEngine
from ..pixel_metrics import PixelTargets
from .flagging import FlagInputCache
from .nearest import NearestParts
from .progress import Progress

DECODE_THREADS = min(8, os.cpu_count() or 1)


@dataclass
class CategoryState:
    """What is computed once per category and shared by every unit of work."""

    data: CategoryData
    images: CategoryImages  # preprocessed test images, read as (3, H, W) in [0, 1]
    sizes: list[tuple[int, int]]  # original (width, height)
    labels: np.ndarray
    masks: list[np.ndarray | None] | None  # ground truth at the original size; None: none
    notes: list[str] = field(default_factory=list)  # said in every row of the category
    clean_features: list[Tensor] = field(default_factory=list)
    clean_foreground: list[Tensor] | None = None
    clean_distances: dict[tuple[int, int], list[Tensor]] = field(default_factory=dict)
    # The trust engine of each (shots, seed), and what it gives every clean test image.
    trust: dict[tuple[int, int], TrustEngine] = field(default_factory=dict)
    clean_fields: dict[tuple[int, int], Assessment] = field(default_factory=dict)
    support_features: dict[Path, list[Tensor]] = field(default_factory=dict)
    nearest: NearestParts = field(default_factory=NearestParts)  # bank search, per part
    # L-inf/PSNR columns per attacked test set (``Evaluation._test_set``; None: score attacks)
    perturbations: dict[tuple | None, dict[str, float]] = field(default_factory=dict)
    probe_labels: list[Tensor] | None = None
    probes: dict[int, torch.nn.Linear] = field(default_factory=dict)
    pixel_targets: PixelTargets | None = None  # ground-truth regions on the device
    pixel_truth: PooledTruth | None = None  # the same in numpy, for the CPU's metrics
    model: FittedDetector | None = None  # the category's detector, refitted per unit
    flag_inputs: FlagInputCache = field(default_factory=FlagInputCache)

    @property
    def category(self) -> str:
        return self.data.category


class CategoryImages(Sequence[Tensor]):
    """A category's preprocessed test images, kept as their 8-bit values (uint8, a quarter
    of float32's memory; lossless: ``preprocess_uint8``). Each item read (an index or a
    slice, e.g. a batch) is the float (3, H, W) tensor in [0, 1] of ``preprocess``, made
    when it is read."""

    def __init__(self, images: Sequence[Tensor]) -> None:
        if any(t.dtype != torch.uint8 for t in images):
            raise ValueError("test images must be kept as uint8 values")
        self.uint8 = list(images)

    def __len__(self) -> int:
        return len(self.uint8)

    @overload
    def __getitem__(self, i: int) -> Tensor: ...
    @overload
    def __getitem__(self, i: slice) -> list[Tensor]: ...
    def __getitem__(self, i: int | slice) -> Tensor | list[Tensor]:
        if isinstance(i, slice):
            return [to_unit(t) for t in self.uint8[i]]
        return to_unit(self.uint8[i])


def _preprocess_or_error(
    resolution: int, sample: Sample
) -> tuple[Tensor, tuple[int, int]] | ImageReadError:
    try:
        rgb = load_rgb8(sample.path, resolution)
        return preprocess_uint8(rgb, resolution), rgb.size
    except ImageReadError as exc:
        return exc


def load_state(
    data: CategoryData, runtime: BackboneRuntime, log: Progress, skip: Callable[[str], None]
) -> CategoryState:
    """Test images, sizes, labels and masks; an unreadable image is left out (and said
    so), an unreadable or missing mask leaves only that image out of pixel metrics."""
    category = data.category
    log(f"[{category}] {len(data.test)} test images, {len(data.train)} normal training images")
    kept, images, sizes = [], [], []
    # Decoding and resizing release the GIL: worker threads keep the device fed.
    with (
        ThreadPoolExecutor(DECODE_THREADS) as pool,
        log.bar(f"[{category}] reading test images", len(data.test)) as bar,
    ):
        decoded = pool.map(functools.partial(_preprocess_or_error, runtime.resolution), data.test)
        for sample, result in zip(data.test, decoded):
            bar.update()
            if isinstance(result, ImageReadError):
                skip(f"[{category}] test image left out: {result}")
                continue
            kept.append(sample)
            images.append(result[0])
            sizes.append(result[1])
    if not kept:
        raise ValueError(f"{category}: none of its {len(data.test)} test images is readable")
    notes = []
    if len(kept) < len(data.test):
        notes.append(f"{len(data.test) - len(kept)} unreadable test image(s) left out")
    data = replace(data, test=tuple(kept))
    masks = None
    if data.has_masks:
        masks = [_mask_or_none(sample, size, skip) for sample, size in zip(data.test, sizes)]
        without = [s.image_id for s, m in zip(data.test, masks) if m is None]
        if without:
            shown = ", ".join(without[:3]) + (", ..." if len(without) > 3 else "")
            notes.append(
                f"pixel metrics without {len(without)} anomalous image(s) that have no "
                f"readable mask: {shown}"
            )
    labels = np.array([s.label for s in data.test])
    return CategoryState(data, CategoryImages(images), sizes, labels, masks, notes=notes)


def _mask_or_none(
    sample: Sample, size: tuple[int, int], skip: Callable[[str], None]
) -> np.ndarray | None:
    if not sample.mask_available:
        skip(f"{sample.path}: anomalous, no mask file; left out of pixel metrics")
        return None
    try:
        return load_mask(sample, size)
    except ValueError as exc:  # unreadable, or not the image's size
        skip(f"mask left out of pixel metrics: {exc}")
        return None


def probe_labels(st: CategoryState, resolution: int) -> list[Tensor]:
    """Patch labels for the probe: max-pooled masks, or the image label everywhere."""
    if st.probe_labels is None:
        st.probe_labels = []
        for i, x in enumerate(st.images.uint8):  # only their shapes: no float copies
            if st.masks is not None and st.masks[i] is not None:
                m = patch_mask(preprocess_mask(st.masks[i], resolution))
            else:
                m = torch.full((x.shape[1] // 14, x.shape[2] // 14), bool(st.labels[i]))
            st.probe_labels.append(m.float())
    return st.probe_labels
