"""Calibration and uncertainty (PROTOCOL section 6); attack flags live in ``trustad.flags``.

- :mod:`.calibrators`: score -> probability maps (uncalibrated, Platt, temperature,
  isotonic, beta) and :func:`fit_calibrator_safely`;
- :mod:`.metrics`: :func:`ece` (top-label), :func:`classwise_ece`, :func:`nll`,
  :func:`brier`, :func:`entropy`, :func:`reliability_diagram`;
- :mod:`.conformal`: :class:`ConformalThreshold`, a threshold with a guaranteed
  false-alarm rate;
- :mod:`.split`: :func:`calibration_split`, the stratified calibration/evaluation split;
- :mod:`.inputs`: the input checks they share.
"""

from .bayes import BayesPlattCalibrator
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
from .metrics import brier, classwise_ece, ece, entropy, nll, reliability_diagram
from .split import DEFAULT_CALIBRATION_FRACTION, CalibrationSplitError, calibration_split

__all__ = [
    "Calibrator",
    "Uncalibrated",
    "PlattCalibrator",
    "TemperatureCalibrator",
    "IsotonicCalibrator",
    "BetaCalibrator",
    "BayesPlattCalibrator",
    "CALIBRATORS",
    "DEFAULT_CALIBRATION_FRACTION",
    "make_calibrator",
    "fit_calibrator_safely",
    "ece",
    "classwise_ece",
    "nll",
    "brier",
    "entropy",
    "reliability_diagram",
    "ConformalThreshold",
    "CalibrationSplitError",
    "calibration_split",
]
