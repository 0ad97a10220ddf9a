"""The inference-engine seam: what turns preprocessed images into patch features and
patch-distance grids.

``FittedDetector`` scores through ``model.engine``: the torch detector by default
(``TorchEngine``), or an exported graph run by onnxruntime or OpenVINO
(``trustad.engines.runners``). Everything after the distances (image scores, maps, the
trust engine's calibration, thresholds and flags) is the same code whichever engine ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from torch import Tensor

from ..detector import AnomalyDINO

# The engines a user can name (``--engine``).
ENGINES = ("torch", "onnx", "openvino")


class InferenceEngine(Protocol):
    """Maps preprocessed images (3, H, W) in [0, 1] to their patch features (h, w, D) and
    masked patch-distance grids (h, w), on the CPU."""

    name: str

    def run(self, images: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]: ...


class TorchEngine:
    """The torch detector: its backbone's features, then its bank's distances."""

    name = "torch"

    def __init__(self, detector: AnomalyDINO) -> None:
        self.detector = detector

    def run(self, images: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        features = self.detector.features(images)
        return features, self.detector.distances_from_features(features)
