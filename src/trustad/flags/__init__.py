"""Attack and out-of-distribution flags that look beyond the image score.

Use from a fitted :class:`trustad.detector.AnomalyDINO` and what it computed::

    flag = make_flag("median")
    flag.calibrate(detector, FlagInputs(cal_distances, cal_features, cal_images), 0.05)
    values = flag.statistic(FlagInputs(distances, features, images))
    flagged = flag.predict(values)

For an evaluation runner: ``calibrated_flags(detector, clean_calibration)`` once per fitted
detector, then ``flag_columns(flags, clean_evaluation, attacked_evaluation)`` per attack.
The adaptive attacker is ``flag_aware_score_loss`` (an objective for PGD); the gate
(``gate_probabilities``) replaces a flagged input's probability by the prior. Every flag
shares one threshold rule (``rate_threshold``); ``entropy`` is the paper's flag, on the
calibrated probability.

``FLAGS`` maps each name to its class; ``FLAG_COSTS`` gives the extra backbone forward
passes per image each costs (0: computed from the detector's own pass). The statistics are
comparable across images of one detector (one category, shots and seed) only.
"""

from __future__ import annotations

from .adaptive import DEFAULT_LAMBDA, flag_aware_score_loss
from .base import BaseFlag, Flag, FlagInputs
from .columns import calibrated_flags, flag_columns
from .combined import CombinedFlag
from .entropy import EntropyFlag
from .noise_level import NoiseLevelFlag
from .registry import (
    COMBINED_MEMBERS,
    DEFAULT_FLAG,
    FLAG_COSTS,
    FLAGS,
    ZERO_COST_FLAGS,
    flag_from_state,
    make_flag,
)
from .stability import TRANSFORMS, StabilityFlag
from .statistics import (
    ExceedanceFlag,
    FeatureNormFlag,
    MedianDistanceFlag,
)
from .threshold import (
    DEFAULT_FALSE_FLAG_RATE,
    flagging_auroc,
    gate_probabilities,
    rate_threshold,
    tpr_at_fpr,
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
    "EntropyFlag",
    "ExceedanceFlag",
    "FeatureNormFlag",
    "Flag",
    "FlagInputs",
    "MedianDistanceFlag",
    "NoiseLevelFlag",
    "StabilityFlag",
    "ZERO_COST_FLAGS",
    "calibrated_flags",
    "flag_columns",
    "flag_aware_score_loss",
    "flag_from_state",
    "flagging_auroc",
    "gate_probabilities",
    "make_flag",
    "rate_threshold",
    "tpr_at_fpr",
]
