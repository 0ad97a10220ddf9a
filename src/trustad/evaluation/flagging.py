"""Attack-flag columns of a unit: each flag thresholded on the clean calibration images of
its (category, shots, seed), then measured on this condition's evaluation images against
the clean ones (``trustad.flags``)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ..detector import AnomalyDINO
from ..flags.base import FlagInputs
from ..flags.columns import calibrated_flags, columns_from_values
from .rows import Split

UnitKey = tuple[int, int]  # (shots, seed)


class UnitFlags:
    """The calibrated flags of one category, per (shots, seed)."""

    def __init__(self, names: Sequence[str], false_flag_rate: float) -> None:
        self.names = list(names)
        self.rate = false_flag_rate
        self._flags: dict[UnitKey, tuple[dict, dict]] = {}  # flags, clean statistics

    def columns(
        self,
        key: UnitKey,
        detector: AnomalyDINO,
        split: Split,
        clean: tuple[list[Tensor], list[Tensor], list[Tensor]],
        attacked: tuple[list[Tensor], list[Tensor], list[Tensor]],
        notes: list[str],
    ) -> dict[str, float]:
        """``clean`` and ``attacked`` are (distances, features, images) of every test
        image; ``detector`` must be fitted for ``key``."""
        if not self.names:
            return {}
        if len(split.calibration) == 0:
            notes.append("flags: no calibration images to set their thresholds")
            return {}
        try:
            clean_inputs, attacked_inputs = FlagInputs(*clean), FlagInputs(*attacked)
        except ValueError as exc:  # test images of several sizes cannot form one batch
            notes.append(f"flags left out: {exc}")
            return {}
        idx = split.evaluation
        if key not in self._flags:  # once per detector: shared by every attack
            calibration = clean_inputs.subset(split.calibration)
            flags = calibrated_flags(detector, calibration, self.names, self.rate)
            clean_eval = clean_inputs.subset(idx)
            self._flags[key] = (flags, {n: f.statistic(clean_eval) for n, f in flags.items()})
        flags, clean_values = self._flags[key]
        return columns_from_values(flags, clean_values, attacked_inputs.subset(idx))
