"""Attack flags of a unit: each flag thresholded on the clean calibration images of its
(category, shots, seed), then measured on this condition's evaluation images against the
clean ones (``trustad.flags``); and the gate flag's decision on every test image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from ..detector import AnomalyDINO
from ..flags.base import FlagInputs
from ..flags.columns import calibrated_flags, columns_from_values
from .rows import Split

UnitKey = tuple[int, int]  # (shots, seed)
Batch = tuple[list[Tensor], list[Tensor], list[Tensor]]  # distances, features, images


class UnitFlags:
    """The calibrated flags of one category, per (shots, seed): the measured ``names`` and
    the ``gate`` flag (None: no gate)."""

    def __init__(self, names: Sequence[str], false_flag_rate: float, gate: str | None) -> None:
        self.names = list(names)
        self.rate = false_flag_rate
        self.gate_name = gate
        self._flags: dict[UnitKey, tuple[dict, dict]] = {}  # flags, clean statistics

    def _calibrated(
        self, key: UnitKey, detector: AnomalyDINO, split: Split, clean: FlagInputs
    ) -> tuple[dict, dict]:
        """Flags and their clean evaluation statistics, once per detector: shared by every
        condition."""
        if key not in self._flags:
            gate = [self.gate_name] if self.gate_name else []
            names = list(dict.fromkeys([*self.names, *gate]))
            calibration = clean.subset(split.calibration)
            flags = calibrated_flags(detector, calibration, names, self.rate)
            clean_eval = clean.subset(split.evaluation)
            self._flags[key] = (flags, {n: flags[n].statistic(clean_eval) for n in self.names})
        return self._flags[key]

    def gate(
        self,
        key: UnitKey,
        detector: AnomalyDINO,
        split: Split,
        clean: Batch,
        current: Batch,
        notes: list[str],
    ) -> np.ndarray | None:
        """Where the gate flag fires on this condition's test images (all of them, in
        order); None without a gate or when it cannot be computed (said in ``notes``)."""
        if self.gate_name is None:
            return None
        if len(split.calibration) == 0:
            notes.append("gate: no calibration images to set its threshold")
            return None
        try:
            clean_inputs, inputs = FlagInputs(*clean), FlagInputs(*current)
        except ValueError as exc:
            notes.append(f"gate left out: {exc}")
            return None
        flag = self._calibrated(key, detector, split, clean_inputs)[0][self.gate_name]
        return flag.predict(flag.statistic(inputs))

    def columns(
        self,
        key: UnitKey,
        detector: AnomalyDINO,
        split: Split,
        clean: Batch,
        attacked: Batch,
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
        flags, clean_values = self._calibrated(key, detector, split, clean_inputs)
        measured = {n: flags[n] for n in self.names}
        return columns_from_values(measured, clean_values, attacked_inputs.subset(split.evaluation))
