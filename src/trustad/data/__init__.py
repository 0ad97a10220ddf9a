"""Datasets: MVTec-AD, VisA, folders in the MVTec layout, and a synthetic texture set."""

from .catalog import (
    DATASETS,
    MVTEC_CATEGORIES,
    PREPROCESSING,
    VISA_CATEGORIES,
    CategoryDefaults,
    category_defaults,
)
from .datasets import (
    IMAGE_EXTENSIONS,
    CategoryData,
    MissingMaskError,
    Sample,
    image_size,
    list_categories,
    load_category,
    load_mask,
    support_paths,
)
from .synthetic import make_synthetic_dataset, synthetic_categories

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "MVTEC_CATEGORIES",
    "PREPROCESSING",
    "VISA_CATEGORIES",
    "CategoryData",
    "CategoryDefaults",
    "MissingMaskError",
    "Sample",
    "category_defaults",
    "image_size",
    "list_categories",
    "load_category",
    "load_mask",
    "make_synthetic_dataset",
    "support_paths",
    "synthetic_categories",
]
