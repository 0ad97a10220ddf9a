"""Attack and out-of-distribution flags that look beyond the image score.

Use from a fitted :class:`trustad.detector.AnomalyDINO` and what it computed::

    flag = make_flag("median")
    flag.calibrate(detector, FlagInputs(cal_distances, cal_features, cal_images), 0.05)
    values = flag.statistic(FlagInputs(distances, features, images))
    flagged = flag.predict(values)

For an evaluation runner: ``calibrated_flags(detector, clean_calibration)`` once per fitted
detector, then ``flag_columns(flags, clean_evaluation, attacked_evaluation)`` per attack.
The adaptive attacker is ``flag_aware_score_loss`` (an objective for PGD); calibration
that holds under attack: ``fit_mixed_calibrator``, ``abstaining_metrics`` and
``gate_probabilities``.

``FLAGS`` maps each name to its class; ``FLAG_COSTS`` gives the extra backbone forward
passes per image each costs (0: computed from the detector's own pass). The statistics are
comparable across images of one detector (one category, shots and seed) only.
"""

from __future__ import annotations

from .adaptive import DEFAULT_LAMBDA, flag_aware_score_loss
from .base import DEFAULT_FALSE_FLAG_RATE, BaseFlag, Flag, FlagInputs
from .columns import calibrated_flags, flag_columns
from .combined import CombinedFlag
from .noise_level import NoiseLevelFlag
from .registry import (
    COMBINED_MEMBERS,
    DEFAULT_FLAG,
    FLAG_COSTS,
    FLAGS,
    ZERO_COST_FLAGS,
    make_flag,
)
from .robust import (
    abstaining_metrics,
    as_label_tensor,
    defender_perturbation,
    fit_mixed_calibrator,
    gate_probabilities,
)
from .stability import TRANSFORMS, StabilityFlag
from .statistics import (
    ExceedanceFlag,
    FeatureNormFlag,
    MedianDistanceFlag,
)

__all__ = [
    "COMBINED_MEMBERS",
    "DEFAULT_FALSE_FLAG_RATE",
    "DEFAULT_FLAG",
    "DEFAULT_LAMBDA",
    "FLAGS",
    "FLAG_COSTS",
    "TRANSFORMS",
    "BaseFlag",
    "CombinedFlag",
    "ExceedanceFlag",
    "FeatureNormFlag",
    "Flag",
    "FlagInputs",
    "MedianDistanceFlag",
    "NoiseLevelFlag",
    "StabilityFlag",
    "ZERO_COST_FLAGS",
    "abstaining_metrics",
    "calibrated_flags",
    "as_label_tensor",
    "defender_perturbation",
    "fit_mixed_calibrator",
    "flag_columns",
    "flag_aware_score_loss",
    "gate_probabilities",
    "make_flag",
]
