"""Pluggable "do not trust this answer" flags for the fitted detector.

A flag is chosen by name (``FLAGS``), fitted on the signals of clean calibration images and
saved as JSON-able state in the model file. Signals are arrays keyed by name: ``score``
(raw anomaly score), ``probability`` (calibrated), ``entropy`` (of that probability) and
the image statistics ``stability`` and ``noise_level`` (``image_statistics``, computed only
when the flag needs them).
A new flag registers a class here; the model file records its name, so a better flag can
become the default without breaking older files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from torch import Tensor

from ..calibration import DEFAULT_FLAG_RATE, EntropyFlag
from ..flags import FlagInputs, NoiseLevelFlag, StabilityFlag

DEFAULT_FALSE_FLAG_RATE = DEFAULT_FLAG_RATE

Signals = Mapping[str, np.ndarray]


class Flag(Protocol):
    """Flags inputs whose answer should not be trusted (e.g. attacked inputs)."""

    name: str
    needs: tuple[str, ...]  # the signals it reads

    def fit(self, signals: Signals) -> Flag: ...

    def flag(self, signals: Signals) -> np.ndarray: ...

    def state(self) -> dict[str, Any]: ...


class EntropyFlagRule:
    """Predictive entropy above a threshold set on clean calibration images for a target
    false-flag rate (``calibration.EntropyFlag``). Needs a calibrated probability."""

    name = "entropy"
    needs = ("entropy",)

    def __init__(self, false_flag_rate: float = DEFAULT_FALSE_FLAG_RATE) -> None:
        if not 0.0 <= false_flag_rate <= 1.0:
            raise ValueError(f"false-flag rate must lie in [0, 1], got {false_flag_rate}")
        self.false_flag_rate = false_flag_rate

    def fit(self, signals: Signals) -> EntropyFlagRule:
        self.rule_ = EntropyFlag(self.false_flag_rate).fit(signals["entropy"])
        return self

    @property
    def threshold_(self) -> float:
        return self.rule_.threshold_

    def flag(self, signals: Signals) -> np.ndarray:
        return self.rule_.flag(signals["entropy"])

    def state(self) -> dict[str, Any]:
        return {"false_flag_rate": self.false_flag_rate, "threshold": self.rule_.threshold_}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> EntropyFlagRule:
        out = cls(float(state["false_flag_rate"]))
        out.rule_ = EntropyFlag(out.false_flag_rate)
        out.rule_.threshold_ = float(state["threshold"])
        return out


class StatisticFlagRule:
    """A per-image statistic of ``trustad.flags`` (named as the flag) above a threshold
    set on calibration images for a target false-flag rate. Needs no calibrated
    probability, so it works with normal calibration images only."""

    name = ""

    def __init__(self, false_flag_rate: float = DEFAULT_FALSE_FLAG_RATE) -> None:
        if not 0.0 <= false_flag_rate <= 1.0:
            raise ValueError(f"false-flag rate must lie in [0, 1], got {false_flag_rate}")
        self.false_flag_rate = false_flag_rate

    @property
    def needs(self) -> tuple[str, ...]:
        return (self.name,)

    def fit(self, signals: Signals) -> StatisticFlagRule:
        self.threshold_ = EntropyFlag(self.false_flag_rate).fit(signals[self.name]).threshold_
        return self

    def flag(self, signals: Signals) -> np.ndarray:
        return np.asarray(signals[self.name], dtype=np.float64) > self.threshold_

    def state(self) -> dict[str, Any]:
        return {"false_flag_rate": self.false_flag_rate, "threshold": self.threshold_}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> StatisticFlagRule:
        out = cls(float(state["false_flag_rate"]))
        out.threshold_ = float(state["threshold"])
        return out


class StabilityFlagRule(StatisticFlagRule):
    """The stability flag (``trustad.flags.StabilityFlag``): how much the patch-distance
    map moves under JPEG re-encoding, a slight blur and a 2-pixel shift (3 extra backbone
    passes per image). Catches probe and score attacks far better than the entropy, and
    holds best of the flags measured against an attacker who smooths his perturbation to
    evade the noise-level flag; not robust to an attacker who minimises it too
    (benchmarks/results/flags.md)."""

    name = "stability"


class NoiseLevelFlagRule(StatisticFlagRule):
    """The noise-level flag (``trustad.flags.NoiseLevelFlag``): dense pixel-level noise,
    no backbone pass. Catches every non-adaptive L-inf attack measured at 2/255 and
    above; an attacker who keeps the perturbation smooth evades it
    (benchmarks/results/flags.md)."""

    name = "noise_level"


# The library flags behind the statistic rules.
STATISTICS = {"stability": StabilityFlag, "noise_level": NoiseLevelFlag}


def image_statistics(
    detector: Any, names: Sequence[str], distances: Sequence[Tensor], images: Sequence[Tensor]
) -> dict[str, np.ndarray]:
    """The statistics among ``names`` that need the images (``STATISTICS``), per image (one
    at a time: images may differ in size)."""
    out = {}
    for name in names:
        if name not in STATISTICS:
            continue
        values = []
        for d, x in zip(distances, images):
            inputs = FlagInputs(d[None], None, x[None])
            values.append(STATISTICS[name]().prepare(detector, inputs).statistic(inputs)[0])
        out[name] = np.asarray(values, dtype=np.float64)
    return out


FLAGS: dict[str, type] = {
    rule.name: rule for rule in (StabilityFlagRule, NoiseLevelFlagRule, EntropyFlagRule)
}


def make_flag(name: str, **options: Any) -> Flag:
    """A fresh flag by name; ``options`` go to its constructor."""
    if name not in FLAGS:
        raise ValueError(f"unknown flag {name!r}; choose one of {', '.join(FLAGS)}")
    return FLAGS[name](**options)


def flag_from_state(name: str, state: Mapping[str, Any]) -> Flag:
    """A fitted flag rebuilt from the state a model file recorded."""
    if name not in FLAGS:
        raise ValueError(
            f"the model uses flag {name!r}, which this trustad does not know "
            f"(known: {', '.join(FLAGS)}); upgrade trustad"
        )
    return FLAGS[name].from_state(state)
