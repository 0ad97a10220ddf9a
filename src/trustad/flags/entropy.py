"""The paper's flag: predictive entropy of the calibrated probability (PROTOCOL 6).

An attack that pushes scores towards the calibrator's decision boundary raises the entropy
of the probability; one that pushes them across it need not, which is why the other flags
exist. Needs the calibrated probabilities in its inputs (``FlagInputs.probabilities``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..calibration import entropy
from .base import BaseFlag, FlagInputs


class EntropyFlag(BaseFlag):
    """Binary entropy (nats) of the calibrated probability of anomaly."""

    name = "entropy"
    advice = "the probability is close to undecided: have a person look at the part"
    needs = ("probabilities",)

    def compute(self, inputs: FlagInputs) -> Tensor:
        # The calibration metrics' entropy, so that both read the same numbers; no attacker
        # differentiates it.
        return torch.from_numpy(entropy(inputs.probabilities.cpu().numpy()))
