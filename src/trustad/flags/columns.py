"""Per-flag result columns for one evaluation unit (a detector and an attack condition)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import BaseFlag, FlagInputs
from .registry import FLAGS, make_flag
from .threshold import DEFAULT_FALSE_FLAG_RATE, flagging_auroc


def calibrated_flags(
    detector: Any,
    clean_calibration: FlagInputs,
    names: Sequence[str] = tuple(FLAGS),
    false_flag_rate: float = DEFAULT_FALSE_FLAG_RATE,
) -> dict[str, BaseFlag]:
    """Each named flag prepared and thresholded on the clean calibration images of the
    fitted ``detector`` (one category, shots and seed)."""
    return {n: make_flag(n).calibrate(detector, clean_calibration, false_flag_rate) for n in names}


def flag_columns(
    flags: dict[str, BaseFlag], clean: FlagInputs, attacked: FlagInputs
) -> dict[str, float]:
    """``flag_auroc_<name>`` (attacked vs clean evaluation images), ``flag_tpr_<name>``
    (share of attacked images above the clean-calibration threshold) and ``flag_ffr_<name>``
    (share of clean evaluation images above it: the realised false-flag rate)."""
    clean_values = {name: flag.statistic(clean) for name, flag in flags.items()}
    attacked_values = {name: flag.statistic(attacked) for name, flag in flags.items()}
    return columns_from_values(flags, clean_values, attacked_values)


def columns_from_values(
    flags: dict[str, BaseFlag], clean_values: dict[str, Any], attacked: dict[str, Any]
) -> dict[str, float]:
    """``flag_columns`` from the statistics of the clean and the attacked images."""
    out: dict[str, float] = {}
    for name, flag in flags.items():
        attacked_values = attacked[name]
        out[f"flag_auroc_{name}"] = flagging_auroc(clean_values[name], attacked_values)
        out[f"flag_tpr_{name}"] = float(flag.predict(attacked_values).mean())
        out[f"flag_ffr_{name}"] = float(flag.predict(clean_values[name]).mean())
    return out
