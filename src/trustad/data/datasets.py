"""Dataset loaders: MVTec-AD, VisA (raw release or prepared 1cls layout) and any folder in
the MVTec layout (PROTOCOL section 3).

Loading only lists files: every visible file whose extension a Pillow format with a
decoder claims (``trustad.images.IMAGE_EXTENSIONS``), broken links included, so that a file
that cannot be read is reported by the reader (``ImageReadError``) instead of vanishing.
Pixels are read later (``load_mask``, the backbone's ``load_rgb8``), all through
``trustad.images``. Anomalous test images without a mask are listed in
``CategoryData.missing_masks``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..images import IMAGE_EXTENSIONS, ImageReadError, read_image, read_size
from .catalog import DATASETS

VISA_CSV = Path("split_csv") / "1cls.csv"
_VISA_COLUMNS = ("object", "split", "label", "image", "mask")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 1 anomalous, 0 normal
    defect: str  # "good" or the defect type
    mask_path: Path | None
    image_id: str  # path relative to the category root, posix style

    @property
    def mask_available(self) -> bool:
        """Whether ``load_mask`` has a mask to give: a normal image (all False) or an
        anomalous one with a mask file."""
        return self.label == 0 or self.mask_path is not None


@dataclass(frozen=True)
class CategoryData:
    dataset: str  # "mvtec" | "visa" | "folder"
    category: str
    root: Path  # the category folder
    train: tuple[Path, ...]  # normal training images, sorted by file name
    test: tuple[Sample, ...]  # sorted by image_id
    has_masks: bool  # at least one anomalous test image has a mask file
    # Anomalous test images without a mask file: pixel metrics can use only the others.
    missing_masks: tuple[Sample, ...] = ()


class MissingMaskError(ValueError):
    """An anomalous test image without a mask file (see ``CategoryData.missing_masks``)."""


# ---------------------------------------------------------------- file helpers


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _is_image(p: Path) -> bool:
    # Not ``is_file()``: a broken link or a link loop is listed, for the reader to report.
    return _visible(p) and p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir()


def _images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (as sorted(os.listdir) would)."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _is_image(p)), key=lambda p: p.name)


def _subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name)


def _is_mvtec_category(folder: Path) -> bool:
    return (folder / "train" / "good").is_dir()


def _is_visa_raw_category(folder: Path) -> bool:
    return (folder / "Data" / "Images").is_dir()


def _is_category(dataset: str, folder: Path) -> bool:
    if dataset == "visa":
        return _is_mvtec_category(folder) or _is_visa_raw_category(folder)
    return _is_mvtec_category(folder)


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")


def _check_root(root: str | Path) -> Path:
    # Absolute, so that "." or ".." still has a name (the category, when root is one).
    root = Path(root).resolve()
    if not root.exists():
        raise FileNotFoundError(f"dataset root not found: {root}")
    if not root.is_dir():
        raise ValueError(f"dataset root is not a folder: {root}")
    return root


def _expected_layout(dataset: str) -> str:
    if dataset == "visa":
        return (
            "a VisA category needs Data/Images (raw release) or train/good (1cls layout), "
            "e.g. <root>/candle/Data/Images or <root>/candle/train/good"
        )
    return "a category needs train/good, e.g. <root>/<category>/train/good or <root>/train/good"


def _available(dataset: str, root: Path) -> list[str]:
    """Categories under ``root``, or ``[root.name]`` when ``root`` is itself a category."""
    if _is_category(dataset, root):
        return [root.name]
    return [d.name for d in _subdirs(root) if _is_category(dataset, d)]


# ---------------------------------------------------------------- public API


def list_categories(
    dataset: str, root: str | Path, categories: Sequence[str] | None = None
) -> list[str]:
    """The categories found under ``root`` (sorted), or the ``categories`` asked for, in
    the order given, after checking that each is present."""
    _check_dataset(dataset)
    root = _check_root(root)
    found = _available(dataset, root)
    if not found:
        raise ValueError(f"no {dataset} category found under {root}: {_expected_layout(dataset)}")
    if categories is None:
        return found
    if isinstance(categories, str):
        categories = [categories]
    missing = [c for c in categories if c not in found]
    if missing:
        raise ValueError(
            f"categor{'y' if len(missing) == 1 else 'ies'} {', '.join(missing)} not found under "
            f"{root}; available: {', '.join(found)}"
        )
    return list(dict.fromkeys(categories))


def load_category(dataset: str, root: str | Path, category: str) -> CategoryData:
    """List the training and test files of one category."""
    _check_dataset(dataset)
    root = _check_root(root)
    if _is_category(dataset, root) and root.name == category:
        cat_dir = root
    else:
        cat_dir = root / category
        if not cat_dir.is_dir() or not _is_category(dataset, cat_dir):
            found = _available(dataset, root)
            listing = ", ".join(found) if found else "none"
            raise FileNotFoundError(
                f"category {category!r} not found: {cat_dir} is not a category folder "
                f"({_expected_layout(dataset)}); available under {root}: {listing}"
            )
    if dataset == "visa" and not _is_mvtec_category(cat_dir):
        return _load_visa_raw(cat_dir, category)
    return _load_mvtec_layout(dataset, cat_dir, category)


def support_paths(train: Sequence[Path], shots: int, seed: int) -> list[Path]:
    """The few-shot support set: ``sorted(train)[seed*k:(seed+1)*k]``."""
    if shots < 1:
        raise ValueError(f"shots must be at least 1, got {shots}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    ordered = sorted(Path(p) for p in train)
    need = (seed + 1) * shots
    if len(ordered) < need:
        where = f" in {ordered[0].parent}" if ordered else ""
        raise ValueError(
            f"{shots}-shot support for seed {seed} takes images {seed * shots}..{need - 1} of "
            f"the sorted training images, so it needs at least {need}; there are "
            f"{len(ordered)}{where}"
        )
    return ordered[seed * shots : need]


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file as ``load_rgb8`` decodes it (EXIF orientation
    applied), read from its header; an unreadable file raises ``ImageReadError``."""
    return read_size(path)


