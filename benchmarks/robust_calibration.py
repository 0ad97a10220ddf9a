"""Probabilities that stay honest under attack.

Options measured by benchmarks/flags.py, all fitted without seeing the attacker:

* ``fit_mixed_calibrator``: fit a calibrator on the clean calibration scores together with
  the scores of the same images after a perturbation the defender makes itself (e.g. its
  own score-FGSM, :func:`defender_perturbation`, since it knows the calibration labels).
  The calibrator then learns that scores near the boundary are less reliable.
* ``abstaining_metrics``: abstain where a flag fires; calibration metrics on the inputs
  kept, and the abstention rate (abstentions are counted, never hidden).
(``trustad.flags.gate_probabilities``, the third option, is what trustad deploys.)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

from trustad import calibration as cal
from trustad.attacks import AttackSettings, run_attack, score_loss


def defender_perturbation(detector: Any, x: Tensor, labels: Tensor, eps: float) -> Tensor:
    """The defender's own score-FGSM on its calibration images (B, 3, H, W), whose labels it
    knows: one gradient pass per image."""
    objective = score_loss(detector, labels.to(detector.device))
    return run_attack(
        x.to(detector.device),
        AttackSettings("score-fgsm", eps),
        objective=objective,
        generator=None,
    ).cpu()


def fit_mixed_calibrator(
    name: str,
    clean_scores: ArrayLike,
    perturbed_scores: ArrayLike,
    labels: ArrayLike,
    **options: Any,
) -> tuple[cal.Calibrator, str | None]:
    """Calibrator ``name`` fitted on clean and perturbed calibration scores together (each
    image twice, with its label); as :func:`calibration.fit_calibrator_safely`."""
    clean = np.asarray(clean_scores, dtype=np.float64).ravel()
    perturbed = np.asarray(perturbed_scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if not clean.size == perturbed.size == y.size:
        raise ValueError(
            f"{clean.size} clean scores, {perturbed.size} perturbed scores and {y.size} labels: "
            "expected one of each per calibration image"
        )
    return cal.fit_calibrator_safely(
        name, np.concatenate([clean, perturbed]), np.concatenate([y, y]), **options
    )


def abstaining_metrics(probs: ArrayLike, labels: ArrayLike, abstain: ArrayLike) -> dict[str, float]:
    """ECE, NLL and Brier on the inputs not abstained on, and the abstention rate.

    Metrics are NaN when every input was abstained on.
    """
    p = np.asarray(probs, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    out_mask = np.asarray(abstain, dtype=bool).ravel()
    if not p.size == y.size == out_mask.size:
        raise ValueError(f"{p.size} probabilities, {y.size} labels, {out_mask.size} abstentions")
    keep = ~out_mask
    out = {"abstention": float(out_mask.mean()) if p.size else math.nan}
    if keep.any():
        out.update(
            ece=cal.ece(p[keep], y[keep]),
            nll=cal.nll(p[keep], y[keep]),
            brier=cal.brier(p[keep], y[keep]),
        )
    else:
        out.update(ece=math.nan, nll=math.nan, brier=math.nan)
    return out


def as_label_tensor(labels: ArrayLike) -> Tensor:
    """0/1 labels as a float tensor, for :func:`defender_perturbation`."""
    return torch.as_tensor(np.asarray(labels), dtype=torch.float32)
