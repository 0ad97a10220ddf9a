"""The engine seam: what turns preprocessed images into patch-distance grids.

``FittedDetector`` scores through ``model.engine``: the torch detector by default
(``TorchEngine``), or an exported graph run by onnxruntime or OpenVINO
(``trustad.engines.runners``). Everything after the distances (image scores, maps,
calibration, thresholds, flags) is the same code whichever engine ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from torch import Tensor

from ..detector import AnomalyDINO

# The engines a user can name (``--engine``).
ENGINES = ("torch", "onnx", "openvino")


class Engine(Protocol):
    """Maps preprocessed images (3, H, W) in [0, 1] to masked patch-distance grids (h, w)."""

    name: str

    def distances(self, images: Sequence[Tensor]) -> list[Tensor]: ...


class TorchEngine:
    """The torch detector: its backbone's features, then its bank's distances."""

    name = "torch"

    def __init__(self, detector: AnomalyDINO) -> None:
        self.detector = detector

    def distances(self, images: Sequence[Tensor]) -> list[Tensor]:
        return self.detector.distances_from_features(self.detector.features(images))
