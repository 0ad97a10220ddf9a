"""Attack flags of a unit: each flag thresholded on the clean calibration images of its
(category, shots, seed), then measured on this condition's evaluation images against the
clean ones (``trustad.flags``); the gate flag's decision on every test image; the flag an
adaptive attacker keeps down."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from ..detector import AnomalyDINO
from ..flags.base import BaseFlag, FlagInputs
from ..flags.columns import calibrated_flags, columns_from_values
from .rows import Split

UnitKey = tuple[int, int]  # (shots, seed)
Batch = tuple[list[Tensor], list[Tensor], list[Tensor]]  # distances, features, images
# Image sets whose image-only flag values are kept: the clean set and the attacked set in
# use (a probe attack's set serves every shot count of its seed).
MEMO_SETS = 2


class UnitFlags:
    """The calibrated flags of one category, per (shots, seed): the measured ``names`` and
    the ``gate`` flag (None: no gate). Each flag is calibrated once per detector and
    shared by every condition."""

    def __init__(self, names: Sequence[str], false_flag_rate: float, gate: str | None) -> None:
        self.names = list(names)
        self.rate = false_flag_rate
        self.gate_name = gate
        self._flags: dict[UnitKey, dict[str, BaseFlag]] = {}
        self._clean_values: dict[UnitKey, dict[str, np.ndarray]] = {}
        # id(images list) -> (the list, kept alive so that its id stays its own; memo)
        self._memos: dict[int, tuple[list[Tensor], dict[str, Tensor]]] = {}

    def inputs(self, batch: Batch) -> FlagInputs:
        """The flags' inputs for a batch; values of image-only flags are shared by every
        batch with the same images list (the noise level of a set is computed once)."""
        images = batch[2]
        if id(images) not in self._memos:
            if len(self._memos) >= MEMO_SETS:
                del self._memos[next(iter(self._memos))]
            self._memos[id(images)] = (images, {})
        return FlagInputs(*batch, memo=self._memos[id(images)][1])

    def flag(
        self, key: UnitKey, name: str, detector: AnomalyDINO, split: Split, clean: FlagInputs
    ) -> BaseFlag:
        """Flag ``name`` calibrated on the clean calibration images of ``key``; ``detector``
        must be fitted for ``key``."""
        flags = self._flags.setdefault(key, {})
        if name not in flags:
            if len(split.calibration) == 0:
                raise ValueError(f"flag {name!r} needs calibration images for its threshold")
            calibration = clean.subset(split.calibration)
            flags[name] = calibrated_flags(detector, calibration, [name], self.rate)[name]
        return flags[name]

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
            clean_inputs, inputs = self.inputs(clean), self.inputs(current)
        except ValueError as exc:
            notes.append(f"gate left out: {exc}")
            return None
        flag = self.flag(key, self.gate_name, detector, split, clean_inputs)
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
            clean_inputs, attacked_inputs = self.inputs(clean), self.inputs(attacked)
        except ValueError as exc:  # test images of several sizes cannot form one batch
            notes.append(f"flags left out: {exc}")
            return {}
        flags = {n: self.flag(key, n, detector, split, clean_inputs) for n in self.names}
        values = self._clean_values.setdefault(key, {})
        clean_eval = clean_inputs.subset(split.evaluation)
        for name, flag in flags.items():
            if name not in values:
                values[name] = flag.statistic(clean_eval)
        return columns_from_values(flags, values, attacked_inputs.subset(split.evaluation))
