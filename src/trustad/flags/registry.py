"""The flags by name, what each costs, and which one is the default."""

from __future__ import annotations

from .base import BaseFlag
from .combined import CombinedFlag
from .entropy import EntropyFlag
from .noise_level import NoiseLevelFlag
from .stability import TRANSFORMS, StabilityFlag
from .statistics import (
    ExceedanceFlag,
    FeatureNormFlag,
    MedianDistanceFlag,
)

ZERO_COST_FLAGS: dict[str, type[BaseFlag]] = {
    cls.name: cls
    for cls in (
        MedianDistanceFlag,
        ExceedanceFlag,
        FeatureNormFlag,
        NoiseLevelFlag,
    )
}
FLAGS: dict[str, type[BaseFlag]] = {
    **ZERO_COST_FLAGS,
    StabilityFlag.name: StabilityFlag,
    CombinedFlag.name: CombinedFlag,
    EntropyFlag.name: EntropyFlag,
}
FLAG_COSTS: dict[str, int] = {
    **{name: 0 for name in ZERO_COST_FLAGS},
    StabilityFlag.name: len(TRANSFORMS),
    CombinedFlag.name: 0,
    EntropyFlag.name: 0,
}
# The members of the default "combined" flag: every zero-cost flag (none picked by hand).
COMBINED_MEMBERS = tuple(ZERO_COST_FLAGS)
# The flag with the best measured separation of attacked from clean inputs, and free
# (benchmarks/flags.py; results in benchmarks/results/flags.md): the fitted detector's flag,
# the gate and the adaptive attacker's target of evaluations, unless chosen otherwise.
DEFAULT_FLAG = "noise_level"


def make_flag(name: str) -> BaseFlag:
    """A fresh, unprepared flag by name; "combined" combines ``COMBINED_MEMBERS``. The
    entropy flag needs calibrated probabilities (``FlagInputs.probabilities``)."""
    if name == CombinedFlag.name:
        return CombinedFlag([ZERO_COST_FLAGS[m]() for m in COMBINED_MEMBERS])
    try:
        return FLAGS[name]()
    except KeyError:
        raise ValueError(f"unknown flag {name!r}; choose one of {', '.join(FLAGS)}") from None


def flag_from_state(name: str, state: dict, detector: object) -> BaseFlag:
    """A fitted flag rebuilt from the state a model file recorded (``BaseFlag.state``)."""
    if name not in FLAGS:
        raise ValueError(
            f"the model uses flag {name!r}, which this trustad does not know "
            f"(known: {', '.join(FLAGS)}); upgrade trustad"
        )
    return make_flag(name).restore(detector, state)
