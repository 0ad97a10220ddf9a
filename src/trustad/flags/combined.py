"""A combination of flags fitted on clean data only: the largest standardised statistic.

Each member's statistic is standardised by its mean and spread on the clean calibration
images, and the combination flags an input when any member is far out. The defender does
not know the attack, so no weight is learnt from attacked examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .base import BaseFlag, FlagInputs


class CombinedFlag(BaseFlag):
    """max over members of (statistic - clean mean) / clean spread."""

    name = "combined"
    advice = "unlike the good images on at least one statistic: check the camera and the set-up, then re-take"

    def __init__(self, members: Sequence[BaseFlag]) -> None:
        if not members:
            raise ValueError("a combined flag needs at least one member")
        self.members = list(members)
        self.cost = sum(m.cost for m in self.members)
        self.needs = tuple(dict.fromkeys(k for m in self.members for k in m.needs))

    def prepare(self, detector: Any, clean: FlagInputs) -> CombinedFlag:
        self.check_inputs(clean)
        for m in self.members:
            m.calibrate(detector, clean)  # each member's clean mean and spread
        self.detector_ = detector
        self.prepared_ = True
        return self

    def _standardised(self, inputs: FlagInputs, surrogate: bool) -> Tensor:
        z = []
        for m in self.members:
            s = m.surrogate(inputs) if surrogate else m.values(inputs)
            z.append((s.double() - m.clean_mean_) / m.clean_scale_)
        return torch.stack(z).amax(dim=0)

    def compute(self, inputs: FlagInputs) -> Tensor:
        return self._standardised(inputs, surrogate=False)

    def surrogate(self, inputs: FlagInputs) -> Tensor:
        return self._standardised(inputs, surrogate=True)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "members": [m.state() for m in self.members]}

    def restore(self, detector: Any, state: dict[str, Any]) -> CombinedFlag:
        members = state.get("members", [])
        if [m.get("name") for m in members] != [m.name for m in self.members]:
            raise ValueError(
                f"combined flag members {[m.get('name') for m in members]} differ from "
                f"{[m.name for m in self.members]}"
            )
        for member, member_state in zip(self.members, members):
            member.restore(detector, member_state)
        super().restore(detector, {k: v for k, v in state.items() if k != "members"})
        return self
