"""Pluggable "do not trust this answer" flags for the fitted detector.

A flag is chosen by name (``FLAGS``), fitted on the signals of clean calibration images and
saved as JSON-able state in the model file. Signals are arrays keyed by name: ``score``
(raw anomaly score), ``probability`` (calibrated) and ``entropy`` (of that probability).
A new flag registers a class here; the model file records its name, so a better flag can
become the default without breaking older files.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from ..calibration import DEFAULT_FLAG_RATE, EntropyFlag

DEFAULT_FLAG = "entropy"
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


FLAGS: dict[str, type] = {"entropy": EntropyFlagRule}


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
