"""trustad: trustworthy few-shot anomaly detection on DINOv2 features."""

from .backbone import load_backbone, preprocess

__version__ = "0.1.0"
__all__ = ["__version__", "load_backbone", "preprocess"]
