"""The fitted detector and its model file: bank, calibration, thresholds, flag; save/load.

``FittedDetector`` is the object behind ``trustad fit``, ``predict`` and ``serve``;
``trustad.model.trust`` is the trust engine it owns (calibrator, conformal threshold, flag,
gate: the same one ``trustad evaluate`` measures); ``trustad.model.file`` defines the file
format; ``trustad.model.overlay`` heatmap pictures. The flags are ``trustad.flags``'s.
"""

from ..flags import DEFAULT_FALSE_FLAG_RATE, DEFAULT_FLAG, FLAGS, make_flag
from .file import FORMAT_VERSION, MODEL_SUFFIX, ModelFileError, read_key, read_model_file
from .fitted import SAVABLE_CALIBRATORS, FittedDetector
from .overlay import (
    DEFAULT_MAP_SCALE,
    MAP_SCALES,
    mask_png,
    overlay,
    overlay_png,
    prediction_overlay_png,
)
from .state import Prediction, image_record, json_safe
from .trust import (
    DEFAULT_CALIBRATOR,
    DEFAULT_CONFORMAL_ALPHA,
    Assessment,
    FlagReference,
    TrustEngine,
    TrustOptions,
)

__all__ = [
    "DEFAULT_CALIBRATOR",
    "DEFAULT_CONFORMAL_ALPHA",
    "DEFAULT_FALSE_FLAG_RATE",
    "DEFAULT_FLAG",
    "DEFAULT_MAP_SCALE",
    "FLAGS",
    "FORMAT_VERSION",
    "MAP_SCALES",
    "MODEL_SUFFIX",
    "SAVABLE_CALIBRATORS",
    "Assessment",
    "FittedDetector",
    "ModelFileError",
    "Prediction",
    "TrustEngine",
    "TrustOptions",
    "FlagReference",
    "image_record",
    "json_safe",
    "make_flag",
    "mask_png",
    "overlay",
    "overlay_png",
    "prediction_overlay_png",
    "read_key",
    "read_model_file",
]
