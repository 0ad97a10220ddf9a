"""The fitted detector and its model file: bank, calibration, thresholds, flag; save/load.

``FittedDetector`` is the object behind ``trustad fit``, ``predict`` and ``serve``;
``trustad.model.file`` defines the file format; ``trustad.model.flags`` the pluggable
"do not trust this answer" flags; ``trustad.model.overlay`` heatmap pictures.
"""

from ..flags import DEFAULT_FLAG
from .file import FORMAT_VERSION, MODEL_SUFFIX, ModelFileError, read_key, read_model_file
from .fitted import (
    DEFAULT_CALIBRATOR,
    DEFAULT_CONFORMAL_ALPHA,
    SAVABLE_CALIBRATORS,
    FittedDetector,
)
from .flags import DEFAULT_FALSE_FLAG_RATE, FLAGS, make_flag
from .overlay import overlay, overlay_png
from .state import Prediction, image_record, json_safe

__all__ = [
    "DEFAULT_CALIBRATOR",
    "DEFAULT_CONFORMAL_ALPHA",
    "DEFAULT_FALSE_FLAG_RATE",
    "DEFAULT_FLAG",
    "FLAGS",
    "FORMAT_VERSION",
    "MODEL_SUFFIX",
    "SAVABLE_CALIBRATORS",
    "FittedDetector",
    "ModelFileError",
    "Prediction",
    "image_record",
    "json_safe",
    "make_flag",
    "overlay",
    "overlay_png",
    "read_key",
    "read_model_file",
]