def load_mask(sample: Sample, size: tuple[int, int]) -> np.ndarray:
    """The boolean (height, width) mask of a test sample; ``size`` is the image's
    (width, height). A normal image without mask file gets an all-False mask; an anomalous
    one raises ``MissingMaskError``, an unreadable mask file ``ImageReadError``."""
    width, height = size
    if sample.mask_path is None:
        if sample.label == 0:
            return np.zeros((height, width), dtype=bool)
        raise MissingMaskError(f"anomalous image {sample.path} has no mask file")
    path = sample.mask_path
    try:
        img = read_image(path)
    except ImageReadError as exc:
        raise type(exc)(path, f"{exc.reason} (the mask of {sample.path})") from exc
    if img.size != (width, height):
        raise ValueError(
            f"mask {path} is {img.size[0]}x{img.size[1]} but its image {sample.path} "
            f"is {width}x{height} (width x height)"
        )
    if img.mode == "P":
        img = img.convert("RGB")  # palette indices say nothing about brightness
    arr = np.asarray(img)
    if arr.ndim == 3:
        # Colour masks: any colour channel set; an alpha channel is ignored.
        channels = arr.shape[-1]
        arr = arr[..., : 3 if channels >= 3 else 1].max(axis=-1)
    return arr > 0


# ---------------------------------------------------------------- layouts


def _mask_index(folder: Path) -> dict[str, Path]:
    """Mask files of one ground-truth folder by lower-case stem."""
    return {p.stem.lower(): p for p in _images(folder)}


