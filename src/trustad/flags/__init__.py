"""Attack and out-of-distribution flags that look beyond the image score.

Use from a fitted :class:`trustad.detector.AnomalyDINO` and what it computed::

    flag = make_flag("median")
    flag.calibrate(detector, FlagInputs(cal_distances, cal_features, cal_images), 0.05)
    values = flag.statistic(FlagInputs(distances, features, images))
    flagged = flag.predict(values)

``FLAGS`` maps each name to its class; ``FLAG_COSTS`` gives the extra backbone forward
passes per image each costs (0: computed from the detector's own pass). The statistics are
comparable across images of one detector (one category, shots and seed) only.
"""

from __future__ import annotations

from .adaptive import DEFAULT_LAMBDA, flag_aware_score_loss
from .base import DEFAULT_FALSE_FLAG_RATE, BaseFlag, Flag, FlagInputs
from .combined import CombinedFlag
from .robust import (
    abstaining_metrics,
    as_label_tensor,
    defender_perturbation,
    fit_mixed_calibrator,
)
from .stability import TRANSFORMS, StabilityFlag
from .statistics import (
    ExceedanceFlag,
    FeatureNormFlag,
    FlatnessFlag,
    MapEntropyFlag,
    MedianDistanceFlag,
    RoughnessFlag,
)

ZERO_COST_FLAGS: dict[str, type[BaseFlag]] = {
    cls.name: cls
    for cls in (
        MedianDistanceFlag,
        ExceedanceFlag,
        FlatnessFlag,
        MapEntropyFlag,
        RoughnessFlag,
        FeatureNormFlag,
    )
}
FLAGS: dict[str, type[BaseFlag]] = {
    **ZERO_COST_FLAGS,
    StabilityFlag.name: StabilityFlag,
    CombinedFlag.name: CombinedFlag,
}
FLAG_COSTS: dict[str, int] = {
    **{name: 0 for name in ZERO_COST_FLAGS},
    StabilityFlag.name: len(TRANSFORMS),
    CombinedFlag.name: 0,
}
# The members of the default "combined" flag: every zero-cost flag (none picked by hand).
COMBINED_MEMBERS = tuple(ZERO_COST_FLAGS)
DEFAULT_FLAG = "median"


def make_flag(name: str) -> BaseFlag:
    """A fresh, unprepared flag by name; "combined" combines ``COMBINED_MEMBERS``."""
    if name == CombinedFlag.name:
        return CombinedFlag([ZERO_COST_FLAGS[m]() for m in COMBINED_MEMBERS])
    try:
        return FLAGS[name]()
    except KeyError:
        raise ValueError(f"unknown flag {name!r}; choose one of {', '.join(FLAGS)}") from None


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
    "FlatnessFlag",
    "MapEntropyFlag",
    "MedianDistanceFlag",
    "RoughnessFlag",
    "StabilityFlag",
    "abstaining_metrics",
    "as_label_tensor",
    "defender_perturbation",
    "fit_mixed_calibrator",
    "flag_aware_score_loss",
    "make_flag",
]
