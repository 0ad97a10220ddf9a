"""Engines that run a fitted detector: torch, or its exported graph (ONNX, OpenVINO).

``base`` holds the seam (``InferenceEngine``, ``TorchEngine``); ``graph`` the detector as one
traceable module; ``export`` writes ONNX / OpenVINO files with the model's settings;
``runners`` runs them and loads them back as a ``FittedDetector``.
"""

from .base import ENGINES, InferenceEngine, TorchEngine

__all__ = ["ENGINES", "InferenceEngine", "TorchEngine"]
