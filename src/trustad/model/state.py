"""Small JSON-able pieces of the fitted detector: per-image answers, image records,
calibrator state."""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..backbone.preprocess import ImageInput, load_rgb8
from ..calibration import Calibrator, make_calibrator


@dataclass
class Prediction:
    """One image's answer. ``decision`` True means anomalous (see the module docstring)."""

    score: float
    probability: float | None
    p_value: float | None
    decision: bool | None
    entropy: float | None
    flag: bool | None
    # The probability, or the calibration images' anomaly rate where the flag is raised: an
    # input suspected of manipulation carries no evidence to trust beyond the prior.
    gated_probability: float | None = None
    # [low, high]: the 90 % credible interval of the probability (Bayesian calibrators).
    probability_interval: list[float] | None = None
    # Why the flag fired: the statistic, its value against the threshold, what to do.
    flag_reason: str | None = None
    anomaly_map: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able fields (everything but the map)."""
        d = asdict(self)
        del d["anomaly_map"]
        return d


def image_record(image: ImageInput, index: int) -> dict[str, str]:
    """Name and sha256 of an image: of the file's bytes for paths, else of its RGB pixels."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        return {"name": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    rgb = load_rgb8(image)
    digest = hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()
    return {"name": f"<in-memory image {index}>", "sha256": digest}


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats written as strings ("inf"), for strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def calibrator_state(cal: Calibrator) -> dict[str, Any]:
    """Name, constructor options and fitted parameters (attributes ending in ``_``)."""
    return {
        "name": cal.name,
        "options": {k: v for k, v in vars(cal).items() if not k.endswith("_")},
        "params": {k: v for k, v in vars(cal).items() if k.endswith("_")},
    }


def calibrator_from_state(state: dict[str, Any]) -> Calibrator:
    """The fitted calibrator that :func:`calibrator_state` described."""
    cal = make_calibrator(state["name"], **state["options"])
    for k, v in state["params"].items():
        setattr(cal, k, v)
    return cal