def _finish(
    dataset: str, category: str, cat_dir: Path, train: list[Path], test: list[Sample]
) -> CategoryData:
    test.sort(key=lambda s: s.image_id)
    missing = tuple(s for s in test if not s.mask_available)
    has_masks = any(s.label == 1 and s.mask_path is not None for s in test)
    return CategoryData(
        dataset=dataset,
        category=category,
        root=cat_dir,
        train=tuple(train),
        test=tuple(test),
        has_masks=has_masks,
        missing_masks=missing,
    )


def _load_mvtec_layout(dataset: str, cat_dir: Path, category: str) -> CategoryData:
    train_dir = cat_dir / "train" / "good"
    train = _images(train_dir)
    if not train:
        raise ValueError(f"no training images in {train_dir} (expected normal images there)")
    test_dir = cat_dir / "test"
    if not test_dir.is_dir():
        raise FileNotFoundError(f"test folder not found: {test_dir} (expected test/<type>/)")
    test: list[Sample] = []
    for defect_dir in _subdirs(test_dir):
        defect = defect_dir.name
        label = 0 if defect == "good" else 1
        masks = _mask_index(cat_dir / "ground_truth" / defect) if label else {}
        for path in _images(defect_dir):
            stem = path.stem.lower()
            mask = masks.get(stem + "_mask", masks.get(stem)) if label else None
            image_id = path.relative_to(cat_dir).as_posix()
            test.append(Sample(path, label, defect, mask, image_id))
    if not test:
        raise ValueError(
            f"no test images in {test_dir} (expected images in test/<type>/, "
            "e.g. test/good and test/<defect>)"
        )
    return _finish(dataset, category, cat_dir, train, test)


def _load_visa_raw(cat_dir: Path, category: str) -> CategoryData:
    base = cat_dir.parent  # paths in the split file are relative to the dataset root
    csv_path = base / VISA_CSV
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"VisA split file not found: {csv_path} (the raw VisA layout needs "
            f"<root>/{VISA_CSV.as_posix()} beside <root>/{category}/Data)"
        )
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in _VISA_COLUMNS if c not in columns]
        if missing:
            raise ValueError(
                f"malformed VisA split file {csv_path}: missing column(s) {', '.join(missing)}; "
                f"expected columns {','.join(_VISA_COLUMNS)}"
            )
        rows = [
            (line, {k.strip(): (v or "").strip() for k, v in row.items() if k is not None})
            for line, row in enumerate(reader, start=2)
        ]
    train: list[Path] = []
    test: list[Sample] = []
    for line, row in rows:
        if row["object"] != category:
            continue
        where = f"{csv_path} line {line}"
        label_name, split = row["label"].lower(), row["split"].lower()
        if label_name not in ("normal", "anomaly"):
            raise ValueError(
                f"{where}: unknown label {row['label']!r} (expected normal or anomaly)"
            )
        if split not in ("train", "test"):
            raise ValueError(f"{where}: unknown split {row['split']!r} (expected train or test)")
        path = base / row["image"]
        if not path.is_file():
            raise FileNotFoundError(f"{where}: image file not found: {path}")
        label = int(label_name == "anomaly")
        if split == "train":
            if label:
                raise ValueError(f"{where}: anomalous image {path} in the train split")
            train.append(path)
            continue
        mask = None
        if label and row["mask"]:
            mask = base / row["mask"]
            if not mask.is_file():
                raise FileNotFoundError(f"{where}: mask file not found: {mask}")
        try:
            image_id = path.relative_to(cat_dir).as_posix()
        except ValueError:  # an image outside the category folder: keep it unique anyway
            image_id = Path(os.path.relpath(path, cat_dir)).as_posix()
        test.append(Sample(path, label, "anomaly" if label else "good", mask, image_id))
    if not train and not test:
        raise ValueError(f"no rows for object {category!r} in VisA split file {csv_path}")
    if not train:
        raise ValueError(f"no training images for {category!r} in VisA split file {csv_path}")
    if not test:
        raise ValueError(f"no test images for {category!r} in VisA split file {csv_path}")
    train.sort(key=lambda p: (p.name, str(p)))
    return _finish("visa", category, cat_dir, train, test)
