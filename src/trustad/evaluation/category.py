"""What a run computes once per category: test images, sizes, labels, masks, features,
support features, probes; shared by every unit of work of the category."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..backbone.preprocess import patch_mask, preprocess_mask
from ..backbone.runtime import BackboneRuntime
from ..data import CategoryData, Sample, load_mask
from ..images import ImageReadError
from ..metrics import PooledTruth
from ..model import FittedDetector
from ..pixel_metrics import PixelTargets
from .flagging import UnitFlags
from .nearest import NearestParts
from .progress import Progress
from .rows import CleanCalibration

DECODE_THREADS = min(8, os.cpu_count() or 1)


@dataclass
class CategoryState:
    """What is computed once per category and shared by every unit of work."""

    data: CategoryData
    images: list[Tensor]  # preprocessed test images (3, H, W) in [0, 1]
    sizes: list[tuple[int, int]]  # original (width, height)
    labels: np.ndarray
    masks: list[np.ndarray | None] | None  # ground truth at the original size; None: none
    notes: list[str] = field(default_factory=list)  # said in every row of the category
    clean_features: list[Tensor] = field(default_factory=list)
    clean_foreground: list[Tensor] | None = None
    clean_distances: dict[tuple[int, int], list[Tensor]] = field(default_factory=dict)
    calibrations: dict[tuple[int, int], CleanCalibration] = field(default_factory=dict)
    support_features: dict[Path, list[Tensor]] = field(default_factory=dict)
    nearest: NearestParts = field(default_factory=NearestParts)  # bank search, per part
    probe_labels: list[Tensor] | None = None
    probes: dict[int, torch.nn.Linear] = field(default_factory=dict)
    pixel_targets: PixelTargets | None = None  # ground-truth regions on the device
    pixel_truth: PooledTruth | None = None  # the same in numpy, for the CPU's metrics
    model: FittedDetector | None = None  # the category's detector, refitted per unit
    flags: UnitFlags | None = None  # attack flags, calibrated per (shots, seed)

    @property
    def category(self) -> str:
        return self.data.category


def _preprocess_or_error(
    runtime: BackboneRuntime, sample: Sample
) -> tuple[list[Tensor], list[tuple[int, int]]] | ImageReadError:
    try:
        return runtime.preprocess([sample.path])
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
        decoded = pool.map(functools.partial(_preprocess_or_error, runtime), data.test)
        for sample, result in zip(data.test, decoded):
            bar.update()
            if isinstance(result, ImageReadError):
                skip(f"[{category}] test image left out: {result}")
                continue
            kept.append(sample)
            images.extend(result[0])
            sizes.extend(result[1])
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
    return CategoryState(data, images, sizes, labels, masks, notes=notes)


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
        for i, x in enumerate(st.images):
            if st.masks is not None and st.masks[i] is not None:
                m = patch_mask(preprocess_mask(st.masks[i], resolution))
            else:
                m = torch.full((x.shape[1] // 14, x.shape[2] // 14), bool(st.labels[i]))
            st.probe_labels.append(m.float())
    return st.probe_labels
