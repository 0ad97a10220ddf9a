"""Calibration, uncertainty and attack flagging (PROTOCOL section 6).

- :mod:`.calibrators`: score -> probability maps (uncalibrated, Platt, temperature,
  isotonic, beta) and :func:`fit_calibrator_safely`;
- :mod:`.metrics`: :func:`ece` (top-label), :func:`classwise_ece`, :func:`nll`,
  :func:`brier`, :func:`entropy`, :func:`reliability_diagram`;
- :mod:`.flags`: attack flagging by entropy (:class:`EntropyFlag`, :func:`flagging_auroc`,
  :func:`tpr_at_fpr`);
- :mod:`.conformal`: :class:`ConformalThreshold`, a threshold with a guaranteed
  false-alarm rate;
- :mod:`.split`: :func:`calibration_split`, the stratified calibration/evaluation split;
- :mod:`.inputs`: the input checks they share.
"""

from .calibrators import (
    CALIBRATORS,
    BetaCalibrator,
    Calibrator,
    IsotonicCalibrator,
    PlattCalibrator,
    TemperatureCalibrator,
    Uncalibrated,
    fit_calibrator_safely,
    make_calibrator,
)
from .conformal import ConformalThreshold
from .flags import DEFAULT_FLAG_RATE, EntropyFlag, flagging_auroc, tpr_at_fpr
from .metrics import brier, classwise_ece, ece, entropy, nll, reliability_diagram
from .split import DEFAULT_CALIBRATION_FRACTION, CalibrationSplitError, calibration_split

__all__ = [
    "Calibrator",
    "Uncalibrated",
    "PlattCalibrator",
    "TemperatureCalibrator",
    "IsotonicCalibrator",
    "BetaCalibrator",
    "CALIBRATORS",
    "DEFAULT_CALIBRATION_FRACTION",
    "DEFAULT_FLAG_RATE",
    "make_calibrator",
    "fit_calibrator_safely",
    "ece",
    "classwise_ece",
    "nll",
    "brier",
    "entropy",
    "reliability_diagram",
    "EntropyFlag",
    "flagging_auroc",
    "tpr_at_fpr",
    "ConformalThreshold",
    "CalibrationSplitError",
    "calibration_split",
]
